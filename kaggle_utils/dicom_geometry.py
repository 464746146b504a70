"""Series geometry for the DICOM loader: pick the series and its majority geometry, fill documented fallbacks, order
slices along the normal, reduce 4D to one time point, and map the acquisition grid to the canonical orientation.

Conventions: an acquisition grid is indexed ``(k, r, c)`` = (slice, row, column). ``ImageOrientationPatient`` gives
the row direction (the way column index ``c`` grows) then the column direction (the way row index ``r`` grows);
``PixelSpacing`` is (between rows, between columns). The canonical grid ``(z, y, x)`` increases towards patient
Superior, Posterior, Left (LPS axes 2, 1, 0).

Fallback rules (each use is written to the volume's notes):
- no orientation: axial, ``ImageOrientationPatient = (1, 0, 0, 0, 1, 0)`` (rows run to patient Left, columns to
  Posterior);
- no pixel spacing: ``max(0.5, 220 / max(Rows, Columns))`` mm, i.e. 0.5 mm for a 512 matrix (the value the
  competition's winners assumed) and a 220 mm head field of view for smaller matrices;
- no slice positions: frames (or files, in acquisition order) stacked along the slice normal, towards Superior for
  the assumed axial orientation, every ``SpacingBetweenSlices``, else ``SliceThickness``, else 5 mm when there are at
  most 80 slices (a 2D stack) and 0.55 mm otherwise (a 3D acquisition), centred on the LPS origin (a multi-frame file
  with a top-level ``ImagePositionPatient``, orientation and slice spacing is stacked from that position instead);
- one slice: z spacing from ``SpacingBetweenSlices``, else ``SliceThickness``, else 1 mm.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

import numpy as np

from kaggle_utils.dicom_headers import FrameInfo

AXIAL_ORIENTATION = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
FALLBACK_FOV_MM = 220.0
FALLBACK_MIN_INPLANE_MM = 0.5
FALLBACK_THIN_SLICE_MM = 0.55
FALLBACK_THICK_SLICE_MM = 5.0
FALLBACK_THICK_MAX_SLICES = 80
SINGLE_SLICE_DEFAULT_MM = 1.0
# Positions closer than this along the normal are the same slice position (DS strings carry ~1e-4 mm or coarser).
SAME_POSITION_MM = 0.01
# Orientation cosines / relative pixel spacing within these tolerances belong to the majority geometry.
ORIENTATION_TOL = 0.02
SPACING_REL_TOL = 0.01
# A gap between slices that differs from the median step by more than this fraction is noted as uneven.
UNEVEN_GAP_FRACTION = 0.1
# Canonical axis j (z, y, x) points along this LPS axis (S = 2, P = 1, L = 0).
CANONICAL_TO_LPS_AXIS = (2, 1, 0)


class GeometryError(Exception):
    """The frames cannot form a volume; ``str()`` is the reason (the loader wraps it in a ``SeriesError``)."""


def fallback_inplane_spacing(rows: int, cols: int) -> float:
    return max(FALLBACK_MIN_INPLANE_MM, FALLBACK_FOV_MM / max(rows, cols))


def fallback_slice_spacing(n_slices: int) -> float:
    return FALLBACK_THICK_SLICE_MM if n_slices <= FALLBACK_THICK_MAX_SLICES else FALLBACK_THIN_SLICE_MM


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def pick_series(frames: list[FrameInfo], folder_name: str) -> tuple[list[FrameInfo], list[str]]:
    """Keep one SeriesInstanceUID: the folder's own name when it is one of them, else the one with most frames."""
    by_uid: dict[str, list[FrameInfo]] = defaultdict(list)
    for f in frames:
        by_uid[f.series_uid].append(f)
    if len(by_uid) == 1:
        return frames, []
    if folder_name in by_uid:
        keep, why = folder_name, "the folder's name"
    else:
        keep = max(by_uid, key=lambda uid: (len(by_uid[uid]), uid))
        why = "the most frames"
    others = ", ".join(f"{uid or '<no uid>'} ({len(v)} frames)" for uid, v in sorted(by_uid.items()) if uid != keep)
    return by_uid[keep], [f"folder holds {len(by_uid)} series; kept {keep} ({why}), dropped {others}"]


