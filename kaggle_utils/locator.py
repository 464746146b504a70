"""The ``anatomy`` ROI locator (the default): find the Circle of Willis (CoW) on a real head, then place a box shaped
like the arteries around it.

Methods, tried in order; the box's ``method`` and ``confidence`` say which one placed it:

1. ``registration``: the series, averaged to 6 mm, is registered (similarity: rotation, translation, one scale;
   Mattes mutual information, so CT and any MR contrast work) to the MNI152 T1 template shipped in
   ``kaggle_utils/anatomy/mni152_4mm.npz``, which carries a CoW landmark table. The CoW centre (mean of the ACom,
   both ICA termini and the basilar tip) is mapped back into the series. The series is the fixed image, so a slab or
   a scan with a neck is compared only where it has voxels. Accepted when the registered template head overlaps the
   series' head (Dice of the head masks >= ``locator_min_dice``), the scale and rotation are plausible and the CoW
   lands inside the volume; the Dice is the confidence.
2. ``vessels``: for MR angiograms whose background was removed (a TOF-MRA slab with only the vessels left): the
   CoW is taken as the intensity-weighted centroid of the brightest voxels (the vessels) of the slab.
3. the fallback locator (``locator_fallback``, the heuristic by default), with a logged note naming why.

A volume with no head at all (constant, or nothing above the head threshold) raises ``NoHeadError``.

Measured numbers (locator error in mm, seconds per series) are in the README ROI section (``bench/bench_locator.py``).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from kaggle_utils.errors import KitError
from kaggle_utils.roi import RoiBox, get_locator, head_extent, head_threshold, register_locator

log = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).resolve().parent / "anatomy" / "mni152_4mm.npz"
# Rows of the landmark table whose mean is the CoW centre: ACom, the two ICA termini and the basilar tip (the README of
# the landmark table gives this mean as about LPS (0, -1.6, -18) mm).
COW_CENTRE_ROWS = (0, 4, 5, 8)
# Registration is refused (fallback) outside these limits: heads vary by about +-10% in size, and a patient's head is
# rarely tilted more than ~20 degrees in a scanner.
SCALE_RANGE = (0.75, 1.33)
MAX_ROTATION_DEG = 35.0
# A TOF slab with its background removed keeps ~1% of its voxels; an ordinary head keeps most voxels above zero.
VESSEL_ONLY_MAX_FILLED = 0.05
VESSEL_QUANTILE = 0.9  # of the non-zero voxels of a vessel-only slab


class NoHeadError(KitError, ValueError):
    """The series shows no head the ROI locator could place a box on (constant volume, nothing above threshold)."""


@dataclass(frozen=True)
class Template:
    image: np.ndarray  # float32 (z, y, x), canonical orientation, 4 mm
    origin: np.ndarray  # LPS (z, y, x) mm of voxel 0
    spacing: float
    landmarks: np.ndarray  # (N, 3) LPS (z, y, x) mm

    @property
    def cow_lps(self) -> np.ndarray:
        return self.landmarks[list(COW_CENTRE_ROWS)].mean(axis=0)

    def local_mm(self, lps_zyx: np.ndarray) -> np.ndarray:
        """LPS (z, y, x) -> mm from voxel 0 along the template's axes (the frame registration works in)."""
        return np.asarray(lps_zyx, dtype=np.float64) - self.origin


@functools.lru_cache(maxsize=1)
def load_template(path: str | None = None) -> Template:
    """The shipped MNI152 4 mm template (see ``kaggle_utils/anatomy/NOTICE.md`` for its licence)."""
    p = Path(path) if path else TEMPLATE_PATH
    if not p.is_file():
        raise FileNotFoundError(f"ROI template {p} is missing (python -m kaggle_utils.anatomy.build_template)")
    with np.load(p) as data:
        return Template(data["image"].astype(np.float32), data["origin_lps_zyx"].astype(np.float64),
                        float(data["spacing"]), data["landmarks_lps_zyx"].astype(np.float64))


