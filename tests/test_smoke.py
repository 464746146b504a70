"""``python submit.py smoke``: the no-argument path (synthetic competition -> preprocess -> tiny training -> gateway),
the ``--data-dir/--models`` path with a corrupted test series, and the submission validator."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score
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
    sub = pl.read_parquet(work / "submission.parquet")
    labels = pl.read_csv(work / "competition" / "test_labels.csv")
    assert sub.columns == [ID_COL, *LABEL_COLS] and sorted(sub[ID_COL]) == sorted(labels[ID_COL])
    value, how = printed_score(out)
    expected, n_columns = independent_score(work / "submission.parquet", work / "competition" / "test_labels.csv")
    assert value == pytest.approx(expected, abs=5e-5)  # printed to 4 decimals
    assert how.startswith("all 14 columns" if n_columns == 14 else f"{n_columns}/14 columns with both classes")
    assert (work / "run" / "config.yaml").is_file()


# The metric as COMPETITION.md states it, written out here independently of kaggle_utils.metric: the weighted mean
# of column-wise ROC AUC, weight 13 for Aneurysm Present and 1 for each of the 13 locations, rows matched by id.
WEIGHTS = {c: 13.0 if c == "Aneurysm Present" else 1.0 for c in LABEL_COLS}


def independent_score(submission, labels_csv) -> tuple[float, int]:
    """The score over the columns with both classes (sklearn AUC) and how many columns that is."""
    predicted = {row[ID_COL]: row for row in pl.read_parquet(submission).iter_rows(named=True)}
    truth = [row for row in pl.read_csv(labels_csv).iter_rows(named=True) if row[ID_COL] in predicted]
    aucs = {}
    for col in LABEL_COLS:
        y = [row[col] for row in truth]
        if len(set(y)) == 2:
            aucs[col] = roc_auc_score(y, [predicted[row[ID_COL]][col] for row in truth])
    assert aucs, "no column with both classes: the score is undefined"
    return sum(WEIGHTS[c] * a for c, a in aucs.items()) / sum(WEIGHTS[c] for c in aucs), len(aucs)


def printed_score(out: str) -> tuple[float, str]:
    found = re.search(r"competition score: ([0-9.]+) \((.*)\)", out)
    assert found, out
    return float(found.group(1)), found.group(2)


def write_labels(competition, uids):
    """Held-out labels in train.csv's columns, rows in reverse order of test.csv (rows must be matched by id);
    alternating so every column holds both classes."""
    uids = uids[::-1]
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
    value, how = printed_score(out)
    assert how == "all 14 columns"
    expected, n_columns = independent_score(tmp_path / "w" / "submission.parquet", competition / "test_labels.csv")
    assert n_columns == 14 and value == pytest.approx(expected, abs=5e-5)
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
