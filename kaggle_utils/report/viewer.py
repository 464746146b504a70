"""``python -m kaggle_utils view``: look at a series with its aneurysm marked, or at a run's worst mistakes.

One series (``--series UID``): four panels of the canonical volume (``dicom.load_series``; rows/columns are voxel
indices, the aspect ratio follows the voxel spacing): the axial slice through a chosen point (``--point z,y,x`` in
voxels, else the first localizer, else the ROI centre), and maximum-intensity projections (MIP) along z (axial),
y (coronal) and x (sagittal). Localizer points from ``train_localizers.csv`` are mapped with ``Volume.voxel_of`` and
drawn as circles; the ROI crop box is the one ``preprocess.prepare_series`` cuts with the data config (dashed).
Display follows radiological convention: patient left on the image right, anterior at the top of axial images,
superior at the top of coronal / sagittal ones.

Gallery (``--gallery RUN``): the run's worst out-of-fold false positives (negatives with the highest Aneurysm Present
probability) and false negatives (positives with the lowest), each shown as an axial MIP with localizers and ROI box
plus one axial slice. The slice is where the model's per-slice score peaks when the run folder holds per-slice
scores (``oof_slices.parquet``: SeriesInstanceUID, roi_z (slice index on the ROI grid the model sees), score; the
peak ROI slice is mapped back to the source slice through the ROI affine); runs that do not write it (the run-folder
contract does not require it) get the slice through the first localizer (false negatives) or through the
ROI centre (false positives), and the tile says which.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from matplotlib.patches import Rectangle
from scipy.ndimage import binary_dilation

from kaggle_utils import localizers as localizer_csv
from kaggle_utils.config import DataConfig, load_config
from kaggle_utils.dicom import UnknownInstanceError, load_series
from kaggle_utils.errors import KitError
from kaggle_utils.paths import data_dir as resolve_data_dir
from kaggle_utils.paths import ensure_parent
from kaggle_utils.preprocess import apply_affine, prepare_series
from kaggle_utils.report.evaluate import read_labels, read_oof
from kaggle_utils.report.figures import discard, new_figure, save_png, short_label
from kaggle_utils.schema import ID_COL, PRESENT_COL, SOP_COL

SLICE_SCORES_FILE = "oof_slices.parquet"
MARKER_COLOURS = ("#ff3030", "#ffd000", "#30c0ff", "#ff60ff", "#60ff60")
# A localizer is drawn solid on the axial slice when it lies within this many mm of it (hollow/faint otherwise).
NEAR_SLICE_MM = 3.0
# CT display: slices in a vessel window (centre, width) HU; MIPs with bone suppressed, since the skull is brighter
# than contrast-filled vessels and would cover them in every projection.
CT_VESSEL_WINDOW_HU = (200.0, 700.0)
CT_BONE_HU = 700.0
BONE_DILATION_VOXELS = 2


class ViewerError(KitError, ValueError):
    """A series, run or point the viewer cannot show (named in the message)."""


@dataclass
class Marker:
    """A point drawn on the panels: ``voxel`` (z, y, x) in source voxel indices."""

    label: str
    voxel: tuple[float, float, float]


@dataclass
class ViewResult:
    """What was drawn: the axial slice index, every marker, and where each marker landed on each panel as
    (row, column) image coordinates (axial panels: (y, x); coronal: (z, x); sagittal: (z, y))."""

    path: Path | None
    slice_index: int
    markers: list[Marker]
    roi_box: np.ndarray | None  # [[z0, y0, x0], [z1, y1, x1]] in source voxel indices
    panel_points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------------
# Inputs


def series_localizers(data_dir: Path, uid: str) -> list[dict]:
    """``train_localizers.csv`` rows of one series as dicts with sop, x, y, frame, location (empty when none)."""
    rows = localizer_csv.series_localizers(localizer_csv.read_localizers(data_dir), uid)
    return [{"sop": r[SOP_COL], "x": r["x"], "y": r["y"], "frame": r["frame"], "location": r["location"]}
            for r in rows]


def localizer_markers(volume: Any, localizers: list[dict]) -> tuple[list[Marker], list[str]]:
    """Map localizer rows to source voxels with ``volume.voxel_of``; rows whose SOP is not in the loaded series
    (the competition data has such rows) are returned as notes instead of markers."""
    markers, notes = [], []
    for loc in localizers:
        try:
            voxel = volume.voxel_of(loc["sop"], loc["x"], loc["y"], loc["frame"])
        except UnknownInstanceError as exc:
            notes.append(f"{short_label(loc['location'])}: not drawn ({exc})")
            continue
        markers.append(Marker(loc["location"], tuple(float(v) for v in voxel)))
    return markers, notes


def roi_box_of(volume: Any, data_cfg: DataConfig) -> np.ndarray:
    """The ROI crop box of ``preprocess.prepare_series`` in source voxel indices ``[[z0, y0, x0], [z1, y1, x1]]``."""
    return np.asarray(prepared_of(volume, data_cfg).roi_box, dtype=np.float64)


def prepared_of(volume: Any, data_cfg: DataConfig) -> Any:
    """The series exactly as training and serving see it (``preprocess.prepare_series``)."""
    return prepare_series(volume, data_cfg)


def source_slice_of_roi_slice(prepared: Any, roi_z: float) -> int:
    """Source axial slice index through the centre of ROI slice ``roi_z`` (the model scores ROI-grid slices)."""
    _, ny, nx = prepared.image.shape[1:]
    lps = prepared.lps_of_voxel(np.array([roi_z, (ny - 1) / 2, (nx - 1) / 2], dtype=np.float64))
    source = apply_affine(np.linalg.inv(prepared.source_affine), lps)
    return int(np.clip(round(float(source[0])), 0, prepared.source_shape[0] - 1))


def parse_point(text: str) -> tuple[float, float, float]:
    """``"z,y,x"`` -> three floats (source voxel indices)."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ViewerError(f"--point {text!r}: expected three numbers z,y,x (voxel indices)")
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------------
# Drawing


