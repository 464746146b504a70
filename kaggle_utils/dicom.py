"""One DICOM series -> one canonically oriented volume, or a ``SeriesError`` that names the series and the reason.

``load_series(series_dir, workers=1) -> Volume``. The array is float32 ``(z, y, x)`` with indices increasing towards
patient Superior, Posterior and Left whatever the acquisition plane (axes permuted and flipped to the nearest patient
axes, never resampled); ``affine`` maps voxel ``(z, y, x, 1)`` to patient LPS mm exactly, obliqueness included.

Steps: read every file's headers (pixel data deferred) -> skip files that are not usable images (junk, truncated,
no pixel data, non-image objects, undecodable transfer syntax) with a note -> keep one SeriesInstanceUID -> fill
documented geometry fallbacks (``dicom_geometry``) -> keep the majority geometry (scouts dropped) -> sort by
ImagePositionPatient along the slice normal, keep the first frame at each position (duplicates, 4D) -> decode only
the kept frames (in processes for compressed series when ``workers > 1``; uncompressed single-frame files are read
straight from disk into their row of the volume and rescaled there), retrying other decoders on failure ->
rescale, invert MONOCHROME1 -> permute/flip to canonical.

Decisions: a folder with one image slice gives a 1-slice volume with a note; several frames all at one position is a
``SeriesError``; two series in one folder keep the folder's own SeriesInstanceUID (else the one with most frames)
with a note; at each position the first frame in acquisition order (TemporalPositionIndex / AcquisitionNumber /
InstanceNumber) is kept, so a 4D series becomes its first time point; files that fail to decode with every installed
decoder are dropped with a note while at least one file decodes; a file that is not a usable image (junk, truncated,
no pixel data, SEG/SR/RT objects, a transfer syntax without decoder) is skipped with a note, and when no file is
usable the ``SeriesError`` lists why per file. Modalities other than CT and MR load as they are, with a note. Any
unexpected failure inside the loader is also raised as a ``SeriesError`` (chained to the original exception).

``workers > 1`` decodes compressed series in that many processes (fork where available; a persistent pool from
``decode_pool`` when one is running, as at inference); uncompressed and RLE series (cheaper to decode than to ship
back) and calls from daemon processes (e.g. DataLoader workers) always decode in this process. A decoder that fails
on a file is retried with the next installed one, and the fallback is noted on the volume.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from kaggle_utils.decode_pool import persistent_executor
from kaggle_utils.dicom_decode import (
    DecodeError,
    DecodeTask,
    PoolUnavailable,
    decode_dataset,
    decode_in_pool,
    read_native_into,
    use_pool,
)
from kaggle_utils.dicom_geometry import (
    GeometryError,
    acquisition_affine,
    canonical_transform,
    fill_fallbacks,
    majority_geometry,
    order_slices,
    pick_series,
    plane_name,
    reorientation_note,
    slice_step,
    to_canonical,
)
from kaggle_utils.dicom_headers import PIXEL_DATA_TAG, FrameInfo, UnusableFile, frames_of
from kaggle_utils.errors import KitError

__all__ = ["HeaderGeometry", "Volume", "SeriesError", "UnknownInstanceError", "load_series", "read_header_geometry",
           "series_files"]

SKIP_NAMES = {"DICOMDIR"}
MAX_LISTED_FILES = 3
MAX_VOXELS = 2**31  # 8 GiB of float32: far beyond any real head series, so only corrupt headers get here


class SeriesError(KitError):
    """A series (folder or file) that cannot become a volume; the message names it and says why."""


class UnknownInstanceError(SeriesError, KeyError):
    """``voxel_of`` was asked about a SOPInstanceUID (or frame) that is not in the series."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


FrameKey = tuple[str, "int | None"]


