"""The competition metric against an independent implementation (scikit-learn), with ties and edge cases."""

import numpy as np
import pandas as pd
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from kaggle_utils.metric import MetricError, column_aucs, competition_score, roc_auc, score_halves
from kaggle_utils.schema import ID_COL, LABEL_COLS, LOCATION_COLS, PRESENT_COL


def _frames(rng, n=200, tie_levels=None):
    ids = [f"1.2.826.{i}" for i in range(n)]
    y = (rng.random((n, len(LABEL_COLS))) < 0.3).astype(int)
    y[:, -1] = np.maximum(y[:, -1], y[:, :-1].max(axis=1))  # present = any location, as in the competition
    y[0, :] = 1
    y[1, :] = 0
    p = rng.random((n, len(LABEL_COLS)))
    if tie_levels:
        p = np.round(p * tie_levels) / tie_levels  # many exact ties
    sol = pl.DataFrame({ID_COL: ids, **{c: y[:, j] for j, c in enumerate(LABEL_COLS)}})
    sub = pl.DataFrame({ID_COL: ids, **{c: p[:, j] for j, c in enumerate(LABEL_COLS)}})
    return sol, sub, y, p


def _reference_score(y, p):
    weights = np.array([1.0] * len(LOCATION_COLS) + [13.0])
    aucs = np.array([roc_auc_score(y[:, j], p[:, j]) for j in range(len(LABEL_COLS))])
    return float((aucs * weights).sum() / weights.sum())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tie_levels", [None, 4, 1])
def test_score_matches_sklearn(seed, tie_levels):
    sol, sub, y, p = _frames(np.random.default_rng(seed), tie_levels=tie_levels)
    assert competition_score(sol, sub) == pytest.approx(_reference_score(y, p), abs=1e-9)


def test_rows_are_matched_by_id_not_position():
    sol, sub, y, p = _frames(np.random.default_rng(7))
    shuffled = sub.sample(fraction=1.0, shuffle=True, seed=3)
    assert shuffled[ID_COL].to_list() != sub[ID_COL].to_list()
    assert competition_score(sol, shuffled) == pytest.approx(_reference_score(y, p), abs=1e-12)


def test_accepts_pandas_and_halves():
    sol, sub, y, p = _frames(np.random.default_rng(1))
    halves = score_halves(sol.to_pandas(), sub.to_pandas())
    present = roc_auc_score(y[:, -1], p[:, -1])
    locs = np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(len(LOCATION_COLS))])
    assert halves["present_auc"] == pytest.approx(present, abs=1e-12)
    assert halves["location_auc_mean"] == pytest.approx(locs, abs=1e-12)
    assert halves["score"] == pytest.approx(0.5 * present + 0.5 * locs, abs=1e-12)


def test_perfect_and_inverted_predictions():
    sol, _, y, _ = _frames(np.random.default_rng(2))
    perfect = sol.with_columns([pl.col(c).cast(pl.Float64) for c in LABEL_COLS])
    assert competition_score(sol, perfect) == pytest.approx(1.0)
    inverted = sol.with_columns([(1 - pl.col(c)).cast(pl.Float64).alias(c) for c in LABEL_COLS])
    assert competition_score(sol, inverted) == pytest.approx(0.0)


def test_single_class_column_is_a_clear_error():
    sol, sub, _, _ = _frames(np.random.default_rng(3))
    sol = sol.with_columns(pl.lit(0).alias(LOCATION_COLS[5]))
    with pytest.raises(MetricError, match=LOCATION_COLS[5]):
        competition_score(sol, sub)


