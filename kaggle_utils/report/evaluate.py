"""``python -m kaggle_utils evaluate``: the out-of-fold report of one or more trained runs.

Reads ``RUN/oof.parquet`` (SeriesInstanceUID, fold, 14 probability columns) of each run and the labels (train.csv),
and writes into ``--out``: ``report.md`` with PNG figures beside it, ``report.html`` (one self-contained page, figures
embedded) and ``report.json`` (every number in the report). With several runs it also evaluates their ensemble, the
mean of the probabilities over the series all runs predicted.

The score and its halves come from ``kaggle_utils.metric``. A column with a single class (a location without positives
in a small fold, modality or data set) has no AUC: it is reported as n/a, and where that leaves the official score
undefined the report says so and gives the weighted mean over the defined columns instead, labelled as partial.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from kaggle_utils import metric
from kaggle_utils.coverage import MIN_FRACTION, read_coverage
from kaggle_utils.errors import KitError
from kaggle_utils.io import atomic_write_bytes, atomic_write_text
from kaggle_utils.paths import run_dirs
from kaggle_utils.report.figures import annotate_heatmap, colormap_with_na, new_figure, save_png, short_label
from kaggle_utils.report.page import Page, fmt_number
from kaggle_utils.schema import ID_COL, LABEL_COLS, LABEL_WEIGHTS, MODALITIES, PRESENT_COL

ENSEMBLE_NAME = "ensemble"
PRESENT_INDEX = LABEL_COLS.index(PRESENT_COL)


class ReportError(KitError, ValueError):
    """Unusable report input: a missing or malformed oof.parquet / labels file, or ids that do not match."""


@dataclass
class Prediction:
    """One named set of out-of-fold probabilities joined row by row to its labels."""

    name: str
    ids: list[str]
    folds: np.ndarray | None  # int per row, or None when folds are not comparable (ensemble of differing splits)
    y_true: np.ndarray  # (n, 14) 0/1
    y_prob: np.ndarray  # (n, 14) probabilities
    modality: np.ndarray | None  # train.csv four-way modality per row, or None when the labels lack it


# --------------------------------------------------------------------------------------------------------------------
# Reading and joining


def read_labels(path: str | Path) -> pl.DataFrame:
    """train.csv-shaped labels: the id, the 14 label columns as 0/1, and Modality when present."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"labels file {path} does not exist")
    labels = pl.read_csv(path)
    missing = [c for c in (ID_COL, *LABEL_COLS) if c not in labels.columns]
    if missing:
        raise ReportError(f"labels file {path} lacks columns {missing}")
    values = labels.select(LABEL_COLS).to_numpy()
    if not np.isin(values, (0, 1)).all():
        raise ReportError(f"labels file {path}: label columns must hold only 0 and 1")
    if labels[ID_COL].is_duplicated().any():
        raise ReportError(f"labels file {path}: duplicated {ID_COL} values")
    return labels


def read_oof(run: str | Path) -> pl.DataFrame:
    """A run's ``oof.parquet`` (``run`` is the run folder or the parquet file itself), checked."""
    run = Path(run)
    path = run / "oof.parquet" if run.is_dir() else run
    if not path.is_file():
        raise ReportError(f"{path} does not exist (is {run} a finished training run with out-of-fold predictions?)")
    oof = pl.read_parquet(path)
    missing = [c for c in (ID_COL, "fold", *LABEL_COLS) if c not in oof.columns]
    if missing:
        raise ReportError(f"{path} lacks columns {missing}")
    if oof.height == 0:
        raise ReportError(f"{path} has no rows")
    if oof[ID_COL].is_duplicated().any():
        raise ReportError(f"{path}: duplicated {ID_COL} values")
    probs = oof.select(LABEL_COLS).to_numpy().astype(np.float64)
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise ReportError(f"{path}: probabilities must be finite and within [0, 1]")
    return oof