@dataclass
class Volume:
    """A loaded series in the canonical orientation (see module docstring).

    ``slice_sources[i]`` is the ``(SOPInstanceUID, frame)`` at index ``i`` along canonical axis ``slice_axis``
    (0 = z for axial acquisitions, 1 = y for coronal, 2 = x for sagittal); ``frame`` is None for single-frame files.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    modality: str
    series_uid: str
    slice_axis: int
    slice_sources: list[FrameKey]
    notes: list[str]
    source: str
    # (sop, frame) -> 3x3 [position, row direction * column spacing, column direction * row spacing] for every
    # readable frame of the series, kept or not, so a localizer on a dropped time point still maps.
    frame_geometry: dict[FrameKey, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    def voxel_to_lps(self, voxels) -> np.ndarray:
        """``(n, 3)`` canonical voxel ``(z, y, x)`` -> ``(n, 3)`` LPS mm."""
        v = np.atleast_2d(np.asarray(voxels, dtype=np.float64))
        return v @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_voxel(self, points) -> np.ndarray:
        """``(n, 3)`` LPS mm -> ``(n, 3)`` canonical voxel ``(z, y, x)`` (fractional)."""
        p = np.atleast_2d(np.asarray(points, dtype=np.float64))
        return np.linalg.solve(self.affine[:3, :3], (p - self.affine[:3, 3]).T).T

    def frame_key(self, sop_uid: str, frame: int | None = None) -> FrameKey:
        """The stored key for a localizer's SOPInstanceUID and optional frame (0 accepted for single-frame files)."""
        if (sop_uid, frame) in self.frame_geometry:
            return (sop_uid, frame)
        keys = [k for k in self.frame_geometry if k[0] == sop_uid]
        if frame in (None, 0) and len(keys) == 1:
            return keys[0]
        if frame is None and len(keys) > 1:
            raise UnknownInstanceError(f"{self.source}: SOPInstanceUID {sop_uid} is multi-frame; pass its frame")
        raise UnknownInstanceError(f"{self.source}: no image frame SOPInstanceUID={sop_uid} frame={frame}")

    def voxel_of(self, sop_uid: str, x: float, y: float, frame: int | None = None) -> tuple[float, float, float]:
        """Pixel (column ``x``, row ``y``) of an instance/frame -> canonical ``(z, y, x)`` voxel, via patient LPS.

        The point goes through that frame's own position and orientation, then the inverse affine, so frames that
        were not kept (a later time point, a duplicate, a scout) map too; in an unevenly spaced series it lands
        where the affine places its LPS point."""
        geometry = self.frame_geometry[self.frame_key(sop_uid, frame)]
        lps = geometry[0] + float(x) * geometry[1] + float(y) * geometry[2]
        z, yy, xx = self.lps_to_voxel(lps)[0]
        return (float(z), float(yy), float(xx))


def series_files(series_dir: Path) -> list[Path]:
    """The candidate files of a series: a folder's regular files (not recursive, DICOMDIR skipped) or one file."""
    if series_dir.is_file():
        return [series_dir]
    return sorted(p for p in series_dir.iterdir() if p.is_file() and p.name not in SKIP_NAMES)


def _summarise_unusable(unusable: dict[str, str]) -> str:
    by_reason: dict[str, list[str]] = defaultdict(list)
    for path, reason in unusable.items():
        by_reason[reason].append(Path(path).name)
    parts = []
    for reason, names in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        listed = ", ".join(names[:MAX_LISTED_FILES]) + (", ..." if len(names) > MAX_LISTED_FILES else "")
        parts.append(f"{len(names)} x {reason} ({listed})")
    return "; ".join(parts)


def _read_headers(files: list[Path]) -> tuple[list[FrameInfo], dict[str, Dataset], dict[str, str]]:
    frames: list[FrameInfo] = []
    datasets: dict[str, Dataset] = {}
    unusable: dict[str, str] = {}
    for path in files:
        try:
            file_frames, ds = frames_of(path)
        except UnusableFile as exc:
            unusable[str(path)] = str(exc)
            continue
        frames.extend(file_frames)
        datasets[str(path)] = ds
    return frames, datasets, unusable


def _decode_tasks(ordered: list[FrameInfo]) -> tuple[list[DecodeTask], list[list[int]]]:
    """One task per file; ``slots[t]`` lists the ordered-frame indices that task ``t`` fills, in frame order."""
    by_path: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(ordered):
        by_path[f.path].append(i)
    tasks, slots = [], []
    for path, idx in by_path.items():
        first = ordered[idx[0]]
        if first.frame is None:
            tasks.append(DecodeTask(path, None, first.n_frames_in_file))
        else:
            idx = sorted(idx, key=lambda i: ordered[i].frame)
            tasks.append(DecodeTask(path, tuple(ordered[i].frame for i in idx), first.n_frames_in_file))
        slots.append(idx)
    return tasks, slots


