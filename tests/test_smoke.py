"""``python submit.py smoke``: the no-argument path (synthetic competition -> preprocess -> tiny training -> gateway),
the ``--data-dir/--models`` path with a corrupted test series, and the submission validator."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from test_infer_real import PRIORS, make_real_run
from test_notebook03 import make_test_set

from kaggle_utils import infer, smoke
from kaggle_utils.schema import ID_COL, LABEL_COLS, TRAIN_CSV_COLS


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("KAGGLE_UTILS_RUNS", "KAGGLE_EVALUATION_DIR", "KAGGLE_UTILS_SHARE_DIR", "KAGGLE_KERNEL_RUN_TYPE",
                 "KAGGLE_URL_BASE", "KAGGLE_IS_COMPETITION_RERUN"):
        monkeypatch.delenv(name, raising=False)
    infer.reset()
    yield
    infer.reset()


def test_smoke_without_arguments_trains_and_serves(tmp_path, capsys):
    """The README's main job, shrunk: a synthetic competition, the tiny training config, the local gateway."""
    work = tmp_path / "smoke"
    code = smoke.main(["--work-dir", str(work), "--n-series", "10", "--n-test", "4"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "submission.parquet: VALID" in out
    assert "latency median" in out and "p95" in out
    assert "projected runtime for 2500 series" in out and "12 h budget" in out
    assert "peak memory: peak_rss_mb" in out
    assert "fallbacks: 0" in out
    assert "worst series after the first:" in out and "vs the 30-minute limit per series" in out
    assert "competition score: 0." in out or "competition score: 1." in out
    sub = pl.read_parquet(work / "submission.parquet")
    labels = pl.read_csv(work / "competition" / "test_labels.csv")
    assert sub.columns == [ID_COL, *LABEL_COLS] and sorted(sub[ID_COL]) == sorted(labels[ID_COL])
    assert (work / "run" / "config.yaml").is_file()


def write_labels(competition, uids):
    """Held-out labels in train.csv's columns; alternating so every column holds both classes."""
    data = {ID_COL: uids, "PatientAge": [50] * len(uids), "PatientSex": ["Female"] * len(uids),
            "Modality": ["CTA"] * len(uids)}
    for i, col in enumerate(LABEL_COLS):
        data[col] = [(k + i) % 2 for k in range(len(uids))]
    pl.DataFrame(data).select(TRAIN_CSV_COLS).write_csv(competition / "test_labels.csv")


def test_smoke_with_models_reports_fallback_and_score(tmp_path, capsys):
    run = make_real_run(tmp_path / "run")
    competition, uids, broken = make_test_set(tmp_path / "competition")
    write_labels(competition, uids)
    code = smoke.main(["--data-dir", str(competition), "--models", str(run), "--work-dir", str(tmp_path / "w")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "fallbacks: 1" in out and broken in out
    assert "competition score:" in out and "(all 14 columns)" in out
    sub = pl.read_parquet(tmp_path / "w" / "submission.parquet")
    row = sub.filter(pl.col(ID_COL) == broken).select(LABEL_COLS).row(0)
    np.testing.assert_allclose(row, [PRIORS[c] for c in LABEL_COLS])


def test_smoke_limit_serves_fewer_series(tmp_path, capsys):
    run = make_real_run(tmp_path / "run", folds=1)
    competition, uids, _ = make_test_set(tmp_path / "competition")
    code = smoke.main(["--data-dir", str(competition), "--models", str(run), "--work-dir", str(tmp_path / "w"),
                       "--limit", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert pl.read_parquet(tmp_path / "w" / "submission.parquet").height == 2
    assert "no test_labels.csv" in out


def good_submission(ids):
    return pl.DataFrame({ID_COL: ids, **{c: [0.5] * len(ids) for c in LABEL_COLS}})


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda s: s.with_columns(pl.lit(float("nan")).alias(LABEL_COLS[3])), "NaN"),
        (lambda s: s.with_columns(pl.lit(1.5).alias(LABEL_COLS[0])), "outside [0, 1]"),
        (lambda s: s.drop(LABEL_COLS[-1]), "columns are"),
        (lambda s: s.head(1), "expected series"),
        (lambda s: s.select(LABEL_COLS[::-1]).insert_column(0, s[ID_COL]), "columns are"),
    ],
    ids=["nan", "range", "missing_column", "missing_row", "column_order"],
)
def test_validate_submission_finds_problems(tmp_path, mutate, problem):
    ids = ["a", "b"]
    path = tmp_path / "submission.parquet"
    good_submission(ids).write_parquet(path)
    assert smoke.validate_submission(path, ids) == []
    mutate(good_submission(ids)).write_parquet(path)
    problems = smoke.validate_submission(path, ids)
    assert problems and problem in problems[0]
