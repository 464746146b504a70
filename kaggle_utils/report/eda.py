"""``python -m kaggle_utils eda``: exploratory figures of a competition folder (real or synthetic).

From ``train.csv``: prevalence per location, location co-occurrence, modality / age / sex distributions. From the file
tree: DICOM files per series (every series, a directory listing). From DICOM headers, read by the loader's own header
path (``dicom.read_header_geometry``, no pixel decoded) on at most ``--max-series`` series sampled evenly: slices per
series (frames counted in multi-frame files), in-plane pixel spacing, slice spacing and image matrix, each the value
the loader uses (its fallbacks included, flagged as assumed). Writes ``eda.md`` with PNGs beside it,
``eda.html`` (self-contained) and ``eda.json`` (the numbers).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

from kaggle_utils.dicom import SeriesError, read_header_geometry, series_files
from kaggle_utils.errors import KitError
from kaggle_utils.io import atomic_write_text
from kaggle_utils.localizers import LOCALIZERS_NAME
from kaggle_utils.localizers import read_localizers as read_localizer_csv
from kaggle_utils.paths import data_dir as resolve_data_dir
from kaggle_utils.preprocess import GEOMETRY_GUESS_NOTES
from kaggle_utils.report.figures import annotate_heatmap, integer_ticks, new_figure, save_png, short_label
from kaggle_utils.report.page import Page, fmt_number
from kaggle_utils.schema import ID_COL, LOCATION_COLS, MODALITIES, PRESENT_COL, TRAIN_CSV_COLS


class EdaError(KitError, ValueError):
    """A competition folder whose CSVs are missing or malformed."""


# --------------------------------------------------------------------------------------------------------------------
# Label tables


def read_train_csv(folder: Path) -> pl.DataFrame:
    path = folder / "train.csv"
    if not path.is_file():
        raise EdaError(f"{path} does not exist (is {folder} a competition folder?)")
    train = pl.read_csv(path)
    missing = [c for c in TRAIN_CSV_COLS if c not in train.columns]
    if missing:
        raise EdaError(f"{path} lacks columns {missing}")
    return train


def read_localizers(folder: Path) -> pl.DataFrame | None:
    """``train_localizers.csv`` read by the kit's one reader (``localizers.read_localizers``); None when absent."""
    return read_localizer_csv(folder) if (folder / LOCALIZERS_NAME).is_file() else None


def label_stats(train: pl.DataFrame) -> dict:
    """Counts from train.csv: series, positives per location, co-occurrence, modality / sex counts, ages."""
    loc = train.select(LOCATION_COLS).to_numpy().astype(np.int64)
    present = train[PRESENT_COL].to_numpy().astype(np.int64)
    modality = train["Modality"].cast(pl.Utf8).to_list()
    order = [m for m in MODALITIES if m in modality] + sorted(set(modality) - set(MODALITIES))
    return {
        "n_series": train.height,
        "n_present": int(present.sum()),
        "location_positives": dict(zip(LOCATION_COLS, loc.sum(axis=0).tolist())),
        "cooccurrence": (loc.T @ loc).tolist(),  # [i][j] = series positive for both; diagonal = positives of i
        "locations_per_positive_series": dict(sorted(Counter(loc.sum(axis=1)[present == 1].tolist()).items())),
        "modality_counts": {m: modality.count(m) for m in order},
        "modality_positives": {m: int(present[np.array(modality) == m].sum()) for m in order},
        "sex_counts": dict(sorted(Counter(train["PatientSex"].cast(pl.Utf8).to_list()).items())),
        "ages": [float(a) for a in train["PatientAge"].drop_nulls().to_list()],
    }


# --------------------------------------------------------------------------------------------------------------------
# File tree and headers


def files_per_series(series_root: Path, uids: list[str]) -> dict[str, int]:
    """Number of ``*.dcm`` files per series folder (0 when the folder is missing)."""
    return {uid: sum(1 for _ in (series_root / uid).glob("*.dcm")) if (series_root / uid).is_dir() else 0
            for uid in uids}