def ensemble_oof(oofs: list[pl.DataFrame]) -> pl.DataFrame:
    """Mean of the probabilities over the series every run predicted. ``fold`` is kept when all runs agree on it,
    otherwise it is null (a per-fold score would mix different splits)."""
    common = set(oofs[0][ID_COL].to_list())
    for oof in oofs[1:]:
        common &= set(oof[ID_COL].to_list())
    if not common:
        raise ReportError("the runs share no SeriesInstanceUID, so they cannot be ensembled")
    ids = sorted(common)
    aligned = [pl.DataFrame({ID_COL: ids}).join(o, on=ID_COL, how="left") for o in oofs]
    mean = np.mean([a.select(LABEL_COLS).to_numpy().astype(np.float64) for a in aligned], axis=0)
    folds = [a["fold"].to_numpy() for a in aligned]
    same_folds = all(np.array_equal(folds[0], f) for f in folds[1:])
    out = pl.DataFrame({ID_COL: ids, "fold": folds[0] if same_folds else [None] * len(ids)})
    return out.hstack(pl.DataFrame(mean, schema=list(LABEL_COLS)))


def join_labels(name: str, oof: pl.DataFrame, labels: pl.DataFrame) -> Prediction:
    """Align ``oof`` with ``labels`` by id; every OOF id must have a label."""
    label_ids = set(labels[ID_COL].to_list())
    unknown = [i for i in oof[ID_COL].to_list() if i not in label_ids]
    if unknown:
        raise ReportError(f"run {name!r}: {len(unknown)} predicted series have no label, e.g. {unknown[:3]}")
    keep = [ID_COL, *LABEL_COLS] + (["Modality"] if "Modality" in labels.columns else [])
    joined = oof.select(ID_COL, "fold", *LABEL_COLS).join(labels.select(keep), on=ID_COL, how="inner",
                                                          suffix="__true")
    folds = joined["fold"]
    return Prediction(
        name=name,
        ids=joined[ID_COL].to_list(),
        folds=None if folds.null_count() else folds.to_numpy().astype(np.int64),
        y_true=joined.select([f"{c}__true" for c in LABEL_COLS]).to_numpy().astype(np.int64),
        y_prob=joined.select(LABEL_COLS).to_numpy().astype(np.float64),
        modality=joined["Modality"].to_numpy().astype(str) if "Modality" in joined.columns else None,
    )


# --------------------------------------------------------------------------------------------------------------------
# Numbers


def _frames(ids: list[str], y_true: np.ndarray, y_prob: np.ndarray) -> tuple[pl.DataFrame, pl.DataFrame]:
    solution = pl.DataFrame({ID_COL: ids}).hstack(pl.DataFrame(y_true, schema=list(LABEL_COLS)))
    submission = pl.DataFrame({ID_COL: ids}).hstack(pl.DataFrame(y_prob, schema=list(LABEL_COLS)))
    return solution, submission


def column_auc_rows(y_true: np.ndarray, y_prob: np.ndarray) -> list[dict]:
    """Per-column AUC (``metric.score_over_scorable_columns``); ``auc`` is None where the column holds one class."""
    aucs = metric.score_over_scorable_columns(y_true, y_prob)["aucs"]
    return [{"column": col, "weight": LABEL_WEIGHTS[j], "auc": aucs[col], "n_pos": int(y_true[:, j].sum()),
             "n": int(y_true.shape[0])} for j, col in enumerate(LABEL_COLS)]


def score_summary(ids: list[str], y_true: np.ndarray, y_prob: np.ndarray) -> dict:
    """Official score and halves when every column has both classes (``metric.score_halves``); otherwise score is
    None and ``partial_score`` is the score over the defined columns (``metric.score_over_scorable_columns``)."""
    scored = metric.score_over_scorable_columns(y_true, y_prob)
    undefined = [c for c in LABEL_COLS if scored["aucs"][c] is None]
    summary = {"n": int(y_true.shape[0]), "n_pos": int(y_true[:, PRESENT_INDEX].sum()), "undefined_columns": undefined}
    if not undefined:
        summary.update(metric.score_halves(*_frames(ids, y_true, y_prob)))
        summary["partial_score"] = summary["score"]
        return summary
    summary.update({
        "score": None,
        "present_auc": scored["present_auc"],
        "location_auc_mean": scored["location_auc_mean"],
        "partial_score": scored["score"],
    })
    return summary