def test_missing_extra_columns_and_ids():
    sol, sub, _, _ = _frames(np.random.default_rng(4))
    with pytest.raises(MetricError, match="missing columns"):
        competition_score(sol, sub.drop(PRESENT_COL))
    with pytest.raises(MetricError, match="unexpected columns"):
        competition_score(sol, sub.with_columns(pl.lit(1).alias("extra")))
    with pytest.raises(MetricError, match="ids differ"):
        competition_score(sol, sub.head(50))
    with pytest.raises(MetricError, match="duplicated"):
        competition_score(sol, pl.concat([sub, sub.head(1)]))
    with pytest.raises(MetricError, match="NaN"):
        competition_score(sol, sub.with_columns(pl.lit(float("nan")).alias(PRESENT_COL)))
    with pytest.raises(MetricError, match="DataFrame"):
        competition_score(sol, {"a": 1})


def test_roc_auc_small_hand_computed():
    # pairs (pos, neg): scores pos [0.8, 0.4], neg [0.4, 0.1] -> wins: (0.8>0.4),(0.8>0.1),(0.4=0.4 -> 0.5),(0.4>0.1)
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.4, 0.1])) == pytest.approx(3.5 / 4)


def test_column_table_has_weights_and_counts():
    sol, sub, y, _ = _frames(np.random.default_rng(5))
    table = column_aucs(sol, pd.DataFrame(sub.to_pandas()))
    assert table["column"].to_list() == list(LABEL_COLS)
    assert table["weight"].to_list() == [1.0] * 13 + [13.0]
    assert table["n_pos"].to_list() == y.sum(axis=0).tolist()


def test_score_over_scorable_columns_hand_computed():
    """Four series. Column 0 (a location, weight 1): labels 1,0,0,0 with the positive ranked second of four -> the
    positive beats 2 of 3 negatives, AUC 2/3. Present (weight 13): labels 1,1,0,0, ranked perfectly -> AUC 1.
    Every other column is all-negative and left out. Score = (1 * 2/3 + 13 * 1) / 14 = 41/42."""
    from kaggle_utils.metric import score_over_scorable_columns

    y = np.zeros((4, len(LABEL_COLS)))
    p = np.full((4, len(LABEL_COLS)), 0.5)
    y[0, 0] = 1
    p[:, 0] = [0.6, 0.7, 0.5, 0.1]
    present = LABEL_COLS.index(PRESENT_COL)
    y[[0, 1], present] = 1
    p[:, present] = [0.9, 0.8, 0.2, 0.1]
    out = score_over_scorable_columns(y, p)
    assert out["n_columns"] == 2
    assert out["aucs"][LABEL_COLS[0]] == pytest.approx(2 / 3)
    assert out["aucs"][PRESENT_COL] == pytest.approx(1.0)
    assert all(out["aucs"][c] is None for c in LABEL_COLS[1:present])
    assert out["score"] == pytest.approx(41 / 42)
    assert out["location_auc_mean"] == pytest.approx(2 / 3)
    assert out["present_auc"] == pytest.approx(1.0)
    assert score_over_scorable_columns(np.zeros((3, 14)), np.zeros((3, 14)))["score"] is None
    with pytest.raises(MetricError, match="expected two"):
        score_over_scorable_columns(y[:, :13], p[:, :13])


@pytest.mark.parametrize("seed", [0, 1])
def test_score_over_scorable_columns_equals_official_when_all_defined(seed):
    from kaggle_utils.metric import score_over_scorable_columns
    from kaggle_utils.train.loop import partial_score

    rng = np.random.default_rng(seed)
    y = (rng.random((60, 14)) < 0.3).astype(float)
    p = np.clip(y * 0.3 + rng.random((60, 14)), 0, 1)
    ids = [f"s{i}" for i in range(60)]
    sol = pl.DataFrame({ID_COL: ids, **{c: y[:, j] for j, c in enumerate(LABEL_COLS)}})
    sub = pl.DataFrame({ID_COL: ids, **{c: p[:, j] for j, c in enumerate(LABEL_COLS)}})
    official = competition_score(sol, sub)
    assert score_over_scorable_columns(y, p)["score"] == pytest.approx(official, abs=1e-12)
    assert score_over_scorable_columns(y, p)["n_columns"] == 14
    assert partial_score(y, p)["score"] == pytest.approx(official, abs=1e-12)