def sample_evenly(items: list[str], limit: int) -> list[str]:
    """At most ``limit`` items spread evenly over the sorted list (deterministic, covers the whole range)."""
    items = sorted(items)
    if limit <= 0 or len(items) <= limit:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def series_header_stats(folder: Path) -> dict:
    """Header-only statistics of one series folder as the loader reads it (``dicom.read_header_geometry``: the same
    tag reading, fallbacks, scout / duplicate dropping and slice step), so EDA reports the spacing the loader uses.
    Files the loader skips are listed with the reason; a series it cannot load gets ``error``."""
    n_files = len(series_files(folder))
    try:
        geometry = read_header_geometry(folder)
    except SeriesError as exc:
        return {"files": n_files, "skipped_files": {}, "error": str(exc), "slices": 0,
                "kept_slices": 0, "dicom_modality": None, "matrix": None, "plane": None, "pixel_spacing_mm": None,
                "slice_spacing_mm": None, "volume_spacing_mm": None, "geometry_assumed": False, "notes": []}
    return {
        "files": n_files, "skipped_files": geometry.unusable, "error": None,
        "slices": geometry.frames, "kept_slices": geometry.slices, "dicom_modality": geometry.modality,
        "matrix": f"{geometry.rows}x{geometry.cols}", "plane": geometry.plane,
        "pixel_spacing_mm": float(np.mean(geometry.pixel_spacing)), "slice_spacing_mm": geometry.slice_spacing,
        "volume_spacing_mm": list(geometry.spacing),
        "geometry_assumed": any(n.startswith(GEOMETRY_GUESS_NOTES) for n in geometry.notes), "notes": geometry.notes,
    }


def header_stats(series_root: Path, uids: list[str], max_series: int) -> dict[str, dict]:
    """Header statistics of an even sample of at most ``max_series`` existing series folders."""
    existing = [u for u in uids if (series_root / u).is_dir()]
    return {uid: series_header_stats(series_root / uid) for uid in sample_evenly(existing, max_series)}


# --------------------------------------------------------------------------------------------------------------------
# Figures


def plot_prevalence(stats: dict, path: Path) -> Path:
    counts = np.array([stats["location_positives"][c] for c in LOCATION_COLS])
    n = stats["n_series"]
    fig, (ax,) = new_figure(8, 5.5)
    ax.barh(range(len(LOCATION_COLS)), counts, color="tab:red")
    for i, c in enumerate(counts):
        ax.text(c, i, f" {c} ({c / n:.1%})", va="center", fontsize=8)
    ax.set_yticks(range(len(LOCATION_COLS)), [short_label(c, 40) for c in LOCATION_COLS])
    ax.invert_yaxis()
    ax.set_xlim(0, max(counts.max(), 1) * 1.25)
    ax.set_xlabel("series with an aneurysm at this location")
    integer_ticks(ax, "x")
    ax.set_title(f"Prevalence per location ({n} series, {stats['n_present']} with an aneurysm = "
                 f"{stats['n_present'] / max(n, 1):.1%})")
    return save_png(fig, path)


def plot_cooccurrence(stats: dict, path: Path) -> Path:
    matrix = np.array(stats["cooccurrence"], dtype=float)
    fig, (ax,) = new_figure(9, 8)
    image = ax.imshow(matrix, cmap="Reds")
    annotate_heatmap(ax, matrix, fmt="{:.0f}")
    labels = [short_label(c, 24) for c in LOCATION_COLS]
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_title("Location co-occurrence (series positive at both; diagonal = positives)")
    ax.grid(False)
    fig.colorbar(image, ax=ax, label="series", shrink=0.8)
    return save_png(fig, path)