def display_range(image: np.ndarray, modality: str = "MR", low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """Display window: the CT vessel window in HU, else percentiles of the image (a flat image gets a unit window)."""
    if modality == "CT":
        centre, width = CT_VESSEL_WINDOW_HU
        return centre - width / 2, centre + width / 2
    lo, hi = np.percentile(image, [low, high])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def projection_source(array: np.ndarray, modality: str) -> np.ndarray:
    """The array the MIPs project: CT with bone (>= CT_BONE_HU) set to air, so vessels are not hidden by the skull."""
    if modality != "CT":
        return array
    # Dilated, so the partial-volume rim of the skull (between brain and bone HU) goes with it.
    bone = binary_dilation(array >= CT_BONE_HU, iterations=BONE_DILATION_VOXELS)
    return np.where(bone, np.float32(-1000.0), array)


def _panel_geometry(volume: Any) -> dict[str, dict]:
    """For each panel: the volume axes shown as (rows, columns), and axis labels."""
    sz, sy, sx = (float(s) for s in volume.spacing)
    x_label = f"x voxel ({sx:.2f} mm) → patient left"
    y_label = f"y voxel ({sy:.2f} mm) → posterior"
    z_label = f"z voxel ({sz:.2f} mm) → superior"
    axial = {"axes": (1, 2), "aspect": sy / sx, "origin": "upper", "xlabel": x_label, "ylabel": y_label}
    return {
        "axial slice": axial,
        "axial MIP": axial,
        "coronal MIP": {"axes": (0, 2), "aspect": sz / sx, "origin": "lower", "xlabel": x_label, "ylabel": z_label},
        "sagittal MIP": {"axes": (0, 1), "aspect": sz / sy, "origin": "lower", "xlabel": y_label, "ylabel": z_label},
    }


def panel_images(array: np.ndarray, slice_index: int, modality: str) -> dict[str, np.ndarray]:
    """The axial slice and the three MIPs of a (z, y, x) volume (CT MIPs with bone suppressed)."""
    projected = projection_source(array, modality)
    return {"axial slice": array[slice_index], "axial MIP": projected.max(axis=0),
            "coronal MIP": projected.max(axis=1), "sagittal MIP": projected.max(axis=2)}


def draw_panel(ax, image: np.ndarray, geometry: dict, title: str, markers: list[Marker], roi_box: np.ndarray | None,
               slice_index: int | None, spacing_z: float, modality: str) -> list[tuple[float, float]]:
    """One panel with markers and the ROI box; returns the (row, column) where each marker was drawn."""
    lo, hi = display_range(image, modality)
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, aspect=geometry["aspect"], origin=geometry["origin"],
              interpolation="nearest")
    row_axis, col_axis = geometry["axes"]
    drawn = []
    for k, marker in enumerate(markers):
        row, col = marker.voxel[row_axis], marker.voxel[col_axis]
        drawn.append((row, col))
        near = slice_index is None or abs(marker.voxel[0] - slice_index) * spacing_z <= NEAR_SLICE_MM
        colour = MARKER_COLOURS[k % len(MARKER_COLOURS)]
        ax.plot(col, row, marker="o", markersize=20, markerfacecolor="none", markeredgecolor=colour,
                markeredgewidth=2 if near else 1, alpha=1.0 if near else 0.5, linestyle="none",
                label=f"{short_label(marker.label)} (z={marker.voxel[0]:.0f})" + ("" if near else ", off slice"))
    if roi_box is not None:
        (r0, c0), (r1, c1) = roi_box[:, [row_axis, col_axis]]
        inside = slice_index is None or roi_box[0, 0] <= slice_index <= roi_box[1, 0]
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="#00ff80",
                               linestyle="--" if inside else ":", linewidth=1.5, label="ROI crop box"))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(geometry["xlabel"], fontsize=8)
    ax.set_ylabel(geometry["ylabel"], fontsize=8)
    ax.grid(False)
    return drawn