def _fused_rescale(frames: list[FrameInfo]) -> tuple[np.ndarray, np.ndarray, bool, bool] | None:
    """Per-frame float32 slopes and intercepts and whether ``_rescale_in_place`` would multiply / add, for applying
    the rescale to each row while it is still in cache. None when a slope is not positive: only then could a row
    hold -0.0, the one value that ``x + 0`` changes (``x * 1`` changes none), so with positive slopes the result
    cannot depend on which frames finally stay (files that fail to decode are dropped after decoding)."""
    slopes = np.array([f.slope for f in frames], dtype=np.float32)
    intercepts = np.array([f.intercept for f in frames], dtype=np.float32)
    if np.any(slopes <= 0):
        return None
    return slopes, intercepts, bool(np.any(slopes != 1.0)), bool(np.any(intercepts != 0.0))


def _decode_into(series: str, ordered: list[FrameInfo], datasets: dict[str, Dataset], workers: int,  # noqa: C901
                 notes: list[str]) -> tuple[np.ndarray, dict[str, str], np.ndarray]:
    """Stored values as float32 ``(k, r, c)`` in ``ordered`` order, the failure reason per file that did not
    decode (its rows are left undefined), and which rows already hold rescaled values (read by the direct path)."""
    # C901: one branch per decode path (direct RLE, direct uncompressed, pool, pydicom fallback), kept flat to read
    out = np.empty((len(ordered), ordered[0].rows, ordered[0].cols), dtype=np.float32)
    rescaled = np.zeros(len(ordered), dtype=bool)
    fused = _fused_rescale(ordered)
    tasks, slots = _decode_tasks(ordered)
    failures: dict[str, str] = {}
    done: set[int] = set()

    def rescale_row(i: int) -> None:
        if fused is None:
            return
        slopes, intercepts, scale, shift = fused
        if scale:
            out[i] *= slopes[i]
        if shift:
            out[i] += intercepts[i]
        rescaled[i] = True

    def place(t: int, arr: np.ndarray | None, error: str | None) -> None:
        done.add(t)
        idx = slots[t]
        if arr is None or arr.shape != (len(idx), *out.shape[1:]):
            failures[tasks[t].path] = error or f"decoded shape {arr.shape} does not match the header"
            return
        # Row by row, rescaled while the row is still in cache (a whole-volume rescale pass afterwards cost about
        # as much as the conversion itself on RLE); same float32 operations as ``_rescale_in_place``.
        for k, i in enumerate(idx):
            out[i] = arr[k]
            rescale_row(i)

    fallbacks: list[str] = []
    if use_pool(tasks, {f.transfer_syntax for f in ordered}, workers):
        try:
            for t, arr, error in decode_in_pool(tasks, workers, fallbacks, executor=persistent_executor(workers)):
                place(t, arr, error)
        except PoolUnavailable as exc:
            notes.append(f"process pool unavailable ({exc}); decoded in this process")
        except DecodeError as exc:
            raise SeriesError(f"{series}: {exc}") from exc
    scratch: dict = {}
    for t, task in enumerate(tasks):
        if t in done:
            continue
        ds = datasets[task.path]
        try:
            # Uncompressed single-frame files (the common case) are read straight into their row of ``out``.
            ts = ordered[slots[t][0]].transfer_syntax
            if len(slots[t]) == 1 and read_native_into(ds, task, ts, out[slots[t][0]], scratch):
                done.add(t)
                rescale_row(slots[t][0])
            else:
                place(t, decode_dataset(ds, task, fallbacks), None)
        except DecodeError as exc:
            place(t, None, str(exc))
        ds.pop(PIXEL_DATA_TAG, None)  # the encoded bytes are no longer needed
    if fallbacks:
        notes.append(f"decoder fallback on {len(fallbacks)} file(s): " + " | ".join(fallbacks[:MAX_LISTED_FILES])
                     + (" | ..." if len(fallbacks) > MAX_LISTED_FILES else ""))
    return out, failures, rescaled


def _rescale_in_place(frames: list[FrameInfo], out: np.ndarray, rescaled: np.ndarray | None = None) -> list[str]:
    """Apply rescale per frame and invert MONOCHROME1 frames (min + max - value) in ``out`` ``(k, r, c)``; rows
    flagged in ``rescaled`` already hold rescaled values."""
    slopes = np.array([f.slope for f in frames], dtype=np.float32)
    intercepts = np.array([f.intercept for f in frames], dtype=np.float32)
    scale, shift = bool(np.any(slopes != 1.0)), bool(np.any(intercepts != 0.0))
    if rescaled is None or not rescaled.any():
        if scale:
            out *= slopes[:, None, None]
        if shift:
            out += intercepts[:, None, None]
    else:
        for i in np.flatnonzero(~rescaled):
            if scale:
                out[i] *= slopes[i]
            if shift:
                out[i] += intercepts[i]
    notes = []
    mono1 = np.array([f.photometric == "MONOCHROME1" for f in frames])
    if mono1.any():
        lo, hi = float(out.min()), float(out.max())
        out[mono1] = (lo + hi) - out[mono1]
        notes.append(f"MONOCHROME1: {int(mono1.sum())} frame(s) inverted (min + max - value)")
    if any(f.samples != 1 for f in frames):
        notes.append("colour pixels converted to luminance")
    return notes


