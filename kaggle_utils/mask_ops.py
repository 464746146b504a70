"""Exact, faster stand-ins for the two scipy.ndimage calls of the heuristic ROI locator's head mask.

``largest_component`` (``roi``) opens the thresholded head sample with the 6-connected cross and keeps its largest
connected part. On a 175x512x512 MRA's sample (88x86x86 voxels) ``ndimage.binary_opening`` took ~14 ms and
``ndimage.label`` ~6 ms, a third of everything after the load (bench/bench_preprocess.py). Here the opening is
six shifted ANDs then six shifted ORs of whole views (the same result: the cross is symmetric and the volume's
outside counts as background, scipy's ``border_value=0``), and labelling runs only on the bounding box of the
opened mask (voxels outside it are background, and raster order, so label numbering, is kept). Both are tested
equal to scipy's results on random masks (``tests/test_mask_ops.py``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["binary_opening_cross", "largest_component_exact"]


def _erode_cross(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for axis in range(mask.ndim):
        lead = [slice(None)] * mask.ndim
        trail = [slice(None)] * mask.ndim
        lead[axis], trail[axis] = slice(1, None), slice(None, -1)
        out[tuple(lead)] &= mask[tuple(trail)]  # neighbour at index - 1
        out[tuple(trail)] &= mask[tuple(lead)]  # neighbour at index + 1
        first = [slice(None)] * mask.ndim
        first[axis] = 0
        out[tuple(first)] = False  # its neighbour outside the volume is background
        first[axis] = -1
        out[tuple(first)] = False
    return out


def _dilate_cross(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for axis in range(mask.ndim):
        lead = [slice(None)] * mask.ndim
        trail = [slice(None)] * mask.ndim
        lead[axis], trail[axis] = slice(1, None), slice(None, -1)
        out[tuple(lead)] |= mask[tuple(trail)]
        out[tuple(trail)] |= mask[tuple(lead)]
    return out


def binary_opening_cross(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_opening(mask, structure=generate_binary_structure(mask.ndim, 1))``, bool, same shape."""
    mask = np.asarray(mask, dtype=bool)
    if mask.size == 0:
        return mask.copy()
    return _dilate_cross(_erode_cross(mask))


def largest_component_exact(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected part of the cross-opened ``mask`` (ties: the first in raster order), or ``mask``
    itself when the opening removes everything; the same array ``roi.largest_component`` computed with scipy."""
    mask = np.asarray(mask, dtype=bool)
    opened = binary_opening_cross(mask)
    if not opened.any():
        return mask
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(opened))
    labels, n = ndimage.label(opened[box])
    if n == 1:
        return opened
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out = np.zeros_like(opened)
    out[box] = labels == int(np.argmax(sizes))
    return out