def choose_slice(volume: Any, point: tuple[float, float, float] | None, markers: list[Marker],
                 roi_box: np.ndarray | None) -> tuple[int, str]:
    """Axial slice index to show and why: the given point, else the first marker, else the ROI centre, else the
    middle slice."""
    n = volume.array.shape[0]
    if point is not None:
        z, why = point[0], "the chosen point"
    elif markers:
        z, why = markers[0].voxel[0], "the first localizer"
    elif roi_box is not None:
        z, why = roi_box[:, 0].mean(), "the ROI centre"
    else:
        z, why = (n - 1) / 2, "the middle slice"
    index = int(round(z))
    if not 0 <= index < n:
        raise ViewerError(f"series {getattr(volume, 'series_uid', '?')}: slice {index} ({why}) is outside 0..{n - 1}")
    return index, why


def render_volume(volume: Any, out: str | Path | None, markers: list[Marker], roi_box: np.ndarray | None = None,
                  point: tuple[float, float, float] | None = None, title: str = "",
                  notes: list[str] = ()) -> ViewResult:
    """Draw the four panels of a loaded volume; ``out=None`` skips writing (the result still lists positions)."""
    all_markers = list(markers) + ([Marker("chosen point", tuple(point))] if point is not None else [])
    slice_index, why = choose_slice(volume, point, markers, roi_box)
    images = panel_images(np.asarray(volume.array), slice_index, volume.modality)
    geometry = _panel_geometry(volume)
    fig, axes = new_figure(18, 5.4, ncols=4)
    positions = {}
    for ax, (name, image) in zip(axes, images.items()):
        title_text = f"axial slice z={slice_index} (through {why})" if name == "axial slice" else name
        if name != "axial slice" and volume.modality == "CT":
            title_text += f" (bone >= {CT_BONE_HU:.0f} HU removed)"
        positions[name] = draw_panel(ax, image, geometry[name], title_text, all_markers, roi_box,
                                     slice_index if name == "axial slice" else None, float(volume.spacing[0]),
                                     volume.modality)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.suptitle(title or f"series {getattr(volume, 'series_uid', '')} ({volume.modality}, "
                 f"{'x'.join(str(s) for s in volume.array.shape)} voxels z,y,x)", fontsize=11)
    if notes:
        fig.text(0.01, 0.005, "; ".join(notes)[:250], fontsize=7, color="dimgray")
    path = None
    if out is not None:
        path = save_png(fig, Path(out), rect=(0, 0.08 if handles else 0.02, 1, 0.95))
    else:
        discard(fig)
    return ViewResult(path, slice_index, all_markers, roi_box, positions)


