"""The OOF report's numbers against independent computations on a constructed OOF table and labels."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from kaggle_utils.cli import main
from kaggle_utils.report.evaluate import evaluate_runs
from kaggle_utils.report.figures import new_figure, save_png
from kaggle_utils.schema import ID_COL, LABEL_COLS, LOCATION_COLS, PRESENT_COL

N_SERIES, N_FOLDS = 150, 5
WEIGHTS = np.array([1.0] * 13 + [13.0])


def constructed_labels(rng: np.random.Generator) -> pl.DataFrame:
    """Every location positive in every fold (rows 5j..5j+4 for location j, fold = row % 5), plus random extra
    positives; the last 20 rows are 'MRI T1post' with no positive of some locations (an n/a breakdown)."""
    loc = np.zeros((N_SERIES, 13), dtype=np.int64)
    for j in range(13):
        loc[5 * j: 5 * j + 5, j] = 1
    extra = rng.random((N_SERIES, 13)) < 0.03
    loc |= extra.astype(np.int64)
    loc[130:, 2:] = 0  # T1post: only the first two locations can be positive
    present = (loc.sum(axis=1) > 0).astype(np.int64)
    present[130:132] = 1  # positives without a located aneurysm are allowed in the labels
    modality = ["CTA", "MRA", "MRI T2"] * 43 + ["CTA"] + ["MRI T1post"] * 20
    frame = pl.DataFrame({ID_COL: [f"1.2.826.{i}" for i in range(N_SERIES)],
                          "PatientAge": rng.integers(20, 90, N_SERIES),
                          "PatientSex": rng.choice(["Female", "Male"], N_SERIES), "Modality": modality})
    return frame.hstack(pl.DataFrame(np.c_[loc, present], schema=list(LABEL_COLS)))


def constructed_oof(labels: pl.DataFrame, rng: np.random.Generator, noise: float, shuffle: bool) -> pl.DataFrame:
    y = labels.select(LABEL_COLS).to_numpy().astype(float)
    prob = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, noise, y.shape))))
    prob = np.round(prob, 2)  # ties, so the threshold search and AUCs must handle them
    oof = pl.DataFrame({ID_COL: labels[ID_COL], "fold": np.arange(labels.height) % N_FOLDS}).hstack(
        pl.DataFrame(prob, schema=list(LABEL_COLS)))
    return oof.sample(fraction=1.0, shuffle=True, seed=1) if shuffle else oof  # row order must not matter


def sklearn_score(y: np.ndarray, p: np.ndarray) -> float:
    aucs = np.array([roc_auc_score(y[:, j], p[:, j]) for j in range(14)])
    return float((aucs * WEIGHTS).sum() / WEIGHTS.sum())


COVERAGE = {"min_fraction": 0.98, "warnings": ["Left Middle Cerebral Artery: 2 of 40 points outside the box"],
            "locations": [{"location": "Left Middle Cerebral Artery", "points": 40, "inside_fraction": 0.95,
                           "median_face_mm": 12.25, "outside_series": ["1.2.826.3"]},
                          {"location": "Basilar Tip", "points": 7, "inside_fraction": 1.0, "median_face_mm": 20.0,
                           "outside_series": []}]}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("report")
    labels = constructed_labels(rng)
    labels.write_csv(root / "train.csv")
    oofs = {}
    for name, noise, shuffle in (("run_a", 1.0, False), ("run_b", 1.6, True)):
        (root / name).mkdir()
        oofs[name] = constructed_oof(labels, rng, noise, shuffle)
        oofs[name].write_parquet(root / name / "oof.parquet")
    fig, _ = new_figure(2, 2)
    save_png(fig, root / "run_a" / "curves.png")  # training writes this; the report carries it along
    (root / "run_a" / "coverage.json").write_text(json.dumps(COVERAGE))  # training copies it from the cache
    out = root / "out"
    code = main(["evaluate", "--runs", str(root / "run_a"), str(root / "run_b"), "--labels", str(root / "train.csv"),
                 "--out", str(out)])
    assert code == 0
    numbers = json.loads((out / "report.json").read_text())
    return {"root": root, "out": out, "labels": labels, "oofs": oofs, "numbers": numbers,
            "results": {r["name"]: r for r in numbers["results"]}}


def _aligned(labels: pl.DataFrame, oof: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    joined = labels.join(oof, on=ID_COL, suffix="__p")
    y = joined.select(LABEL_COLS).to_numpy().astype(int)
    p = joined.select([f"{c}__p" for c in LABEL_COLS]).to_numpy()
    return y, p, joined["fold"].to_numpy(), joined["Modality"].to_numpy()


def test_score_and_location_aucs_match_sklearn(report):
    for name in ("run_a", "run_b"):
        y, p, _, _ = _aligned(report["labels"], report["oofs"][name])
        res = report["results"][name]
        assert res["summary"]["score"] == pytest.approx(sklearn_score(y, p), abs=1e-12)
        assert res["summary"]["present_auc"] == pytest.approx(roc_auc_score(y[:, 13], p[:, 13]), abs=1e-12)
        for j, row in enumerate(res["columns"]):
            assert row["column"] == LABEL_COLS[j]
            assert row["auc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)
            assert row["n_pos"] == int(y[:, j].sum())
        location_mean = np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(13)])
        assert res["summary"]["location_auc_mean"] == pytest.approx(location_mean, abs=1e-12)
    # the two runs differ, so a swapped or merged table would be caught
    assert report["results"]["run_a"]["summary"]["score"] != report["results"]["run_b"]["summary"]["score"]


def test_ensemble_is_the_mean_of_probabilities(report):
    a, b = report["oofs"]["run_a"], report["oofs"]["run_b"]
    mean = a.join(b, on=ID_COL, suffix="__b").select(
        ID_COL, "fold", *[((pl.col(c) + pl.col(f"{c}__b")) / 2).alias(c) for c in LABEL_COLS])
    y, p, _, _ = _aligned(report["labels"], mean)
    ens = report["results"]["ensemble"]
    assert ens["summary"]["n"] == N_SERIES
    assert ens["summary"]["score"] == pytest.approx(sklearn_score(y, p), abs=1e-12)


def test_fold_scores_match_per_fold_sklearn(report):
    y, p, folds, _ = _aligned(report["labels"], report["oofs"]["run_b"])
    rows = report["results"]["run_b"]["folds"]
    assert [r["fold"] for r in rows] == list(range(N_FOLDS))
    for row in rows:
        keep = folds == row["fold"]
        assert row["n"] == int(keep.sum())
        assert row["score"] == pytest.approx(sklearn_score(y[keep], p[keep]), abs=1e-12)
    assert len(report["results"]["ensemble"]["folds"]) == N_FOLDS  # both runs used the same folds


def test_confusion_matrix_at_youden_threshold_by_hand(report):
    y, p, _, _ = _aligned(report["labels"], report["oofs"]["run_a"])
    y, p = y[:, 13], p[:, 13]
    conf = report["results"]["run_a"]["confusion"]
    best_j = max(np.mean(p[y == 1] >= t) + np.mean(p[y == 0] < t) - 1 for t in np.unique(p))
    called = p >= conf["threshold"]
    tp, fp = int(np.sum(called & (y == 1))), int(np.sum(called & (y == 0)))
    fn, tn = int(np.sum(~called & (y == 1))), int(np.sum(~called & (y == 0)))
    assert (conf["tp"], conf["fp"], conf["fn"], conf["tn"]) == (tp, fp, fn, tn)
    assert conf["youden_j"] == pytest.approx(best_j, abs=1e-12)
    assert conf["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert conf["specificity"] == pytest.approx(tn / (tn + fp))
    assert conf["accuracy"] == pytest.approx((tp + tn) / y.size)
    assert tp + fp + fn + tn == N_SERIES


def test_per_modality_reports_na_for_single_class_columns(report):
    y, p, _, modality = _aligned(report["labels"], report["oofs"]["run_a"])
    ens_rows = {m["modality"]: m for m in report["results"]["run_a"]["modalities"]}
    assert list(ens_rows) == ["CTA", "MRA", "MRI T2", "MRI T1post"]
    t1 = ens_rows["MRI T1post"]
    assert t1["n"] == 20 and t1["score"] is None
    assert t1["aucs"][LOCATION_COLS[5]] is None
    assert set(t1["undefined_columns"]) >= set(LOCATION_COLS[2:])
    keep = modality == "MRI T1post"
    assert t1["aucs"][PRESENT_COL] == pytest.approx(roc_auc_score(y[keep, 13], p[keep, 13]), abs=1e-12)
    mra = ens_rows["MRA"]
    keep = modality == "MRA"
    for j, col in enumerate(LABEL_COLS):
        defined = 0 < y[keep, j].sum() < keep.sum()
        expected = roc_auc_score(y[keep, j], p[keep, j]) if defined else None
        assert mra["aucs"][col] == (pytest.approx(expected, abs=1e-12) if defined else None)
    md = (report["out"] / "report.md").read_text()
    assert re.search(r"\| MRI T1post \| 20 \| \d+ \| n/a \|", md)


def test_markdown_shows_the_numbers_and_every_figure(report):
    md = (report["out"] / "report.md").read_text()
    score = report["results"]["ensemble"]["summary"]["score"]
    assert f"| ensemble | {N_SERIES} |" in md and f"{score:.4f}" in md
    figures = report["numbers"]["figures"]
    assert set(figures) == {"location_auc.png", "modality_auc.png", "fold_spread.png", "roc_pr.png", "calibration.png",
                            "confusion.png", "curves_run_a.png"}
    assert (report["out"] / "curves_run_a.png").read_bytes() == (report["root"] / "run_a" / "curves.png").read_bytes()
    for name in figures:
        assert f"]({name})" in md
        assert (report["out"] / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_is_self_contained_and_embeds_every_figure(report):
    page = (report["out"] / "report.html").read_text()
    sources = re.findall(r"""src=['"]([^'"]*)['"]""", page)
    assert not re.search(r"""(href|src)=['"](https?:|//|[^'"d])""", page)  # nothing fetched from elsewhere
    assert "<link" not in page and "<script" not in page
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert len(sources) == len(report["numbers"]["figures"])
    for name in report["numbers"]["figures"]:
        assert (report["out"] / name).read_bytes() in embedded