def coarse_volume(array: np.ndarray, spacing: tuple[float, float, float], target_mm: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average ``array`` over blocks of about ``target_mm`` -> (coarse float32, coarse spacing, block factors).

    Axes much finer than 2 mm are first strided to about 2 mm (cheap on 512x512x400 volumes), then block-averaged.
    Coarse voxel ``i`` along an axis covers source indices ``[i * f, (i + 1) * f)``, centred at ``i * f + (f - 1) / 2``.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    total = np.maximum(1, np.round(target_mm / sp).astype(int))
    stride = np.maximum(1, total // 2)
    stride = np.where(total % stride == 0, stride, 1)
    block = total // stride
    view = np.asarray(array)[:: stride[0], :: stride[1], :: stride[2]]
    n = [s // b for s, b in zip(view.shape, block)]
    if min(n) < 1:  # thinner than one block along an axis (a single slice): keep that axis as it is
        block = np.where(np.array(n) < 1, 1, block)
        total = block * stride
        n = [s // b for s, b in zip(view.shape, block)]
    cut = np.asarray(view[: n[0] * block[0], : n[1] * block[1], : n[2] * block[2]], dtype=np.float32)
    coarse = cut.reshape(n[0], block[0], n[1], block[1], n[2], block[2]).mean(axis=(1, 3, 5), dtype=np.float32)
    return coarse, sp * total, total


def _sitk_image(arr: np.ndarray, spacing_zyx: np.ndarray) -> Any:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    return img


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 0.0


@dataclass(frozen=True)
class Registration:
    cow_index: np.ndarray  # CoW centre in source voxel indices (z, y, x)
    dice: float  # head-mask overlap of the registered template with the series (the confidence)
    scale: float
    rotation_deg: float
    inside: bool  # the CoW lies inside the volume

    def problems(self, min_dice: float) -> list[str]:
        out = []
        if self.dice < min_dice:
            out.append(f"head overlap {self.dice:.2f} < {min_dice:.2f}")
        if not SCALE_RANGE[0] <= self.scale <= SCALE_RANGE[1]:
            out.append(f"scale {self.scale:.2f} outside {SCALE_RANGE}")
        if self.rotation_deg > MAX_ROTATION_DEG:
            out.append(f"rotation {self.rotation_deg:.0f} deg > {MAX_ROTATION_DEG:.0f}")
        if not self.inside:
            out.append("CoW outside the volume")
        return out


_TRANSFORMS = {"similarity": "Similarity3DTransform", "scale_versor": "ScaleVersor3DTransform",
               "affine": "AffineTransform"}


def _register(fixed: Any, moving: Any, initial: Any, transform: str, levels: tuple[int, ...],
              mask: Any = None) -> Any:
    """One SimpleITK registration run (Mattes MI, regular-step gradient descent) -> the fitted transform."""
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    # A cache must be rebuilt bit for bit, and the same series must get the same box in training and serving: ITK's
    # RANDOM and REGULAR sampling both jitter sample positions from run to run even with a fixed seed, and threaded
    # sums reorder floating point. So every coarse voxel is used (about 0.3 s more a series) on one thread.
    reg.SetNumberOfThreads(1)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.NONE)
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=4.0 / levels[0], minStep=0.05, numberOfIterations=200,
                                                 relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(levels))
    reg.SetSmoothingSigmasPerLevel([1.0 if f > 1 else 0.0 for f in levels])
    reg.SetInitialTransform(initial, inPlace=False)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # the pyramid's smoothing filters too
    try:
        out = reg.Execute(fixed, moving)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    out = out.GetNthTransform(0) if hasattr(out, "GetNthTransform") else out
    return getattr(sitk, _TRANSFORMS[transform])(out)


def _invert_point(tx: Any, moving_zyx: np.ndarray) -> np.ndarray:
    """The fixed point (z, y, x) a fitted transform maps onto ``moving_zyx``: q = A (p - c) + c + t in (x, y, z)."""
    lin = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c, t = np.asarray(tx.GetCenter()), np.asarray(tx.GetTranslation())
    return (np.linalg.solve(lin, np.asarray(moving_zyx)[::-1] - c - t) + c)[::-1]


def register_to_template(array: np.ndarray, spacing: tuple[float, float, float], modality: str, data_cfg: Any,
                         template: Template | None = None, transform: str = "similarity",
                         refine_mm: float = 0.0) -> Registration:
    """Register the series (averaged to ``data.locator_coarse_mm``) to the template and map the template's CoW centre
    into source voxel indices."""
    import SimpleITK as sitk

    tpl = template or load_template()
    coarse, csp, factors = coarse_volume(array, spacing, target_mm=float(data_cfg.locator_coarse_mm))
    if min(coarse.shape) < 4:
        raise NoHeadError(f"volume {array.shape} is too thin to register (coarse {coarse.shape})")
    if modality == "CT":  # air / soft tissue / bone classes; contrast and metal above 300 HU add nothing here
        coarse = np.clip(coarse, -1000.0, 300.0)
    thr = head_threshold(coarse, modality, data_cfg.head_threshold_ct_hu, data_cfg.head_threshold_mr)
    ext = head_extent(coarse, tuple(csp), thr)
    tpl_thr = head_threshold(tpl.image, "MR", 0.0, data_cfg.head_threshold_mr)
    tpl_ext = head_extent(tpl.image, (tpl.spacing,) * 3, tpl_thr)
    fixed, moving = _sitk_image(coarse, csp), _sitk_image(tpl.image, np.full(3, tpl.spacing))
    cow_tpl = tpl.local_mm(tpl.cow_lps)  # (z, y, x) mm in the template frame

    # Initial transform (fixed point -> moving point): head centres in y/x; in z the head tops, or when the top is cut
    # off (a slab, usually centred on the CoW) the slab's middle to the template's CoW.
    f_yx = np.array([np.mean(ext.y_range) * csp[1], np.mean(ext.x_range) * csp[2]])
    m_yx = np.array([np.mean(tpl_ext.y_range), np.mean(tpl_ext.x_range)]) * tpl.spacing
    if ext.top_truncated:
        f_z, m_z = (ext.z_bottom + ext.z_top) / 2.0 * csp[0], cow_tpl[0]
    else:
        f_z, m_z = ext.z_top * csp[0], tpl_ext.z_top * tpl.spacing
    shift_zyx = np.array([m_z - f_z, *(m_yx - f_yx)])
    centre_zyx = np.array([f_z + cow_tpl[0] - m_z, *f_yx])  # rotate about the expected CoW
    tx = {"similarity": sitk.Similarity3DTransform, "scale_versor": sitk.ScaleVersor3DTransform,
          "affine": lambda: sitk.AffineTransform(3)}[transform]()
    tx.SetCenter(tuple(float(v) for v in centre_zyx[::-1]))
    tx.SetTranslation(tuple(float(v) for v in shift_zyx[::-1]))

    final = _register(fixed, moving, tx, transform, levels=(2, 1))
    if refine_mm > 0:  # second pass: only the fixed voxels within refine_mm of the first CoW estimate count
        first = _invert_point(final, cow_tpl)
        grid = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip(coarse.shape, csp)), indexing="ij"), axis=-1)
        near = np.all(np.abs(grid - first) <= refine_mm, axis=-1).astype(np.uint8)
        mask = sitk.GetImageFromArray(near)
        mask.CopyInformation(fixed)
        final = _register(fixed, moving, final, transform, levels=(1,), mask=mask)
    cow_fixed = _invert_point(final, cow_tpl)
    cow_index = cow_fixed / csp * factors + (factors - 1) / 2.0
    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, final, sitk.sitkLinear, 0.0))
    dice = _dice(warped > tpl_thr, coarse > thr)
    # scale and rotation from the polar decomposition of the linear part (any transform type)
    u, sv, vt = np.linalg.svd(np.asarray(final.GetMatrix()).reshape(3, 3))
    matrix = u @ vt
    scale = float(np.prod(sv) ** (1.0 / 3.0))
    angle = math.degrees(math.acos(float(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))))
    shape = np.asarray(array.shape, dtype=np.float64)
    inside = bool(np.all(cow_index >= -0.5) and np.all(cow_index <= shape - 0.5))
    return Registration(cow_index, dice, scale, angle, inside)


