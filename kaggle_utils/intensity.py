"""Modality-aware intensity conversion: float volumes -> uint8 channels (one channel per window / percentile range).

CT values are Hounsfield units, so fixed windows (centre, width) carry the same meaning in every series. MR values have
no absolute scale, so each volume is scaled between two of its own percentiles (computed on a reference sample of the
head, not of the surrounding air). Both give the same number of channels, so one model sees both modalities.

All functions are pure: arrays in, arrays out, nothing read from disk.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def range_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo -> 0`` and ``hi -> 255`` linearly, clip outside, round half to even; any float array shape.

    A degenerate range (``hi <= lo``) maps everything at or below ``lo`` to 0 and everything above to 255.
    """
    values = np.asarray(values, dtype=np.float32)
    if not hi > lo:
        return np.where(values > lo, 255, 0).astype(np.uint8)
    scale = np.float32(255.0 / (hi - lo))
    scaled = (values - np.float32(lo)) * scale
    np.clip(scaled, 0.0, 255.0, out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint8)


def window_to_uint8(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """One CT window: ``centre - width/2 -> 0``, ``centre + width/2 -> 255``."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return range_to_uint8(values, centre - width / 2.0, centre + width / 2.0)


def ct_channels(hu: np.ndarray, windows: Sequence[Sequence[float]]) -> np.ndarray:
    """Stack one uint8 channel per (centre, width) HU window: shape ``(len(windows), *hu.shape)``."""
    if not windows:
        raise ValueError("at least one CT window is needed")
    return np.stack([window_to_uint8(hu, c, w) for c, w in windows])


def percentile_ranges(reference: np.ndarray, percentiles: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """The (low, high) intensity values at each (low, high) percentile pair of ``reference`` (any shape)."""
    ref = np.asarray(reference, dtype=np.float32).ravel()
    if ref.size == 0:
        raise ValueError("cannot compute percentiles of an empty reference sample")
    flat = sorted({p for pair in percentiles for p in pair})
    for p in flat:
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"percentile {p} is outside [0, 100]")
    values = dict(zip(flat, np.percentile(ref, flat).tolist()))
    return [(values[lo], values[hi]) for lo, hi in percentiles]


def mr_channels(
    values: np.ndarray, percentiles: Sequence[Sequence[float]], reference: np.ndarray | None = None
) -> np.ndarray:
    """Stack one uint8 channel per (low, high) percentile range of ``reference`` (default: ``values`` itself)."""
    if not percentiles:
        raise ValueError("at least one MR percentile range is needed")
    ranges = percentile_ranges(values if reference is None else reference, percentiles)
    return np.stack([range_to_uint8(values, lo, hi) for lo, hi in ranges])


def modality_channels(
    values: np.ndarray,
    modality: str,
    ct_windows: Sequence[Sequence[float]],
    mr_percentiles: Sequence[Sequence[float]],
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """CT -> HU windows, MR -> percentile scaling; both return ``(C, *values.shape)`` uint8 with C equal."""
    if len(ct_windows) != len(mr_percentiles):
        raise ValueError(
            f"ct_windows ({len(ct_windows)}) and mr_percentiles ({len(mr_percentiles)}) must give equal channel counts"
        )
    if modality == "CT":
        return ct_channels(values, ct_windows)
    if modality == "MR":
        return mr_channels(values, mr_percentiles, reference)
    raise ValueError(f"unknown modality {modality!r}; expected 'CT' or 'MR'")