def render_series(data_dir: str | Path, uid: str, out: str | Path | None,
                  point: tuple[float, float, float] | None = None, data_cfg: DataConfig | None = None,
                  show_roi: bool = True) -> ViewResult:
    """Load ``DATA/series/<uid>``, map its localizers, find its ROI box and draw it (see ``render_volume``)."""
    data_dir = Path(data_dir)
    folder = data_dir / "series" / uid
    if not folder.is_dir():
        raise ViewerError(f"series folder {folder} does not exist")
    volume = load_series(folder)
    markers, notes = localizer_markers(volume, series_localizers(data_dir, uid))
    roi_box = roi_box_of(volume, data_cfg or DataConfig()) if show_roi else None
    return render_volume(volume, out, markers, roi_box, point, notes=[*notes, *getattr(volume, "notes", [])])


# --------------------------------------------------------------------------------------------------------------------
# Gallery of the worst out-of-fold mistakes


def worst_mistakes(oof: pl.DataFrame, labels: pl.DataFrame, n: int) -> tuple[list[dict], list[dict]]:
    """The ``n`` negatives with the highest and the ``n`` positives with the lowest Aneurysm Present probability."""
    joined = oof.select(ID_COL, pl.col(PRESENT_COL).alias("prob")).join(
        labels.select(ID_COL, pl.col(PRESENT_COL).alias("truth")), on=ID_COL, how="inner")
    false_pos = joined.filter(pl.col("truth") == 0).sort("prob", descending=True).head(n)
    false_neg = joined.filter(pl.col("truth") == 1).sort("prob").head(n)
    return false_pos.to_dicts(), false_neg.to_dicts()


def peak_slices(run: Path) -> dict[str, int]:
    """Series -> ROI-grid slice index of the highest per-slice score, from ``RUN/oof_slices.parquet`` if present."""
    path = run / SLICE_SCORES_FILE
    if not path.is_file():
        return {}
    scores = pl.read_parquet(path)
    missing = [c for c in (ID_COL, "roi_z", "score") if c not in scores.columns]
    if missing:
        raise ViewerError(f"{path} lacks columns {missing}")
    best = scores.sort("score", descending=True).unique(ID_COL, keep="first")
    return dict(zip(best[ID_COL].to_list(), (int(z) for z in best["roi_z"].to_list())))


def run_data_config(run: Path) -> DataConfig:
    """The data config a run was trained with (its config.yaml), else the defaults."""
    path = run / "config.yaml"
    return load_config(path).data if path.is_file() else DataConfig()