def _modality(frames: list[FrameInfo]) -> tuple[str, list[str]]:
    values = [f.modality for f in frames if f.modality]
    if not values:
        guess = "CT" if frames[0].intercept <= -500 else "MR"
        return guess, [f"no Modality tag: assumed {guess} from the rescale intercept"]
    modality = max(set(values), key=values.count)
    return modality, ([] if modality in ("CT", "MR") else [f"modality {modality} is neither CT nor MR"])


def _geometry_table(frames: list[FrameInfo]) -> dict[FrameKey, np.ndarray]:
    table = {}
    for f in frames:
        if f.position is None or f.orientation is None or f.pixel_spacing is None:
            continue
        row_mm, col_mm = f.pixel_spacing
        table[f.key] = np.stack([f.position, f.orientation[:3] * col_mm, f.orientation[3:] * row_mm])
    return table


def _assemble(series: str, candidates: list[FrameInfo], datasets: dict[str, Dataset], workers: int, notes: list[str]):
    """Order, decode and stack the kept frames; re-order without files that fail to decode."""
    try:
        ordered, order_notes = order_slices(candidates)
    except GeometryError as exc:
        raise SeriesError(f"{series}: {exc}") from exc
    array, failures, rescaled = _decode_into(series, ordered, datasets, workers, notes)
    if failures:
        if len(failures) == len({f.path for f in ordered}):
            raise SeriesError(f"{series}: no kept file could be decoded: {_summarise_unusable(failures)}")
        notes.append(f"dropped {len(failures)} file(s) that no decoder could read: {_summarise_unusable(failures)}")
        row_of = {f.key: i for i, f in enumerate(ordered)}
        try:
            ordered, order_notes = order_slices([f for f in ordered if f.path not in failures])
        except GeometryError as exc:
            raise SeriesError(f"{series}: {exc} (after dropping undecodable files)") from exc
        rows = [row_of[f.key] for f in ordered]
        array, rescaled = array[rows], rescaled[rows]
    notes.extend(order_notes)
    return ordered, array, rescaled