def fold_rows(pred: Prediction) -> list[dict]:
    """Score summary per fold (empty when the prediction has no comparable folds)."""
    if pred.folds is None:
        return []
    out = []
    for fold in np.unique(pred.folds):
        rows = pred.folds == fold
        ids = [i for i, keep in zip(pred.ids, rows) if keep]
        out.append({"fold": int(fold), **score_summary(ids, pred.y_true[rows], pred.y_prob[rows])})
    return out


def modality_rows(pred: Prediction) -> list[dict]:
    """Per modality (train.csv four-way): n, positives, per-column AUC (None = single class) and score summary."""
    if pred.modality is None:
        return []
    present = set(pred.modality.tolist())
    order = [m for m in MODALITIES if m in present] + sorted(present - set(MODALITIES))
    out = []
    for modality in order:
        rows = pred.modality == modality
        ids = [i for i, keep in zip(pred.ids, rows) if keep]
        y_true, y_prob = pred.y_true[rows], pred.y_prob[rows]
        aucs = {r["column"]: r["auc"] for r in column_auc_rows(y_true, y_prob)}
        out.append({"modality": modality, **score_summary(ids, y_true, y_prob), "aucs": aucs})
    return out


def youden_threshold(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[float, float]:
    """The probability threshold maximising Youden's J = sensitivity + specificity - 1, and J there.
    A series is called positive when its probability is >= the threshold."""
    fpr, tpr, thresholds = roc_curve(y_true, y_prob)
    finite = np.isfinite(thresholds)  # sklearn's first threshold is +inf (nobody positive)
    j = tpr[finite] - fpr[finite]
    best = int(np.argmax(j))
    return float(thresholds[finite][best]), float(j[best])


def confusion_at(y_true: np.ndarray, y_prob: np.ndarray, threshold: float) -> dict:
    """Confusion counts and rates when ``prob >= threshold`` is called positive."""
    called = y_prob >= threshold
    truth = y_true.astype(bool)
    tp, fp = int((called & truth).sum()), int((called & ~truth).sum())
    fn, tn = int((~called & truth).sum()), int((~called & ~truth).sum())
    return {
        "threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "accuracy": (tp + tn) / truth.size,
    }


def present_curves(pred: Prediction) -> dict:
    """ROC and precision-recall curves of Aneurysm Present with AUC and average precision."""
    y, p = pred.y_true[:, PRESENT_INDEX], pred.y_prob[:, PRESENT_INDEX]
    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)
    return {"fpr": fpr, "tpr": tpr, "auc": metric.roc_auc(y, p), "precision": precision, "recall": recall,
            "average_precision": float(average_precision_score(y, p)), "prevalence": float(y.mean())}


def evaluate_prediction(pred: Prediction, n_bins: int = 10) -> dict:
    """Every number of the report for one prediction set (JSON-ready; curves kept separately for plotting)."""
    y, p = pred.y_true[:, PRESENT_INDEX], pred.y_prob[:, PRESENT_INDEX]
    if y.min() == y.max():
        raise ReportError(f"run {pred.name!r}: Aneurysm Present holds a single class over the {y.size} OOF series; "
                          "the report needs positives and negatives")
    threshold, j = youden_threshold(y, p)
    frac_pos, mean_prob = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    curves = present_curves(pred)
    return {
        "name": pred.name,
        "summary": score_summary(pred.ids, pred.y_true, pred.y_prob),
        "columns": column_auc_rows(pred.y_true, pred.y_prob),
        "folds": fold_rows(pred),
        "modalities": modality_rows(pred),
        "confusion": {**confusion_at(y, p, threshold), "youden_j": j},
        "average_precision": curves["average_precision"],
        "calibration": {"mean_predicted": mean_prob.tolist(), "fraction_positive": frac_pos.tolist(),
                        "brier": float(np.mean((p - y) ** 2))},
        "_curves": curves,
        "_present": (y, p),
    }


# --------------------------------------------------------------------------------------------------------------------
# Figures


