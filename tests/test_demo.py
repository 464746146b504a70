"""The README's main job, ``python -m kaggle_utils demo``, end to end on a very small synthetic competition."""

import subprocess
import sys

import polars as pl

from kaggle_utils.paths import REPO_ROOT
from kaggle_utils.schema import ID_COL, LABEL_COLS


def _demo(out):
    return subprocess.run(
        [sys.executable, "-m", "kaggle_utils", "demo", "--out", str(out), "--n-series", "14", "--n-test", "6",
         "--workers", "1", "train.epochs=1", "train.epoch_repeats=1"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
    )


def test_demo_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "demo"
    first = _demo(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for step in ("synth", "preprocess", "train", "evaluate"):
        assert f"[demo] {step}:" in first.stdout
    assert "submission.parquet: VALID" in first.stdout
    submission = pl.read_parquet(out / "serve" / "submission.parquet")
    assert submission.columns == [ID_COL, *LABEL_COLS]
    assert submission.height == 6
    assert (out / "report" / "report.html").is_file()
    assert (out / "run" / "oof.parquet").is_file()

    again = _demo(out)  # a rerun reuses the synthetic data and the finished cache
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[demo] synth: reusing" in again.stdout
    assert "14 already done, 0 processed" in again.stdout


def test_demo_rejects_missing_parent(tmp_path):
    res = subprocess.run([sys.executable, "-m", "kaggle_utils", "demo", "--out", str(tmp_path / "no" / "demo")],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert res.returncode == 2 and "parent folder" in res.stderr