def load_series(series_dir: str | os.PathLike, *, workers: int = 1) -> Volume:
    """Load one series folder (or a single DICOM file) as a canonical ``Volume``; raises only ``SeriesError``."""
    series = Path(series_dir)
    try:
        return _load(series, workers)
    except (SeriesError, MemoryError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - converted, not swallowed (chained): callers get one exception type;
        # BaseException because Rust-backed decoders raise pyo3's PanicException, which is not an Exception
        raise SeriesError(f"{series}: unexpected {type(exc).__name__} while loading: {exc}") from exc


def _header_frames(series: Path) -> tuple[list[FrameInfo], list[FrameInfo], dict[str, Dataset], dict[str, str],
                                          list[str]]:
    """The header half of loading: (every frame of the kept series, the majority-geometry candidates, datasets,
    unusable file -> reason, notes); fallbacks filled, nothing decoded."""
    if not series.exists():
        raise SeriesError(f"{series}: no such folder or file")
    files = series_files(series)
    if not files:
        raise SeriesError(f"{series}: empty folder (no files)")
    frames, datasets, unusable = _read_headers(files)
    from kaggle_utils.dicom_mosaic import unpack_mosaics  # here: it imports this module's SeriesError

    frames, notes = unpack_mosaics(frames, datasets)  # Siemens MOSAIC files -> one frame per tile, or SeriesError
    if not frames:
        raise SeriesError(f"{series}: no usable image in {len(files)} file(s): {_summarise_unusable(unusable)}")
    if unusable:
        notes.append(f"skipped {len(unusable)} of {len(files)} file(s): {_summarise_unusable(unusable)}")
    frames, series_notes = pick_series(frames, series.name)
    notes.extend(series_notes)
    notes.extend(fill_fallbacks(frames))
    candidates, geometry_notes = majority_geometry(frames)
    notes.extend(geometry_notes)
    if any(f.position is None for f in candidates):
        raise SeriesError(f"{series}: frames have orientation but no ImagePositionPatient, so they cannot be placed")
    return frames, candidates, datasets, unusable, notes


def _canonical_geometry(ordered: list[FrameInfo], notes: list[str]):
    """(affine, perm, flips, step) of the ordered slices: the acquisition affine from the median step vector
    between slices, mapped to the canonical grid."""
    step, step_notes = slice_step(ordered)
    notes.extend(step_notes)
    affine_acq = acquisition_affine(ordered[0], step)
    perm, flips, index_map = canonical_transform(affine_acq, (len(ordered), ordered[0].rows, ordered[0].cols))
    return affine_acq @ index_map, perm, flips, step


def _load(series: Path, workers: int) -> Volume:
    frames, candidates, datasets, _, notes = _header_frames(series)
    n_voxels = len({f.position.round(2).tobytes() for f in candidates}) * candidates[0].rows * candidates[0].cols
    if n_voxels > MAX_VOXELS:
        raise SeriesError(f"{series}: {n_voxels} voxels is more than the {MAX_VOXELS} a series may have")
    ordered, array_acq, rescaled = _assemble(str(series), candidates, datasets, workers, notes)

    affine, perm, flips, _ = _canonical_geometry(ordered, notes)
    notes.extend(_rescale_in_place(ordered, array_acq, rescaled))
    array = to_canonical(array_acq, perm, flips)
    note = reorientation_note(perm, flips, ordered[0].orientation)
    if note:
        notes.append(note)
    slice_axis = perm.index(0)
    sources = [f.key for f in ordered]
    if flips[slice_axis]:
        sources = sources[::-1]
    modality, modality_notes = _modality(ordered)
    notes.extend(modality_notes)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return Volume(array=array, spacing=spacing, affine=affine, modality=modality,
                  series_uid=ordered[0].series_uid or series.name, slice_axis=slice_axis, slice_sources=sources,
                  notes=notes, source=str(series), frame_geometry=_geometry_table(frames))


@dataclass
class HeaderGeometry:
    """The geometry ``load_series`` gives a series, from its headers alone (no pixel decoded; a file that then fails
    to decode every way is the one thing this cannot foresee). Spacings in mm."""

    frames: int  # image frames in the usable files of the kept series (scouts, duplicates, time points included)
    slices: int  # slices of the volume: one per position, majority geometry only
    rows: int
    cols: int
    modality: str  # the DICOM Modality the loader settles on (CT / MR)
    plane: str  # acquisition plane: axial / coronal / sagittal
    pixel_spacing: tuple[float, float]  # (between rows, between columns) of the kept frames, fallback included
    slice_spacing: float  # distance between consecutive kept slices (the median step)
    spacing: tuple[float, float, float]  # the volume's canonical (z, y, x) spacing, = Volume.spacing
    unusable: dict[str, str]  # file name -> why the loader skips it
    notes: list[str]  # the loader's notes on these headers (fallbacks, dropped frames, uneven spacing, ...)


def read_header_geometry(series_dir: str | os.PathLike) -> HeaderGeometry:
    """``load_series``'s geometry of a series from its headers (same reading, fallbacks and slice selection);
    raises only ``SeriesError``. For reports (EDA) that must show what the loader uses without decoding pixels."""
    series = Path(series_dir)
    try:
        frames, candidates, _, unusable, notes = _header_frames(series)
        try:
            ordered, order_notes = order_slices(candidates)
        except GeometryError as exc:
            raise SeriesError(f"{series}: {exc}") from exc
        notes.extend(order_notes)
        affine, _, _, step = _canonical_geometry(ordered, notes)
        modality, modality_notes = _modality(ordered)
    except (SeriesError, MemoryError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except Exception as exc:  # noqa: BLE001 - converted, not swallowed (chained), as in load_series
        raise SeriesError(f"{series}: unexpected {type(exc).__name__} while reading headers: {exc}") from exc
    first = ordered[0]
    return HeaderGeometry(
        frames=len(frames), slices=len(ordered), rows=first.rows, cols=first.cols, modality=modality,
        plane=plane_name(first.orientation), pixel_spacing=tuple(float(v) for v in first.pixel_spacing),
        slice_spacing=float(np.linalg.norm(step)),
        spacing=tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)),  # type: ignore[arg-type]
        unusable={Path(k).name: v for k, v in unusable.items()}, notes=[*notes, *modality_notes])
