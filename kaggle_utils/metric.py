"""The competition metric: weighted mean of column-wise ROC AUC (13 for Aneurysm Present, 1 per location).

Rows of solution and submission are matched by SeriesInstanceUID, never by position. AUC is computed from average
ranks (the Mann-Whitney statistic), which treats tied scores exactly as the ROC trapezoid does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from scipy.stats import rankdata

from kaggle_utils.errors import KitError
from kaggle_utils.schema import ID_COL, LABEL_COLS, LABEL_WEIGHTS, LOCATION_COLS, PRESENT_COL


class MetricError(KitError, ValueError):
    """Inputs the official scorer would reject (missing/extra columns, single-class column, unmatched ids)."""


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Binary ROC AUC; raises MetricError when y_true holds a single class."""
    y_true = np.asarray(y_true).astype(np.float64).ravel()
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    if y_true.shape != y_score.shape:
        raise MetricError(f"labels and scores differ in length: {y_true.shape[0]} vs {y_score.shape[0]}")
    if not np.isin(y_true, (0.0, 1.0)).all():
        raise MetricError("labels must be 0 or 1")
    if not np.isfinite(y_score).all():
        raise MetricError("scores contain NaN or infinity")
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricError("only one class present in the labels; ROC AUC is undefined")
    ranks = rankdata(y_score)  # average ranks for ties
    return float((ranks[y_true == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _to_polars(frame: Any, what: str) -> pl.DataFrame:
    if isinstance(frame, pl.DataFrame):
        return frame
    try:
        return pl.from_pandas(frame)
    except Exception as exc:  # noqa: BLE001 - anything that is not a frame gets one clear message
        raise MetricError(f"{what} must be a polars or pandas DataFrame, got {type(frame).__name__}") from exc


def _check_columns(frame: pl.DataFrame, what: str) -> None:
    expected = {ID_COL, *LABEL_COLS}
    missing = [c for c in (ID_COL, *LABEL_COLS) if c not in frame.columns]
    extra = [c for c in frame.columns if c not in expected]
    if missing or extra:
        raise MetricError(f"{what}: missing columns {missing}, unexpected columns {extra}")
    if frame[ID_COL].is_duplicated().any():
        dup = frame.filter(frame[ID_COL].is_duplicated())[ID_COL].to_list()[:3]
        raise MetricError(f"{what}: duplicated {ID_COL} values, e.g. {dup}")


def _aligned(solution: Any, submission: Any) -> tuple[np.ndarray, np.ndarray]:
    sol = _to_polars(solution, "solution")
    sub = _to_polars(submission, "submission")
    _check_columns(sol, "solution")
    _check_columns(sub, "submission")
    sol_ids = set(sol[ID_COL].to_list())
    sub_ids = set(sub[ID_COL].to_list())
    if sol_ids != sub_ids:
        missing = sorted(sol_ids - sub_ids)[:3]
        extra = sorted(sub_ids - sol_ids)[:3]
        raise MetricError(f"ids differ: {len(sol_ids - sub_ids)} missing from submission (e.g. {missing}), "
                          f"{len(sub_ids - sol_ids)} not in solution (e.g. {extra})")
    joined = sol.join(sub, on=ID_COL, how="inner", suffix="__pred")
    y_true = joined.select(list(LABEL_COLS)).to_numpy().astype(np.float64)
    y_pred = joined.select([f"{c}__pred" for c in LABEL_COLS]).to_numpy().astype(np.float64)
    return y_true, y_pred


def column_aucs(solution: Any, submission: Any) -> pl.DataFrame:
    """Per-column AUC table: column, weight, auc, n_pos, n."""
    y_true, y_pred = _aligned(solution, submission)
    rows = []
    for j, col in enumerate(LABEL_COLS):
        try:
            auc = roc_auc(y_true[:, j], y_pred[:, j])
        except MetricError as exc:
            raise MetricError(f"column {col!r}: {exc}") from None
        rows.append({"column": col, "weight": LABEL_WEIGHTS[j], "auc": auc, "n_pos": int(y_true[:, j].sum()),
                     "n": int(y_true.shape[0])})
    return pl.DataFrame(rows)


def score_from_table(table: pl.DataFrame) -> float:
    weights = table["weight"].to_numpy()
    return float((table["auc"].to_numpy() * weights).sum() / weights.sum())


def competition_score(solution: Any, submission: Any) -> float:
    """Official score: sum(w_j * AUC_j) / sum(w_j), i.e. 0.5 * AUC(Aneurysm Present) + 0.5 * mean(location AUCs)."""
    return score_from_table(column_aucs(solution, submission))


def score_halves(solution: Any, submission: Any) -> dict[str, float]:
    """The score and its two halves: AUC of Aneurysm Present and the mean location AUC."""
    table = column_aucs(solution, submission)
    aucs = dict(zip(table["column"].to_list(), table["auc"].to_list()))
    return {
        "score": score_from_table(table),
        "present_auc": aucs[PRESENT_COL],
        "location_auc_mean": float(np.mean([aucs[c] for c in LOCATION_COLS])),
    }


def score_over_scorable_columns(y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, Any]:
    """The competition score over the columns that hold both classes; columns with a single class are left out.

    Small validation folds and smoke-test sets often lack positives at some locations, where the official scorer
    refuses. Arrays are (n, 14) in ``LABEL_COLS`` order, rows already matched. With every column defined ``score``
    equals ``competition_score``. Returns ``score`` (None when no column is defined), ``n_columns`` (defined ones),
    ``aucs`` (column -> AUC, None where undefined), ``present_auc`` and ``location_auc_mean`` (None when undefined).
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape[1] != len(LABEL_COLS) or y_prob.shape != y_true.shape:
        raise MetricError(f"expected two (n, {len(LABEL_COLS)}) arrays, got {y_true.shape} and {y_prob.shape}")
    aucs: dict[str, float | None] = {}
    for j, col in enumerate(LABEL_COLS):
        n_pos = y_true[:, j].sum()
        aucs[col] = roc_auc(y_true[:, j], y_prob[:, j]) if 0 < n_pos < y_true.shape[0] else None
    weights = dict(zip(LABEL_COLS, LABEL_WEIGHTS))
    used = [c for c in LABEL_COLS if aucs[c] is not None]
    score = sum(weights[c] * aucs[c] for c in used) / sum(weights[c] for c in used) if used else None
    locations = [aucs[c] for c in LOCATION_COLS if aucs[c] is not None]
    return {
        "score": None if score is None else float(score),
        "n_columns": len(used),
        "aucs": aucs,
        "present_auc": aucs[PRESENT_COL],
        "location_auc_mean": float(np.mean(locations)) if locations else None,
    }