def vessel_centroid(array: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray | None:
    """CoW estimate of a vessel-only angiogram (background removed): weighted centroid of its brightest voxels, in
    source indices; None when the volume is not vessel-only (most voxels non-zero) or has too few vessel voxels."""
    coarse, csp, factors = coarse_volume(array, spacing, target_mm=2.0)
    filled = coarse > coarse.min()
    if filled.mean() > VESSEL_ONLY_MAX_FILLED or filled.sum() < 50:
        return None
    values = coarse[filled]
    bright = coarse >= np.quantile(values, VESSEL_QUANTILE)
    idx = np.argwhere(bright).astype(np.float64)
    w = coarse[bright].astype(np.float64)
    centre = (idx * w[:, None]).sum(axis=0) / w.sum()
    return centre * factors + (factors - 1) / 2.0


def box_around_cow(cow_index: np.ndarray, spacing: tuple[float, float, float], data_cfg: Any) -> tuple:
    """Box centre (source indices) for a CoW centre: shifted by ``roi_offset_from_cow_mm`` to the middle of the
    landmark envelope (which reaches further down and forward than up and back)."""
    offset = np.asarray(data_cfg.roi_offset_from_cow_mm, dtype=np.float64) / np.asarray(spacing, dtype=np.float64)
    return tuple(float(v) for v in np.asarray(cow_index, dtype=np.float64) + offset)


@register_locator("anatomy")
class AnatomyLocator:
    """Template registration, then vessel centroid, then the fallback locator (see the module docstring)."""

    def locate(self, volume: Any, data_cfg: Any) -> RoiBox:
        array, spacing = volume.array, tuple(float(s) for s in volume.spacing)
        modality = str(getattr(volume, "modality", "MR"))
        where = getattr(volume, "series_uid", "") or "series"
        if array.size == 0 or not np.isfinite(array).any() or float(np.nanmax(array)) <= float(np.nanmin(array)):
            raise NoHeadError(f"{where}: the volume is constant; there is no head to place the ROI box on")
        size = tuple(float(s) for s in data_cfg.roi_size_mm)
        problems: list[str] = []
        if min(array.shape) >= 4:
            try:
                reg = register_to_template(array, spacing, modality, data_cfg)
            except (NoHeadError, ValueError, RuntimeError) as exc:  # RuntimeError: SimpleITK gave up
                problems.append(f"registration failed ({exc})")
            else:
                bad = reg.problems(data_cfg.locator_min_dice)
                if not bad:
                    return RoiBox(box_around_cow(reg.cow_index, spacing, data_cfg), size, "anatomy",
                                  method="registration", confidence=round(reg.dice, 3))
                problems.append("registration rejected: " + ", ".join(bad))
            centre = vessel_centroid(array, spacing) if modality == "MR" else None
            if centre is not None:
                note = "ROI: placed on the vessels' centroid (vessel-only angiogram; " + "; ".join(problems) + ")"
                return RoiBox(box_around_cow(centre, spacing, data_cfg), size, "anatomy", (note,),
                              method="vessels", confidence=0.5)
        else:
            problems.append(f"volume {array.shape} too thin to register")
        fallback = data_cfg.locator_fallback
        note = f"ROI: anatomy locator fell back to {fallback!r}: " + "; ".join(problems)
        log.warning("%s: %s", where, note)
        try:
            box = get_locator(fallback).locate(volume, data_cfg)
        except ValueError as exc:
            raise NoHeadError(f"{where}: no head found for the ROI box ({exc})") from None
        return replace(box, notes=(*box.notes, note), method=f"fallback:{box.method or fallback}", confidence=0.0)
