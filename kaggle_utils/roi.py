"""Region of interest around the Circle of Willis: where to crop (a locator) and how (axis-aligned resampling).

A locator looks at a canonical volume (indices towards Superior z, Posterior y, Left x; see docs/ARCHITECTURE.md) and
returns a ``RoiBox``: a centre in source voxel indices plus a size in mm. Locators are picked by name from a registry
(``DataConfig.roi_locator``), so a learned locator can replace the first, heuristic one without touching callers:

    @register_locator("my_model")
    class MyLocator:
        def locate(self, volume, data_cfg) -> RoiBox: ...

The box is then resampled onto ``DataConfig.out_shape`` by separable linear interpolation of only the source block the
box covers (never the whole volume), with an optional box pre-filter when downsampling so thin vessels are averaged
rather than skipped.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from kaggle_utils.mask_ops import largest_component_exact

# Samples per axis used to find the head: enough for a few-mm accurate bounding box, cheap on 512x512x400 volumes.
_HEAD_SAMPLES_PER_AXIS = 96


@dataclass(frozen=True)
class RoiBox:
    """Axis-aligned box in a canonical volume: ``centre`` in source voxel indices (z, y, x), ``size_mm`` (z, y, x)."""

    centre: tuple[float, float, float]
    size_mm: tuple[float, float, float]
    locator: str = ""
    notes: tuple[str, ...] = ()
    # How the box was placed (e.g. "registration", "vessels", "heuristic", "fallback:heuristic") and how sure the
    # locator is of it (0 = a fallback guess, 1 = certain); the cache manifest keeps both.
    method: str = ""
    confidence: float = 1.0

    def grid(self, spacing: tuple[float, ...], out_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Per-axis ``(start, step)`` in source indices: output voxel ``j`` samples source index ``start + j * step``.

        Output voxels tile the box exactly, so output voxel centres sit half an output voxel inside its faces.
        """
        spacing_arr = np.asarray(spacing, dtype=np.float64)
        size = np.asarray(self.size_mm, dtype=np.float64)
        shape = np.asarray(out_shape, dtype=np.float64)
        step = size / shape / spacing_arr
        start = np.asarray(self.centre, dtype=np.float64) - size / (2.0 * spacing_arr) + 0.5 * step
        return start, step

    def index_bounds(self, spacing: tuple[float, float, float]) -> np.ndarray:
        """Box faces in source indices, ``[[z0, y0, x0], [z1, y1, x1]]`` (float)."""
        half = np.asarray(self.size_mm, dtype=np.float64) / (2.0 * np.asarray(spacing, dtype=np.float64))
        centre = np.asarray(self.centre, dtype=np.float64)
        return np.stack([centre - half, centre + half])


class RoiLocator(Protocol):
    """Anything that can place the ROI box in a canonical volume (``volume`` needs array, spacing, modality)."""

    def locate(self, volume: Any, data_cfg: Any) -> RoiBox: ...


_LOCATORS: dict[str, Callable[[], RoiLocator]] = {}


def register_locator(name: str) -> Callable[[type], type]:
    """Class decorator: make a locator available as ``DataConfig.roi_locator = name``."""

    def add(cls: type) -> type:
        if name in _LOCATORS:
            raise ValueError(f"ROI locator {name!r} is already registered")
        _LOCATORS[name] = cls
        return cls

    return add


# Modules whose locators register themselves on import (imported lazily: they need SimpleITK / torch).
_BUILTIN_LOCATOR_MODULES = ("kaggle_utils.locator", "kaggle_utils.locator_learned")


def _import_builtin_locators() -> None:
    import importlib
    import importlib.util

    for module in _BUILTIN_LOCATOR_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def get_locator(name: str) -> RoiLocator:
    """A fresh locator instance by registered name."""
    if name not in _LOCATORS:
        _import_builtin_locators()
    try:
        return _LOCATORS[name]()
    except KeyError:
        raise KeyError(f"unknown ROI locator {name!r}; registered: {sorted(_LOCATORS)}") from None


def available_locators() -> list[str]:
    _import_builtin_locators()
    return sorted(_LOCATORS)


# --------------------------------------------------------------------------------------------------------------------
# The heuristic locator: head bounding box from a threshold, then a superior-central box.