def plot_demographics(stats: dict, path: Path) -> Path:
    fig, (mod_ax, age_ax, sex_ax) = new_figure(14, 4, ncols=3)
    mods = list(stats["modality_counts"])
    totals = np.array([stats["modality_counts"][m] for m in mods])
    positives = np.array([stats["modality_positives"][m] for m in mods])
    mod_ax.bar(mods, totals - positives, label="no aneurysm", color="tab:blue")
    mod_ax.bar(mods, positives, bottom=totals - positives, label="aneurysm", color="tab:red")
    mod_ax.set(xlabel="modality (train.csv)", ylabel="series", title="Series per modality")
    mod_ax.legend()
    age_ax.hist(stats["ages"], bins=20, color="tab:gray")
    age_ax.set(xlabel="patient age (years)", ylabel="series", title="Age distribution")
    sexes = list(stats["sex_counts"])
    sex_ax.bar(sexes, [stats["sex_counts"][s] for s in sexes], color=["tab:purple", "tab:green"][: len(sexes)])
    sex_ax.set(xlabel="patient sex", ylabel="series", title="Sex distribution")
    for ax in (mod_ax, age_ax, sex_ax):
        integer_ticks(ax, "y")
    return save_png(fig, path)


def plot_geometry(files: dict[str, int], headers: dict[str, dict], path: Path) -> Path:
    fig, axes = new_figure(13, 8, ncols=3, nrows=2)
    files_ax, slices_ax, matrix_ax, pix_ax, gap_ax, mod_ax = axes
    files_ax.hist(list(files.values()), bins=30, color="tab:blue")
    files_ax.set(xlabel="DICOM files per series", ylabel="series", title=f"Files per series (all {len(files)})")
    h = list(headers.values())
    slices_ax.hist([s["slices"] for s in h], bins=30, color="tab:orange")
    slices_ax.set(xlabel="slices (frames) per series", ylabel="series",
                  title=f"Slices per series (sample of {len(h)})")
    matrices = Counter(s["matrix"] or "unknown" for s in h).most_common(10)
    matrix_ax.barh([m for m, _ in matrices], [c for _, c in matrices], color="tab:green")
    matrix_ax.invert_yaxis()
    matrix_ax.set(xlabel="series", ylabel="rows x columns (pixels)", title="Image matrix (10 most common)")
    pix = [s["pixel_spacing_mm"] for s in h if s["pixel_spacing_mm"] is not None]
    pix_ax.hist(pix, bins=20, color="tab:purple")
    pix_ax.set(xlabel="in-plane pixel spacing (mm)", ylabel="series",
               title=f"Pixel spacing ({len(h) - len(pix)} unknown)")
    gaps = [s["slice_spacing_mm"] for s in h if s["slice_spacing_mm"] is not None]
    gap_ax.hist(gaps, bins=20, color="tab:brown")
    gap_ax.set(xlabel="slice spacing (mm)", ylabel="series", title=f"Slice spacing ({len(h) - len(gaps)} unknown)")
    mods = Counter(s["dicom_modality"] or "unknown" for s in h)
    mod_ax.bar(list(mods), list(mods.values()), color="tab:gray")
    mod_ax.set(xlabel="DICOM Modality tag", ylabel="series", title="DICOM modality (what test files carry)")
    for ax in (files_ax, slices_ax, pix_ax, gap_ax, mod_ax):
        integer_ticks(ax, "y")
    integer_ticks(matrix_ax, "x")
    return save_png(fig, path)


# --------------------------------------------------------------------------------------------------------------------
# The page


def _describe(values: list[float]) -> str:
    if not values:
        return "n/a"
    v = np.array(values, dtype=float)
    return f"median {np.median(v):.3g}, range {v.min():.3g}-{v.max():.3g}"