def test_single_run_with_undefined_columns_reports_partial_score(tmp_path):
    rng = np.random.default_rng(3)
    labels = constructed_labels(rng).slice(60, 50)  # only random extra positives for most locations
    labels.write_csv(tmp_path / "train.csv")
    (tmp_path / "run").mkdir()
    oof = constructed_oof(labels, rng, 1.0, shuffle=False).with_columns(pl.col("fold") % 2)
    oof.write_parquet(tmp_path / "run" / "oof.parquet")
    numbers = evaluate_runs([tmp_path / "run"], tmp_path / "train.csv", tmp_path / "out")
    (res,) = numbers["results"]  # one run: no ensemble
    summary = res["summary"]
    y, p, _, _ = _aligned(labels, oof)
    defined = [j for j in range(14) if 0 < y[:, j].sum() < len(y)]
    assert summary["score"] is None and 0 < len(summary["undefined_columns"]) == 14 - len(defined)
    aucs = np.array([roc_auc_score(y[:, j], p[:, j]) for j in defined])
    assert summary["partial_score"] == pytest.approx((aucs * WEIGHTS[defined]).sum() / WEIGHTS[defined].sum())
    assert "n/a (partial" in (tmp_path / "out" / "report.md").read_text()


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    constructed_labels(np.random.default_rng(0)).write_csv(tmp_path / "train.csv")
    (tmp_path / "empty_run").mkdir()
    code = main(["evaluate", "--runs", str(tmp_path / "empty_run"), "--labels", str(tmp_path / "train.csv"),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "oof.parquet does not exist" in capsys.readouterr().err
    (tmp_path / "stranger").mkdir()
    pl.DataFrame({ID_COL: ["9.9"], "fold": [0], **{c: [0.5] for c in LABEL_COLS}}).write_parquet(
        tmp_path / "stranger" / "oof.parquet")
    code = main(["evaluate", "--runs", str(tmp_path / "stranger"), "--labels", str(tmp_path / "train.csv"),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "have no label" in capsys.readouterr().err


def test_report_keeps_the_roi_coverage_of_each_run(report):
    md = (report["out"] / "report.md").read_text()
    section = md.split("ROI coverage of the training cache", 1)[1]
    assert "| location | run_a: points / inside / median face mm |" in section  # run_b kept none: no column
    assert "| Left Middle Cerebral Artery | 40 / 95.0% / 12.2 |" in section
    assert "| Basilar Tip | 7 / 100.0% / 20.0 |" in section
    assert "run_a: Left Middle Cerebral Artery: 2 of 40 points outside the box" in section
    assert report["numbers"]["roi_coverage"] == {"run_a": COVERAGE}


def test_report_says_when_no_run_kept_coverage(tmp_path):
    labels = constructed_labels(np.random.default_rng(4))
    labels.write_csv(tmp_path / "train.csv")
    (tmp_path / "run").mkdir()
    oof = constructed_oof(labels, np.random.default_rng(4), 1.0, shuffle=False)
    oof.write_parquet(tmp_path / "run" / "oof.parquet")
    numbers = evaluate_runs([tmp_path / "run"], tmp_path / "train.csv", tmp_path / "out")
    assert numbers["roi_coverage"] == {}
    assert "the box's coverage is unknown here" in (tmp_path / "out" / "report.md").read_text()