def head_sample(array: np.ndarray, per_axis: int = _HEAD_SAMPLES_PER_AXIS) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A strided view of ``array`` with at most ``per_axis`` samples per axis, and the strides used."""
    strides = tuple(max(1, int(np.ceil(n / per_axis))) for n in array.shape)
    return array[:: strides[0], :: strides[1], :: strides[2]], strides  # type: ignore[return-value]


# Inside ``shared_head_thresholds()``: (sample address, shape, strides, dtype, fraction) -> (threshold, sample).
_THRESHOLD_MEMO: contextvars.ContextVar[dict | None] = contextvars.ContextVar("head_threshold_memo", default=None)


@contextlib.contextmanager
def shared_head_thresholds() -> Iterator[None]:
    """Compute each MR head threshold once inside this block: ``prepare_series`` needs the same one twice (the
    locator, then the intensity reference) of a volume that does not change in between. Each entry keeps its sample
    alive, so no other array can take over its key (memory address, shape, strides)."""
    token = _THRESHOLD_MEMO.set({})
    try:
        yield
    finally:
        _THRESHOLD_MEMO.reset(token)


def head_threshold(sample: np.ndarray, modality: str, ct_threshold_hu: float, mr_fraction: float) -> float:
    """Intensity above which a voxel counts as head: a fixed HU for CT, a fraction of the 99th percentile for MR."""
    if modality == "CT":
        return float(ct_threshold_hu)
    memo = _THRESHOLD_MEMO.get()
    key = None
    if memo is not None and isinstance(sample, np.ndarray):
        key = (sample.__array_interface__["data"][0], sample.shape, sample.strides, sample.dtype.str, mr_fraction)
        if key in memo:
            return memo[key][0]
    high = float(np.percentile(sample, 99.0))
    low = float(np.min(sample))
    value = low + mr_fraction * (high - low)
    if key is not None:
        memo[key] = (value, sample)
    return value


def _quantile_index(profile: np.ndarray, q: float) -> float:
    """Position (in profile index) below which a fraction ``q`` of the profile's mass lies."""
    cum = np.cumsum(profile, dtype=np.float64)
    return float(np.searchsorted(cum, q * cum[-1]))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected part of ``mask`` after an opening (drops noise and thin plates such as a CT table).

    Falls back to the raw mask when the opening removes everything (a head only a sample or two thick). Computed by
    ``mask_ops.largest_component_exact``: the scipy opening + label result, in about a third of the time.
    """
    return largest_component_exact(mask)


@dataclass(frozen=True)
class HeadExtent:
    """Head bounding box in source indices (floats); ``top_truncated``: the head reaches the top face of the volume."""

    z_bottom: float
    z_top: float
    y_range: tuple[float, float]
    x_range: tuple[float, float]
    top_truncated: bool


def head_extent(
    array: np.ndarray,
    spacing: tuple[float, float, float],
    threshold: float,
    slab_mm: float = 120.0,
    min_slice_fraction: float = 0.1,
    quantiles: tuple[float, float] = (0.02, 0.98),
) -> HeadExtent:
    """Robust head bounding box of a canonical volume.

    z: the highest and lowest slices whose above-threshold area is at least ``min_slice_fraction`` of the largest slice
    (noise voxels and a thin table do not count; on a dome-shaped head top the 10% level lies ~5 mm under the vertex,
    which ``roi_centre_below_top_mm`` absorbs). y and x: mass quantiles of the largest connected part (after an
    opening) of the head voxels within ``slab_mm`` below the top, so shoulders, a CT table or a head rest hardly move
    them.
    """
    sample, strides = head_sample(array)
    raw = sample > threshold
    z_profile = raw.sum(axis=(1, 2))
    if z_profile.max() == 0:
        raise ValueError(f"no voxel above the head threshold {threshold:.1f}")
    # z from the raw mask: an opening would drop a thin scalp cap that a dark (MR) skull separates from the brain.
    present = np.nonzero(z_profile >= max(1, min_slice_fraction * z_profile.max()))[0]
    z_lo_s, z_hi_s = int(present[0]), int(present[-1])
    slab_samples = max(1, int(round(slab_mm / (spacing[0] * strides[0]))))
    slab = largest_component(raw[max(z_lo_s, z_hi_s - slab_samples) : z_hi_s + 1])
    y_profile = slab.sum(axis=(0, 2))
    x_profile = slab.sum(axis=(0, 1))
    y_range = tuple(_quantile_index(y_profile, q) * strides[1] for q in quantiles)
    x_range = tuple(_quantile_index(x_profile, q) * strides[2] for q in quantiles)
    z_top = z_hi_s * strides[0]
    # The top counts as cut off when the last head slice is within ~3 mm (and one sample) of the volume's top face.
    margin = max(strides[0], int(np.ceil(3.0 / spacing[0])))
    truncated = z_top >= array.shape[0] - 1 - margin
    return HeadExtent(float(z_lo_s * strides[0]), float(z_top), y_range, x_range, bool(truncated))  # type: ignore[arg-type]


def clamp_centre_inside(centre: float, half_extent: float, n: int) -> float:
    """Move a box centre so the box lies inside ``[-0.5, n - 0.5]`` when it fits; otherwise centre it on the volume.

    Shifting a box that sticks out of the volume towards its inside keeps every imaged voxel it covered.
    """
    lo, hi = -0.5 + half_extent, n - 0.5 - half_extent
    if lo > hi:
        return (n - 1) / 2.0
    return float(min(max(centre, lo), hi))


@register_locator("heuristic")
class HeuristicLocator:
    """Superior-central box: ``roi_centre_below_top_mm`` under the top of the head, at fractions of its y/x extent.

    When the head's top is cut off by the field of view (a slab centred on the Circle of Willis, as in most TOF-MRA),
    the vertex is unknown and the box goes to the middle of the imaged head instead.
    """

    def locate(self, volume: Any, data_cfg: Any) -> RoiBox:
        array, spacing = volume.array, tuple(float(s) for s in volume.spacing)
        sample, _ = head_sample(array)
        threshold = head_threshold(sample, volume.modality, data_cfg.head_threshold_ct_hu, data_cfg.head_threshold_mr)
        ext = head_extent(array, spacing, threshold)
        notes = []
        if ext.top_truncated:
            cz = (ext.z_bottom + ext.z_top) / 2.0
            notes.append("ROI: head top cut off by the field of view; box centred on the imaged head in z")
        else:
            cz = ext.z_top - data_cfg.roi_centre_below_top_mm / spacing[0]
        fy, fx = data_cfg.roi_centre_fraction_yx
        cy = ext.y_range[0] + fy * (ext.y_range[1] - ext.y_range[0])
        cx = ext.x_range[0] + fx * (ext.x_range[1] - ext.x_range[0])
        size = tuple(float(s) for s in data_cfg.roi_size_mm)
        centre = tuple(
            clamp_centre_inside(c, size[a] / (2.0 * spacing[a]), array.shape[a]) for a, c in enumerate((cz, cy, cx))
        )
        return RoiBox(centre, size, "heuristic", tuple(notes), method="heuristic", confidence=0.0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------------
# Resampling the box.


def roi_affine(source_affine: np.ndarray, start: np.ndarray, step: np.ndarray) -> np.ndarray:
    """4x4 mapping ROI voxel ``(z, y, x, 1)`` to LPS mm, given the source affine and the per-axis grid."""
    to_source = np.eye(4)
    to_source[:3, :3] = np.diag(step)
    to_source[:3, 3] = start
    return np.asarray(source_affine, dtype=np.float64) @ to_source


def _odd_box_size(step: float) -> int:
    """Odd box-filter length approximating area averaging over one output voxel (1 = no filtering)."""
    return 2 * int(step // 2) + 1 if step >= 1.5 else 1


def axis_taps(local: np.ndarray, n_block: int, box: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A ``box``-long mean filter (edge-clamped) followed by linear interpolation, as (indices, weights) taps.

    Output ``j`` at fractional block position ``local[j]`` is ``sum(weights[t][j] * block[indices[t][j]])``.
    """
    i0 = np.floor(local).astype(np.int64)
    w = local - i0
    half = box // 2
    taps = []
    for d in range(-half, half + 2):
        weight = np.zeros_like(w)
        if d <= half:  # the box around the left neighbour i0
            weight += (1.0 - w) / box
        if d >= 1 - half:  # the box around the right neighbour i0 + 1
            weight += w / box
        taps.append((np.clip(i0 + d, 0, n_block - 1), weight.astype(np.float32)))
    return taps