def run_eda(folder: str | Path, out: str | Path, max_series: int = 50) -> dict:
    """Write the EDA page of competition folder ``folder`` into ``out``; returns the numbers (also in eda.json)."""
    folder, out = Path(folder), Path(out)
    train = read_train_csv(folder)
    localizers = read_localizers(folder)
    if not out.parent.is_dir():
        raise EdaError(f"cannot write the EDA to {out}: its parent folder does not exist")
    out.mkdir(exist_ok=True)
    stats = label_stats(train)
    uids = train[ID_COL].cast(pl.Utf8).to_list()
    files = files_per_series(folder / "series", uids)
    headers = header_stats(folder / "series", uids, max_series)

    page = Page(f"Exploratory data analysis: {folder.name}")
    page.text(f"{stats['n_series']} series in train.csv, {stats['n_present']} with an aneurysm "
              f"({stats['n_present'] / max(stats['n_series'], 1):.1%}). Headers read from {len(headers)} series "
              f"(evenly sampled, --max-series {max_series}).")
    page.heading("Labels")
    page.table(["location", "positive series", "prevalence"],
               [[c, str(stats["location_positives"][c]), f"{stats['location_positives'][c] / stats['n_series']:.2%}"]
                for c in LOCATION_COLS])
    page.figure(plot_prevalence(stats, out / "prevalence.png"), "Series with an aneurysm per location")
    page.figure(plot_cooccurrence(stats, out / "cooccurrence.png"), "Location co-occurrence")
    page.table(["locations per positive series", "series"],
               [[str(k), str(v)] for k, v in stats["locations_per_positive_series"].items()])
    if localizers is not None:
        per_location = Counter(localizers["location"].to_list())
        page.text(f"train_localizers.csv: {localizers.height} points over {localizers[ID_COL].n_unique()} series; "
                  + ", ".join(f"{short_label(k)} {v}" for k, v in per_location.most_common()) + ".")
    page.heading("Patients and modalities")
    page.table(["modality", "series", "with aneurysm"],
               [[m, str(c), str(stats["modality_positives"][m])] for m, c in stats["modality_counts"].items()])
    page.figure(plot_demographics(stats, out / "demographics.png"), "Modality, age and sex distributions")
    page.heading("Series geometry")
    missing = [u for u, n in files.items() if n == 0]
    unreadable = {u: sorted(h["skipped_files"]) for u, h in headers.items() if h["skipped_files"]}
    page.text(f"Files per series: {_describe(list(files.values()))}; {len(missing)} series without files. "
              f"Sampled series: slices {_describe([h['slices'] for h in headers.values()])}; pixel spacing "
              f"{_describe([h['pixel_spacing_mm'] for h in headers.values() if h['pixel_spacing_mm']])} mm; slice "
              f"spacing {_describe([h['slice_spacing_mm'] for h in headers.values() if h['slice_spacing_mm']])} mm; "
              f"{sum(len(v) for v in unreadable.values())} files the loader skips; "
              f"{sum(h['geometry_assumed'] for h in headers.values())} sampled series with assumed geometry "
              f"(missing tags, the loader's fallbacks); {sum(h['error'] is not None for h in headers.values())} "
              "sampled series the loader cannot load.")
    page.figure(plot_geometry(files, headers, out / "geometry.png"),
                "Files, slices, matrix, pixel spacing, slice spacing and DICOM modality per series")
    md, html_path = page.write(out, "eda")
    numbers = {"data_dir": str(folder), **{k: v for k, v in stats.items() if k != "ages"},
               "age": {"n": len(stats["ages"]), "summary": _describe(stats["ages"])},
               "files_per_series": files, "headers": headers, "unreadable_files": unreadable,
               "series_without_files": missing, "figures": [p.name for p in page.figures()],
               "markdown": md.name, "html": html_path.name}
    atomic_write_text(out / "eda.json", json.dumps(numbers, indent=2))
    return numbers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="competition folder (default: KAGGLE_UTILS_DATA_DIR)")
    parser.add_argument("--out", required=True, help="output folder (created if its parent exists)")
    parser.add_argument("--max-series", type=int, default=50,
                        help="read DICOM headers of at most this many series (evenly sampled; 0 = all)")


def run(args: argparse.Namespace) -> int:
    numbers = run_eda(resolve_data_dir(args.data_dir), args.out, args.max_series)
    print(f"{numbers['n_series']} series, {numbers['n_present']} positive; "
          f"headers of {len(numbers['headers'])} series; page: {Path(args.out) / numbers['html']} "
          f"(figures: {', '.join(numbers['figures'])}; {fmt_number(len(numbers['series_without_files']))} "
          "series without files)")
    return 0