def plot_location_aucs(results: list[dict], path: Path) -> Path:
    """Horizontal bars: AUC per label column, one bar per run (n/a columns drawn as an empty grey slot)."""
    fig, (ax,) = new_figure(9, 0.45 * len(LABEL_COLS) + 1.5)
    height = 0.8 / len(results)
    ypos = np.arange(len(LABEL_COLS))
    undefined: dict[int, list[str]] = {}
    for k, res in enumerate(results):
        aucs = np.array([np.nan if r["auc"] is None else r["auc"] for r in res["columns"]])
        ax.barh(ypos + k * height, np.nan_to_num(aucs, nan=0.0), height=height, label=res["name"])
        for i in np.flatnonzero(~np.isfinite(aucs)):
            undefined.setdefault(int(i), []).append(res["name"])
    centre = height * (len(results) - 1) / 2
    for i, names in undefined.items():
        which = "" if len(names) == len(results) else " in " + ", ".join(names)
        ax.text(0.51, ypos[i] + centre, f"n/a (single class){which}", va="center", fontsize=7, color="grey")
    ax.axvline(0.5, color="black", linestyle="--", linewidth=1, label="chance (0.5)")
    ax.set_yticks(ypos + centre, [short_label(c, 40) for c in LABEL_COLS])
    ax.invert_yaxis()
    lowest = min((r["auc"] for res in results for r in res["columns"] if r["auc"] is not None), default=0.5)
    ax.set_xlim(min(0.4, lowest - 0.05), 1.0)
    ax.set_xlabel("ROC AUC (out-of-fold)")
    ax.set_title("AUC per label column")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=len(results) + 1)
    return save_png(fig, path)


def plot_modality_heatmap(result: dict, path: Path) -> Path:
    """Modality x column AUC heatmap of one prediction set; grey n/a where a column has a single class."""
    mods = result["modalities"]
    values = np.array([[np.nan if m["aucs"][c] is None else m["aucs"][c] for c in LABEL_COLS] for m in mods])
    fig, (ax,) = new_figure(12, 0.6 * len(mods) + 3.2)
    lowest = float(np.nanmin(values)) if np.isfinite(values).any() else 0.5
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colormap_with_na("viridis"), vmin=min(0.5, lowest), vmax=1.0,
                      aspect="auto")
    annotate_heatmap(ax, values)
    ax.set_xticks(range(len(LABEL_COLS)), [short_label(c, 22) for c in LABEL_COLS], rotation=45, ha="right")
    ax.set_yticks(range(len(mods)), [f"{m['modality']} (n={m['n']})" for m in mods])
    ax.set_xlabel("label column")
    ax.set_ylabel("modality (train.csv)")
    ax.set_title(f"AUC per modality and column: {result['name']} (grey = n/a, single class)")
    ax.grid(False)
    fig.colorbar(image, ax=ax, label="ROC AUC")
    return save_png(fig, path)


def plot_fold_spread(results: list[dict], path: Path) -> Path:
    """Per-fold score of each run (partial score, hollow marker, where a fold has single-class columns)."""
    fig, (ax,) = new_figure(7, 4)
    for k, res in enumerate(results):
        folds = res["folds"]
        if not folds:
            continue
        xs = np.array([f["fold"] for f in folds], dtype=float) + (k - (len(results) - 1) / 2) * 0.08
        full = [f["score"] is not None for f in folds]
        ys = [f["score"] if f["score"] is not None else f["partial_score"] for f in folds]
        line = ax.plot(xs, ys, marker="o", markersize=8, linestyle="none", label=res["name"])[0]
        defined = [y for y in ys if y is not None]
        if defined:  # mean over folds as a dashed level in the run's colour
            ax.hlines(np.mean(defined), xs.min() - 0.2, xs.max() + 0.2, colors=line.get_color(), linestyles="--",
                      linewidth=1, alpha=0.6)
        hollow = [(x, yv) for x, yv, ok in zip(xs, ys, full) if not ok and yv is not None]
        if hollow:
            ax.scatter(*zip(*hollow), s=80, facecolors="white", edgecolors=line.get_color(), zorder=3)
    ax.scatter([], [], s=60, facecolors="white", edgecolors="grey", label="partial score (single-class columns)")
    folds = sorted({f["fold"] for res in results for f in res["folds"]})
    ax.set_xticks(folds)
    ax.set_xlabel("fold")
    ax.set_ylabel("competition score (weighted AUC)")
    ax.set_title("Score per fold (dashed: mean over folds)")
    ax.legend()
    return save_png(fig, path)