def fill_fallbacks(frames: list[FrameInfo]) -> list[str]:
    """Fill missing orientation, pixel spacing and positions per the module's documented rules; return notes."""
    notes: list[str] = []
    missing_orient = [f for f in frames if f.orientation is None]
    if missing_orient and len(missing_orient) == len(frames):
        for f in missing_orient:
            f.orientation = AXIAL_ORIENTATION.copy()
            f.fallback.append("orientation")
        notes.append("no ImageOrientationPatient: assumed axial (1, 0, 0, 0, 1, 0)")
    missing_spacing = [f for f in frames if f.pixel_spacing is None]
    if missing_spacing and len(missing_spacing) == len(frames):
        f0 = frames[0]
        s = fallback_inplane_spacing(f0.rows, f0.cols)
        for f in missing_spacing:
            f.pixel_spacing = (s, s)
            f.fallback.append("pixel spacing")
        notes.append(f"no PixelSpacing: assumed {s:.3f} mm in-plane (max(0.5, 220 mm / matrix {f0.rows}x{f0.cols}))")
    if all(f.position is None for f in frames) and all(f.orientation is not None for f in frames):
        notes.extend(_stack_positions(frames))
    return notes


def _stack_positions(frames: list[FrameInfo]) -> list[str]:
    """Give position-less frames positions along the normal, in acquisition order, centred on the origin."""
    ordered = sorted(frames, key=lambda f: f.order_key)
    n = len(ordered)
    f0 = ordered[0]
    step = f0.spacing_between or f0.slice_thickness
    source = "SpacingBetweenSlices" if f0.spacing_between else "SliceThickness"
    if not step or step <= 0:
        step = fallback_slice_spacing(n)
        source = f"the fallback for {n} slices"
    normal = slice_normal(f0.orientation)
    row_mm, col_mm = f0.pixel_spacing
    centre_offset = (f0.orientation[:3] * (f0.cols - 1) * col_mm + f0.orientation[3:] * (f0.rows - 1) * row_mm
                     + normal * (n - 1) * step) / 2.0
    for i, f in enumerate(ordered):
        f.position = -centre_offset + i * step * normal
        f.fallback.append("position")
    if n == 1:
        return ["no ImagePositionPatient: the single slice is centred on the origin"]
    kind = "frames" if f0.frame is not None else "files (in acquisition/instance order)"
    return [f"no ImagePositionPatient: {n} {kind} stacked every {step:.3f} mm ({source}), centred on the origin"]


def _geometry_key(f: FrameInfo) -> tuple:
    orient = None if f.orientation is None else tuple(np.round(f.orientation, 2))
    spacing = None if f.pixel_spacing is None else tuple(np.round(f.pixel_spacing, 2))
    return (f.rows, f.cols, f.samples, orient, spacing, f.position is not None)


def _matches(f: FrameInfo, ref: FrameInfo) -> bool:
    if (f.rows, f.cols, f.samples) != (ref.rows, ref.cols, ref.samples):
        return False
    if (f.orientation is None) != (ref.orientation is None) or (f.position is None) != (ref.position is None):
        return False
    if f.orientation is not None and np.max(np.abs(f.orientation - ref.orientation)) > ORIENTATION_TOL:
        return False
    if (f.pixel_spacing is None) != (ref.pixel_spacing is None):
        return False
    if f.pixel_spacing is not None:
        rel = np.abs(np.subtract(f.pixel_spacing, ref.pixel_spacing)) / np.asarray(ref.pixel_spacing)
        if np.max(rel) > SPACING_REL_TOL:
            return False
    return True


def _describe(f: FrameInfo) -> str:
    plane = "no orientation" if f.orientation is None else plane_name(f.orientation)
    spacing = "no spacing" if f.pixel_spacing is None else f"{f.pixel_spacing[0]:.3g}x{f.pixel_spacing[1]:.3g} mm"
    return f"{f.rows}x{f.cols} {plane} {spacing}" + ("" if f.position is not None else " no position")


def majority_geometry(frames: list[FrameInfo]) -> tuple[list[FrameInfo], list[str]]:
    """Keep the frames that share the most common matrix, orientation and pixel spacing (scouts etc. are dropped)."""
    counts = Counter(_geometry_key(f) for f in frames)
    best_key = max(counts, key=lambda k: (counts[k], k[0] * k[1], k[5]))
    ref = next(f for f in frames if _geometry_key(f) == best_key)
    matches = [_matches(f, ref) for f in frames]
    kept = [f for f, m in zip(frames, matches) if m]
    dropped = [f for f, m in zip(frames, matches) if not m]
    if not dropped:
        return kept, []
    kinds = Counter(_describe(f) for f in dropped)
    detail = "; ".join(f"{n} x {d}" for d, n in kinds.most_common())
    return kept, [f"dropped {len(dropped)} frame(s) with another geometry than the {len(kept)} kept "
                  f"({_describe(ref)}), e.g. scouts: {detail}"]


def plane_name(orientation: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(slice_normal(orientation))))
    return ("sagittal", "coronal", "axial")[axis]