def render_gallery(run: str | Path, labels_path: str | Path, data_dir: str | Path, out: str | Path,
                   n: int = 3) -> dict:
    """Tiles of the worst false positives and false negatives of ``run``; returns what was shown per tile."""
    run, data_dir = Path(run), Path(data_dir)
    false_pos, false_neg = worst_mistakes(read_oof(run), read_labels(labels_path), n)
    cases = [("false positive", c) for c in false_pos] + [("false negative", c) for c in false_neg]
    if not cases:
        raise ViewerError(f"run {run}: no out-of-fold series to show")
    peaks, data_cfg = peak_slices(run), run_data_config(run)
    fig, axes = new_figure(8, 4.2 * len(cases), ncols=2, nrows=len(cases))
    tiles = []
    for k, (kind, case) in enumerate(cases):
        uid = case[ID_COL]
        volume = load_series(data_dir / "series" / uid)
        markers, notes = localizer_markers(volume, series_localizers(data_dir, uid))
        prepared = prepared_of(volume, data_cfg)
        roi_box = np.asarray(prepared.roi_box, dtype=np.float64)
        if uid in peaks:
            slice_index = source_slice_of_roi_slice(prepared, peaks[uid])
            why = f"peak per-slice score (ROI slice {peaks[uid]})"
        else:
            slice_index, why = choose_slice(volume, None, markers, roi_box)
            why = f"{why} (no per-slice scores)"
        images = panel_images(np.asarray(volume.array), slice_index, volume.modality)
        geometry = _panel_geometry(volume)
        rank = "highest-scored negative" if kind == "false positive" else "lowest-scored positive"
        header = f"{kind} ({rank}, {volume.modality}): p={case['prob']:.3f}"
        draw_panel(axes[2 * k], images["axial MIP"], geometry["axial MIP"], f"{header}\naxial MIP, {uid[-24:]}",
                   markers, roi_box, None, float(volume.spacing[0]), volume.modality)
        draw_panel(axes[2 * k + 1], images["axial slice"], geometry["axial slice"],
                   f"slice z={slice_index}: {why}", markers, roi_box, slice_index, float(volume.spacing[0]),
                   volume.modality)
        handles, labels = axes[2 * k + 1].get_legend_handles_labels()
        if handles:
            axes[2 * k + 1].legend(handles, labels, fontsize=7, loc="lower right", markerscale=0.5)
        tiles.append({"kind": kind, ID_COL: uid, "prob": case["prob"], "truth": case["truth"],
                      "slice": slice_index, "slice_from": why, "markers": len(markers), "notes": notes})
    fig.suptitle(f"Worst out-of-fold mistakes of {run.name} (Aneurysm Present)", fontsize=12)
    save_png(fig, ensure_parent(out), rect=(0, 0, 1, 0.98))
    return {"path": str(out), "tiles": tiles}


# --------------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="competition folder (default: KAGGLE_UTILS_DATA_DIR)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--series", help="SeriesInstanceUID to render")
    what.add_argument("--gallery", metavar="RUN", help="run folder: render its worst OOF false positives/negatives")
    parser.add_argument("--out", required=True, help="output PNG file")
    parser.add_argument("--point", help="z,y,x voxel indices of the point the axial slice goes through")
    parser.add_argument("--config", help="experiment YAML whose data section places the ROI box (default: defaults)")
    parser.add_argument("--no-roi", action="store_true", help="do not compute / draw the ROI box")
    parser.add_argument("--labels", help="labels for --gallery (default: DATA/train.csv)")
    parser.add_argument("-n", type=int, default=3, help="cases of each kind in the gallery")


def run(args: argparse.Namespace) -> int:
    folder = resolve_data_dir(args.data_dir)
    out = ensure_parent(args.out)
    if args.gallery:
        shown = render_gallery(args.gallery, args.labels or folder / "train.csv", folder, out, args.n)
        for tile in shown["tiles"]:
            print(f"{tile['kind']}: {tile[ID_COL]} p={tile['prob']:.3f} slice {tile['slice']} ({tile['slice_from']})")
        print(f"gallery: {out}")
        return 0
    data_cfg = load_config(args.config).data if args.config else DataConfig()
    point = parse_point(args.point) if args.point else None
    result = render_series(folder, args.series, out, point, data_cfg, show_roi=not args.no_roi)
    for marker, (row, col) in zip(result.markers, result.panel_points["axial slice"]):
        print(f"{marker.label}: voxel z,y,x = {', '.join(f'{v:.1f}' for v in marker.voxel)}")
    print(f"axial slice {result.slice_index}; image: {result.path}")
    return 0
