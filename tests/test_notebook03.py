"""Notebook 03 executed headless, as on Kaggle but with the local gateway: the attached datasets are mirrored in a
temporary input folder (code at <input>/<slug>, a run at <input>/datasets/<owner>/<slug>), the test set is synthetic
and holds one corrupted series."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from notebook_runner import execute_notebook
from test_infer_real import make_real_run

from kaggle_utils.paths import REPO_ROOT
from kaggle_utils.schema import ID_COL, LABEL_COLS


def make_test_set(root: Path, n: int = 3) -> tuple[Path, list[str], str]:
    """A competition folder with kaggle_evaluation/test.csv and series/ (the last series truncated)."""
    from kaggle_utils.synth.series import make_series

    series_dir = root / "kaggle_evaluation" / "series"
    series_dir.mkdir(parents=True)
    uids = [make_series(series_dir, modality=m, image_size=48, n_slices=16, seed=10 + i)["series_uid"]
            for i, m in enumerate(["CTA", "MRA", "CTA"][:n])]
    broken = uids[-1]
    for f in (series_dir / broken).glob("*.dcm"):
        f.write_bytes(f.read_bytes()[:200])
    pl.DataFrame({ID_COL: uids}).write_csv(root / "kaggle_evaluation" / "test.csv")
    return root, uids, broken


def test_notebook03_runs_headless_with_local_gateway(tmp_path, monkeypatch):
    inputs = tmp_path / "input"
    inputs.mkdir()
    (inputs / "rsna-iad-kit-code").symlink_to(REPO_ROOT, target_is_directory=True)
    make_real_run(inputs / "datasets" / "bob" / "rsna-iad-run-baseline")  # found by config.yaml + fold*/, any layout
    competition, uids, broken = make_test_set(tmp_path / "competition")
    work = tmp_path / "work"
    work.mkdir()
    for name in ("KAGGLE_UTILS_RUNS", "KAGGLE_EVALUATION_DIR", "KAGGLE_UTILS_SHARE_DIR", "KAGGLE_KERNEL_RUN_TYPE",
                 "KAGGLE_URL_BASE", "KAGGLE_IS_COMPETITION_RERUN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(inputs))
    monkeypatch.setenv("KAGGLE_UTILS_DATA_DIR", str(competition))
    monkeypatch.setenv("KAGGLE_UTILS_WORK_DIR", str(work))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))

    _, text = execute_notebook("03_inference.ipynb", work, timeout=180)

    sub = pl.read_parquet(work / "submission.parquet")
    assert sub.columns == [ID_COL, *LABEL_COLS]
    assert sorted(sub[ID_COL].to_list()) == sorted(uids)
    values = sub.select(LABEL_COLS).to_numpy()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    assert "inference summary: 3 series, 1 fallback(s)" in text
    assert broken in text  # the corrupted series is named with its reason
    assert list((work / "shared").iterdir()) == []  # predict emptied the share directory
    assert "rsna-iad-run-baseline" in text  # the run was found under the nested layout


@pytest.fixture(autouse=True)
def _reset_predictor():
    from kaggle_utils import infer

    infer.reset()
    yield
    infer.reset()