# Elements per working chunk in ``_apply_taps`` (512 KB of float32): each chunk's terms stay in the CPU cache.
_CHUNK_ELEMENTS = 2**17


def _apply_taps(block: np.ndarray, taps: list[tuple[np.ndarray, np.ndarray]], axis: int, pad_before: int = 0,
                cval: float = 0.0) -> np.ndarray:
    """``sum(weights[t] * take(block, indices[t], axis))`` in float32, term by term in tap order, computed in
    chunks along axis 0 into reused buffers (no full-size temporaries).

    For ``axis`` 0, ``block`` may stand for a block padded with ``cval`` planes along axis 0: ``pad_before`` planes
    come before it and the taps index the padded block (planes past its end are padding too)."""
    out_shape = list(block.shape)
    out_shape[axis] = len(taps[0][0])
    out = np.empty(out_shape, dtype=np.float32)
    plane = int(np.prod(out_shape[1:]))
    chunk = max(1, _CHUNK_ELEMENTS // max(plane, 1))
    term_buffer = np.empty((min(chunk, out_shape[0]), *out_shape[1:]), dtype=np.float32)
    weight_shape = [1, 1, 1]
    weight_shape[axis] = -1
    for c0 in range(0, out_shape[0], chunk):
        c1 = min(c0 + chunk, out_shape[0])
        acc, term = out[c0:c1], term_buffer[: c1 - c0]
        for t, (idx, weight) in enumerate(taps):
            dest = acc if t == 0 else term
            if axis == 0:  # the chunk is a range of output positions along the filtered axis
                # Plane by plane: np.take would first copy a non-contiguous block (a view into the volume) whole.
                for k, i in enumerate(idx[c0:c1] - pad_before):
                    dest[k] = block[i] if 0 <= i < block.shape[0] else cval
                dest *= weight[c0:c1].reshape(weight_shape)
            else:
                np.take(block[c0:c1], idx, axis=axis, out=dest, mode="clip")
                dest *= weight.reshape(weight_shape)
            if t:
                acc += term
    return out


def resample_box(
    array: np.ndarray,
    start: np.ndarray,
    step: np.ndarray,
    out_shape: tuple[int, int, int],
    cval: float,
    antialias: bool = True,
) -> np.ndarray:
    """Sample ``array`` (z, y, x) at ``start + j * step`` per axis by separable linear interpolation -> float32.

    Only the source block the grid touches is read (padded with ``cval`` where the grid leaves the volume). With
    ``antialias``, an axis downsampled by 1.5x or more is box-filtered first, so thin structures are averaged in.
    Filter and interpolation are folded into a few weighted gathers per axis, applied axis by axis so the data
    shrinks after every step.
    """
    out_shape = tuple(int(n) for n in out_shape)
    filt = [_odd_box_size(float(s)) if antialias else 1 for s in step]
    lo_idx, hi_idx, positions = [], [], []
    for a in range(3):
        pos = start[a] + step[a] * np.arange(out_shape[a], dtype=np.float64)
        margin = filt[a] // 2
        lo_idx.append(int(np.floor(pos.min())) - margin)
        hi_idx.append(int(np.floor(pos.max())) + 2 + margin)  # exclusive; +1 for the right neighbour
        positions.append(pos)
    # Cut the intersection with the volume, pad the rest with cval.
    src = tuple(slice(max(lo, 0), min(hi, n)) for lo, hi, n in zip(lo_idx, hi_idx, array.shape))
    if any(s.start >= s.stop for s in src):
        return np.full(out_shape, cval, dtype=np.float32)
    block = np.asarray(array[src], dtype=np.float32)
    pad = [(s.start - lo, hi - s.stop) for s, lo, hi in zip(src, lo_idx, hi_idx)]
    padded_shape = [hi - lo for lo, hi in zip(lo_idx, hi_idx)]
    # Largest reduction first, so later axes work on less data. Plain numpy: no BLAS threads to contend for.
    order = sorted(range(3), key=lambda a: out_shape[a] / padded_shape[a])
    # Padding along axis 0 when that axis goes first is supplied plane by plane (no padded copy of the block).
    virtual_pad = order[0] == 0 and pad[0] != (0, 0)
    explicit_pad = [(0, 0), pad[1], pad[2]] if virtual_pad else pad
    if any(p != (0, 0) for p in explicit_pad):
        block = np.pad(block, explicit_pad, mode="constant", constant_values=cval)
    for a in order:
        taps = axis_taps(positions[a] - lo_idx[a], padded_shape[a] if a == order[0] else block.shape[a], filt[a])
        if a == order[0] and virtual_pad:
            block = _apply_taps(block, taps, a, pad_before=pad[0][0], cval=cval)
        else:
            block = _apply_taps(block, taps, a)
    return np.ascontiguousarray(block, dtype=np.float32)