def plot_roc_pr(results: list[dict], path: Path) -> Path:
    """ROC and precision-recall curves of Aneurysm Present for every run, with AUC / average precision."""
    fig, (roc_ax, pr_ax) = new_figure(11, 4.8, ncols=2)
    for res in results:
        c = res["_curves"]
        roc_ax.plot(c["fpr"], c["tpr"], label=f"{res['name']} (AUC {c['auc']:.3f})")
        pr_ax.step(c["recall"], c["precision"], where="post", label=f"{res['name']} (AP {c['average_precision']:.3f})")
    roc_ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="chance")
    prevalence = results[0]["_curves"]["prevalence"]
    pr_ax.axhline(prevalence, color="black", linestyle="--", linewidth=1, label=f"prevalence {prevalence:.2f}")
    roc_ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
               title="ROC: Aneurysm Present", xlim=(0, 1), ylim=(0, 1.02))
    pr_ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall: Aneurysm Present",
              xlim=(0, 1), ylim=(0, 1.02))
    roc_ax.legend(loc="lower right")
    pr_ax.legend(loc="lower left")
    return save_png(fig, path)


def plot_calibration(results: list[dict], path: Path, n_bins: int = 10) -> Path:
    """Reliability diagram of Aneurysm Present plus the histogram of predicted probabilities."""
    fig, (ax, hist_ax) = new_figure(7, 6.5, nrows=2, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfectly calibrated")
    for res in results:
        cal = res["calibration"]
        ax.plot(cal["mean_predicted"], cal["fraction_positive"], marker="o",
                label=f"{res['name']} (Brier {cal['brier']:.3f})")
        hist_ax.hist(res["_present"][1], bins=n_bins, range=(0, 1), histtype="step", linewidth=1.5, label=res["name"])
    ax.set(xlabel="mean predicted probability (bin)", ylabel="fraction of positives",
           title="Calibration: Aneurysm Present", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    hist_ax.set(xlabel="predicted probability", ylabel="series", xlim=(0, 1))
    hist_ax.legend()
    return save_png(fig, path)


def plot_confusion(result: dict, path: Path) -> Path:
    """2x2 confusion matrix of Aneurysm Present at the Youden threshold, with the rates in the title."""
    conf = result["confusion"]
    counts = np.array([[conf["tn"], conf["fp"]], [conf["fn"], conf["tp"]]])
    fig, (ax,) = new_figure(5, 4.5)
    ax.imshow(counts, cmap="Blues")
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, f"{v}\n({v / counts.sum():.0%})", ha="center", va="center",
                color="white" if v > counts.max() / 2 else "black", fontsize=11)
    ax.set_xticks([0, 1], ["predicted negative", "predicted positive"])
    ax.set_yticks([0, 1], ["no aneurysm", "aneurysm"])
    ax.set_xlabel(f"prediction (probability >= {conf['threshold']:.3f}, max Youden J)")
    ax.set_ylabel("truth (Aneurysm Present)")
    ax.set_title(f"{result['name']}: sensitivity {fmt_number(conf['sensitivity'], 3)}, "
                 f"specificity {fmt_number(conf['specificity'], 3)}, accuracy {conf['accuracy']:.3f}", fontsize=9)
    ax.grid(False)
    return save_png(fig, path)


# --------------------------------------------------------------------------------------------------------------------
# The report


def _summary_row(res: dict) -> list[str]:
    s = res["summary"]
    score = fmt_number(s["score"]) if s["score"] is not None else f"n/a (partial {fmt_number(s['partial_score'])})"
    return [res["name"], str(s["n"]), str(s["n_pos"]), score, fmt_number(s["present_auc"]),
            fmt_number(s["location_auc_mean"]), fmt_number(res["average_precision"])]


def build_page(results: list[dict], out: Path, sources: list[str]) -> Page:
    """Assemble the report page (and write its PNG figures into ``out``)."""
    primary = results[-1]  # the ensemble when there is one, else the single run
    page = Page("Out-of-fold report")
    page.text("Runs: " + ", ".join(sources) + ". Score = 0.5 x AUC(Aneurysm Present) + 0.5 x mean of the 13 "
              "location AUCs (kaggle_utils.metric). n/a = the column holds a single class, so its AUC is undefined.")
    page.heading("Score")
    page.table(["run", "series", "positives", "score", "AUC Aneurysm Present", "mean location AUC",
                "average precision"], [_summary_row(r) for r in results])
    for res in results:
        if res["summary"]["undefined_columns"]:
            page.text(f"{res['name']}: official score undefined; single-class columns: "
                      + ", ".join(res["summary"]["undefined_columns"]) + ". 'partial' = weighted mean over the others.")
    page.heading("AUC per location")
    header = ["column", "positives"] + [r["name"] for r in results]
    rows = [[col, str(results[-1]["columns"][j]["n_pos"])] + [fmt_number(r["columns"][j]["auc"]) for r in results]
            for j, col in enumerate(LABEL_COLS)]
    page.table(header, rows)
    page.figure(plot_location_aucs(results, out / "location_auc.png"), "AUC per label column and run")

    if primary["modalities"]:
        page.heading("AUC per modality")
        page.table(["modality", "series", "positives", "score", "partial score", "AUC Aneurysm Present",
                    "mean location AUC"],
                   [[m["modality"], str(m["n"]), str(m["n_pos"]), fmt_number(m["score"]),
                     fmt_number(m["partial_score"]), fmt_number(m["present_auc"]), fmt_number(m["location_auc_mean"])]
                    for m in primary["modalities"]])
        page.text("Modality is train.csv's four-way label (not available at test time); a location AUC is n/a where "
                  "that modality has no positive (or no negative) for it.")
        page.figure(plot_modality_heatmap(primary, out / "modality_auc.png"),
                    f"AUC per modality and column ({primary['name']})")
    else:
        page.text("The labels have no Modality column: no per-modality breakdown.")

    page.heading("Fold spread")
    fold_table = [[r["name"], str(f["fold"]), str(f["n"]), str(f["n_pos"]), fmt_number(f["score"]),
                   fmt_number(f["partial_score"]), fmt_number(f["present_auc"])] for r in results for f in r["folds"]]
    if fold_table:
        page.table(["run", "fold", "series", "positives", "score", "partial score", "AUC Aneurysm Present"], fold_table)
        for r in results:
            scores = [f["score"] for f in r["folds"] if f["score"] is not None]
            if len(scores) > 1:
                page.text(f"{r['name']}: fold score mean {np.mean(scores):.4f}, std {np.std(scores):.4f}, "
                          f"range {min(scores):.4f}-{max(scores):.4f}.")
        page.figure(plot_fold_spread(results, out / "fold_spread.png"), "Competition score per fold and run")
        without = [r["name"] for r in results if not r["folds"]]
        if without:
            page.text(", ".join(without) + ": no per-fold score (its runs were trained on different fold splits).")
    else:
        page.text("No comparable folds (the runs were trained on different splits).")

    page.heading("Aneurysm Present: ROC, precision-recall, calibration")
    page.figure(plot_roc_pr(results, out / "roc_pr.png"), "ROC and precision-recall curves of Aneurysm Present")
    page.figure(plot_calibration(results, out / "calibration.png"),
                "Calibration (reliability diagram) and histogram of predicted probabilities")

    page.heading("Confusion matrix at the Youden threshold")
    conf = primary["confusion"]
    page.table(["run", "threshold", "TP", "FP", "FN", "TN", "sensitivity", "specificity", "accuracy", "Youden J"],
               [[r["name"], fmt_number(r["confusion"]["threshold"]), *(str(r["confusion"][k]) for k in
                 ("tp", "fp", "fn", "tn")), fmt_number(r["confusion"]["sensitivity"]),
                 fmt_number(r["confusion"]["specificity"]), fmt_number(r["confusion"]["accuracy"]),
                 fmt_number(r["confusion"]["youden_j"])] for r in results])
    page.figure(plot_confusion(primary, out / "confusion.png"),
                f"Confusion matrix of {primary['name']} at threshold {conf['threshold']:.4f}")
    return page


def add_training_curves(page: Page, runs: list[Path], names: list[str], out: Path) -> None:
    """Copy each run's ``curves.png`` (written by training) into the report, when it exists."""
    curves = [(name, Path(run) / "curves.png") for name, run in zip(names, runs)]
    curves = [(name, path) for name, path in curves if path.is_file()]
    if not curves:
        return
    page.heading("Training curves")
    for name, source in curves:
        target = atomic_write_bytes(out / f"curves_{_file_safe(name)}.png", source.read_bytes())
        page.figure(target, f"Training curves of {name} (from its run folder)")


def add_roi_coverage(page: Page, runs: list[Path], names: list[str]) -> dict[str, dict]:
    """The ROI coverage of each run's training cache (``RUN/coverage.json``, kept by training): per location the
    fraction of localizer points inside the box and the median distance to its nearest face. Returns it by run."""
    kept = {name: read_coverage(Path(run)) for name, run in zip(names, runs) if Path(run).is_dir()}
    kept = {name: cov for name, cov in kept.items() if cov is not None}
    page.heading("ROI coverage of the training cache")
    if not kept:
        page.text("No run folder holds coverage.json (a cache without localizer points, or trained before training "
                  "kept it): the box's coverage is unknown here.")
        return {}
    by_location: dict[str, dict[str, dict]] = {}
    for name, cov in kept.items():
        for row in cov["locations"]:
            by_location.setdefault(row["location"], {})[name] = row
    header = ["location"] + [f"{name}: points / inside / median face mm" for name in kept]
    rows = [[loc] + [f"{r['points']} / {r['inside_fraction']:.1%} / {r['median_face_mm']:.1f}" if (r := per.get(n))
                     else "-" for n in kept] for loc, per in sorted(by_location.items())]
    page.table(header, rows)
    warnings = [f"{name}: {w}" for name, cov in kept.items() for w in cov.get("warnings", [])]
    page.text(f"Fraction of the training localizer points inside the ROI box; under {MIN_FRACTION:.0%} the crop cuts "
              "off aneurysms of that location. " + (" ".join(warnings) if warnings else "No location is under it."))
    return kept


def _file_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def public_numbers(result: dict) -> dict:
    """The JSON-ready part of a result (private plotting arrays removed)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def evaluate_runs(runs: list[Path], labels_path: Path, out: Path) -> dict:
    """Evaluate each run (and their ensemble when there are several) and write the report into ``out``.
    Returns the numbers written to ``report.json``."""
    labels = read_labels(labels_path)
    oofs = [read_oof(r) for r in runs]
    names = [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in runs]
    names = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
    preds = [join_labels(n, o, labels) for n, o in zip(names, oofs)]
    if len(oofs) > 1:
        preds.append(join_labels(ENSEMBLE_NAME, ensemble_oof(oofs), labels))
    results = [evaluate_prediction(p) for p in preds]
    if not out.parent.is_dir():
        raise ReportError(f"cannot write the report to {out}: its parent folder does not exist")
    out.mkdir(exist_ok=True)
    page = build_page(results, out, [str(r) for r in runs])
    coverage = add_roi_coverage(page, runs, names)
    add_training_curves(page, runs, names, out)
    md, html_path = page.write(out, "report")
    numbers = {"runs": [str(r) for r in runs], "labels": str(labels_path),
               "results": [public_numbers(r) for r in results], "roi_coverage": coverage,
               "figures": [p.name for p in page.figures()],
               "markdown": md.name, "html": html_path.name}
    atomic_write_text(out / "report.json", json.dumps(numbers, indent=2))
    return numbers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", help="run folders with oof.parquet (default: KAGGLE_UTILS_RUNS)")
    parser.add_argument("--labels", required=True, help="train.csv-shaped labels of the OOF series")
    parser.add_argument("--out", required=True, help="report folder (created if its parent exists)")


def run(args: argparse.Namespace) -> int:
    numbers = evaluate_runs(run_dirs(args.runs), Path(args.labels), Path(args.out))
    for res in numbers["results"]:
        s = res["summary"]
        score = fmt_number(s["score"]) if s["score"] is not None else f"n/a (partial {fmt_number(s['partial_score'])})"
        print(f"{res['name']}: score {score}  AUC present {fmt_number(s['present_auc'])}  "
              f"mean location AUC {fmt_number(s['location_auc_mean'])}  (n={s['n']})")
    print(f"report: {Path(args.out) / numbers['html']}")
    return 0