def order_slices(frames: list[FrameInfo]) -> tuple[list[FrameInfo], list[str]]:
    """Sort along the slice normal; keep the first frame (acquisition order) at each position. Raises
    ``GeometryError`` when several frames all share one position."""
    normal = slice_normal(np.median(np.stack([f.orientation for f in frames]), axis=0))
    depth = np.array([float(f.position @ normal) for f in frames])
    order = sorted(range(len(frames)), key=lambda i: (depth[i], frames[i].order_key))
    groups: list[list[int]] = []
    for i in order:
        if groups and depth[i] - depth[groups[-1][0]] < SAME_POSITION_MM:
            groups[-1].append(i)
        else:
            groups.append([i])
    if len(groups) == 1 and len(frames) > 1:
        raise GeometryError(f"all {len(frames)} image frames are at the same position, so they cannot be ordered")
    kept = [frames[min(g, key=lambda i: frames[i].order_key)] for g in groups]
    notes = []
    sizes = Counter(len(g) for g in groups)
    if len(sizes) == 1 and len(groups[0]) > 1:
        notes.append(f"4D: {len(groups[0])} frames per position (time points/echoes); kept the first of each")
    elif len(frames) > len(groups):
        notes.append(f"dropped {len(frames) - len(groups)} frame(s) at duplicate positions (kept the first of each)")
    return kept, notes


def slice_step(frames: list[FrameInfo]) -> tuple[np.ndarray, list[str]]:
    """The step vector between consecutive ordered slices (median of the differences, keeps gantry-tilt shear)."""
    f0 = frames[0]
    if len(frames) == 1:
        thickness = f0.spacing_between or f0.slice_thickness
        step = thickness if thickness and thickness > 0 else SINGLE_SLICE_DEFAULT_MM
        source = "SpacingBetweenSlices/SliceThickness" if thickness and thickness > 0 else "the 1 mm default"
        return slice_normal(f0.orientation) * step, [f"single slice: z spacing {step:.3g} mm from {source}"]
    positions = np.stack([f.position for f in frames])
    diffs = np.diff(positions, axis=0)
    step = np.median(diffs, axis=0)
    gaps = np.linalg.norm(diffs, axis=1)
    median_gap = float(np.linalg.norm(step))
    uneven = np.abs(gaps - median_gap) > UNEVEN_GAP_FRACTION * median_gap
    notes = []
    if np.any(uneven):
        notes.append(f"uneven slice spacing: {int(uneven.sum())} of {len(gaps)} gaps differ from the median "
                     f"{median_gap:.3g} mm (range {gaps.min():.3g}-{gaps.max():.3g} mm); the affine uses the median")
    return step, notes


def acquisition_affine(first: FrameInfo, step: np.ndarray) -> np.ndarray:
    """4x4 mapping acquisition voxel ``(k, r, c, 1)`` to LPS mm."""
    row_mm, col_mm = first.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = first.orientation[3:] * row_mm
    affine[:3, 2] = first.orientation[:3] * col_mm
    affine[:3, 3] = first.position
    return affine


def canonical_transform(affine_acq: np.ndarray, shape_acq: tuple[int, int, int]):
    """Axis permutation and flips taking the acquisition grid to the canonical (S, P, L)-ascending grid.

    Returns ``(perm, flips, index_map)``: canonical axis ``j`` is acquisition axis ``perm[j]``, reversed where
    ``flips[j]``; ``index_map`` (4x4) takes canonical voxel indices to acquisition voxel indices.
    """
    directions = affine_acq[:3, :3] / np.linalg.norm(affine_acq[:3, :3], axis=0)
    best = max(itertools.permutations(range(3)),
               key=lambda p: sum(abs(directions[CANONICAL_TO_LPS_AXIS[j], p[j]]) for j in range(3)))
    flips = tuple(bool(directions[CANONICAL_TO_LPS_AXIS[j], best[j]] < 0) for j in range(3))
    index_map = np.zeros((4, 4))
    index_map[3, 3] = 1.0
    for j, a in enumerate(best):
        if flips[j]:
            index_map[a, j] = -1.0
            index_map[a, 3] = shape_acq[a] - 1
        else:
            index_map[a, j] = 1.0
    return tuple(best), flips, index_map


def to_canonical(array_acq: np.ndarray, perm: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    """Permute and flip (no resampling); returns a C-contiguous array (no copy when nothing changes)."""
    out = array_acq.transpose(perm)
    slices = tuple(slice(None, None, -1) if f else slice(None) for f in flips)
    return np.ascontiguousarray(out[slices])


def reorientation_note(perm: tuple[int, ...], flips: tuple[bool, ...], orientation: np.ndarray) -> str | None:
    if perm == (0, 1, 2) and not any(flips):
        return None
    names = ("slice", "row", "column")
    parts = [f"{'zyx'[j]}<-{'-' if flips[j] else ''}{names[a]}" for j, a in enumerate(perm)]
    return f"reoriented {plane_name(orientation)} acquisition to S/P/L-ascending: " + ", ".join(parts)
