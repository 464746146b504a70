"""The one preprocessing path: a DICOM series (or a loaded Volume) -> a windowed uint8 ROI volume, ``PreparedSeries``.

Training reads it through the cache (``kaggle_utils.cache``) and serving calls ``prepare_series`` directly, with the
same ``DataConfig``, so the two can never drift apart. Also here: mapping localizer points, LPS points and the
``*_cowseg.nii`` vessel labels onto the ROI grid.

Steps: locate the ROI box (``roi.get_locator(cfg.roi_locator)``), resample only that box onto ``cfg.out_shape`` with
linear interpolation (box pre-filter when downsampling), then convert intensities to uint8 channels (CT: HU windows,
MR: percentiles of the volume's head voxels).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kaggle_utils.intensity import modality_channels
from kaggle_utils.roi import (
    RoiBox,
    get_locator,
    head_sample,
    head_threshold,
    resample_box,
    roi_affine,
    shared_head_thresholds,
)


@dataclass
class PreparedSeries:
    """A series on its ROI grid. ``image`` uint8 (C, Z, Y, X); ``affine`` maps ROI voxel (z, y, x, 1) to LPS mm."""

    image: np.ndarray
    affine: np.ndarray
    modality: str
    series_uid: str
    roi: RoiBox
    source_shape: tuple[int, int, int]
    source_spacing: tuple[float, float, float]
    source_affine: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """ROI voxel size (z, y, x) in mm (column norms of the affine, so obliqueness does not distort it)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def roi_box(self) -> np.ndarray:
        """Box faces in source voxel indices ``[[z0, y0, x0], [z1, y1, x1]]``."""
        return self.roi.index_bounds(self.source_spacing)

    def voxel_of_lps(self, points_lps: np.ndarray) -> np.ndarray:
        """LPS mm points (N, 3) or (3,) -> ROI voxel coordinates (z, y, x), same shape."""
        return apply_affine(np.linalg.inv(self.affine), points_lps)

    def voxel_of_source(self, source_voxels: np.ndarray) -> np.ndarray:
        """Source-volume voxel coordinates (z, y, x) -> ROI voxel coordinates (z, y, x)."""
        return self.voxel_of_lps(apply_affine(self.source_affine, source_voxels))

    def lps_of_voxel(self, voxels: np.ndarray) -> np.ndarray:
        """ROI voxel coordinates (z, y, x) -> LPS mm."""
        return apply_affine(self.affine, voxels)

    def contains(self, voxels: np.ndarray) -> np.ndarray:
        """Whether ROI voxel coordinates lie inside the grid (voxel centres from -0.5 to n - 0.5 along each axis)."""
        v = np.atleast_2d(np.asarray(voxels, dtype=np.float64))
        shape = np.asarray(self.image.shape[1:], dtype=np.float64)
        return np.all((v >= -0.5) & (v <= shape - 0.5), axis=1)


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to points (N, 3) or (3,)."""
    pts = np.asarray(points, dtype=np.float64)
    flat = np.atleast_2d(pts)
    out = flat @ np.asarray(affine, dtype=np.float64)[:3, :3].T + np.asarray(affine, dtype=np.float64)[:3, 3]
    return out.reshape(pts.shape)


def _load_volume(series_dir_or_volume: Any) -> Any:
    if isinstance(series_dir_or_volume, (str, os.PathLike)):
        from kaggle_utils.dicom import load_series  # imported lazily: callers holding a Volume do not need pydicom

        return load_series(Path(series_dir_or_volume))
    return series_dir_or_volume


def intensity_reference(array: np.ndarray, modality: str, data_cfg: Any) -> tuple[np.ndarray, float]:
    """Head voxels of a strided sample of the volume (MR percentiles come from these) and the fill value.

    The fill value for grid points outside the volume is the sample's minimum (air / outside the field of view).
    """
    sample, _ = head_sample(array)
    threshold = head_threshold(sample, modality, data_cfg.head_threshold_ct_hu, data_cfg.head_threshold_mr)
    head = sample[sample > threshold]
    return (head if head.size else sample.ravel()), float(sample.min())


def prepare_series(series_dir_or_volume: Any, data_cfg: Any) -> PreparedSeries:
    """THE preprocessing function: a series folder (loaded with ``dicom.load_series``) or a Volume -> PreparedSeries.

    ``data_cfg`` is a ``config.DataConfig``. A Volume-like object needs ``array`` (z, y, x) canonical float,
    ``spacing``, ``affine``, ``modality`` and optionally ``series_uid`` and ``notes``.
    """
    volume = _load_volume(series_dir_or_volume)
    array = volume.array
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError(f"series {getattr(volume, 'series_uid', '?')}: expected a 3D volume, got shape {array.shape}")
    spacing = tuple(float(s) for s in volume.spacing)
    with shared_head_thresholds():  # the locator and the intensity reference use the same MR head threshold
        box = get_locator(data_cfg.roi_locator).locate(volume, data_cfg)
        reference, cval = intensity_reference(array, volume.modality, data_cfg)
    out_shape = tuple(int(n) for n in data_cfg.out_shape)
    start, step = box.grid(spacing, out_shape)
    values = resample_box(array, start, step, out_shape, cval, antialias=data_cfg.antialias)
    image = modality_channels(values, volume.modality, data_cfg.ct_windows, data_cfg.mr_percentiles, reference)
    return PreparedSeries(
        image=image,
        affine=roi_affine(volume.affine, start, step),
        modality=volume.modality,
        series_uid=str(getattr(volume, "series_uid", "")),
        roi=box,
        source_shape=tuple(int(n) for n in array.shape),  # type: ignore[arg-type]
        source_spacing=spacing,  # type: ignore[arg-type]
        source_affine=np.asarray(volume.affine, dtype=np.float64),
        notes=[*getattr(volume, "notes", []), *box.notes],
    )


# --------------------------------------------------------------------------------------------------------------------
# Labels onto the ROI grid.


def localizer_to_roi_voxel(volume: Any, prepared: PreparedSeries, sop_uid: str, x: float, y: float,
                           frame: int | None = None) -> np.ndarray:
    """A ``train_localizers.csv`` point (pixel column x, row y in SOP ``sop_uid``, optional frame) -> ROI (z, y, x)."""
    source = np.asarray(volume.voxel_of(sop_uid, x, y, frame), dtype=np.float64)
    return prepared.voxel_of_source(source)


def roi_grid_lps(prepared: PreparedSeries) -> np.ndarray:
    """LPS mm of every ROI voxel centre, shape (Z, Y, X, 3)."""
    shape = prepared.image.shape[1:]
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    return prepared.lps_of_voxel(np.stack([zz, yy, xx], axis=-1).reshape(-1, 3)).reshape(*shape, 3)


def labels_to_roi(labels: np.ndarray, ras_affine: np.ndarray, prepared: PreparedSeries, where: str = "") -> np.ndarray:
    """A label volume in NIfTI voxel order with a RAS+ affine -> uint8 labels on the ROI grid (nearest neighbour).

    Each ROI voxel centre goes LPS -> RAS (negate x and y) -> label voxel; points outside the label volume get 0.
    """
    labels = np.asarray(labels)
    while labels.ndim > 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.ndim != 3:
        raise ValueError(f"{where or 'label volume'}: expected 3D labels, got shape {labels.shape}")
    if np.issubdtype(labels.dtype, np.floating):
        labels = np.rint(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"{where or 'label volume'}: label values must lie in 0..255, "
                         f"got {labels.min()}..{labels.max()}")
    lps = roi_grid_lps(prepared).reshape(-1, 3)
    ras = lps * np.array([-1.0, -1.0, 1.0])
    ijk = np.rint(apply_affine(np.linalg.inv(np.asarray(ras_affine, dtype=np.float64)), ras)).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(labels.shape)), axis=1)
    out = np.zeros(len(ijk), dtype=np.uint8)
    out[inside] = labels[ijk[inside, 0], ijk[inside, 1], ijk[inside, 2]].astype(np.uint8)
    return out.reshape(prepared.image.shape[1:])


# Loader notes (kaggle_utils.dicom_geometry) that mean the series' world coordinates are a guess, not scanner geometry.
GEOMETRY_GUESS_NOTES = ("no ImageOrientationPatient", "no ImagePositionPatient", "no PixelSpacing")


def geometry_is_guessed(volume: Any) -> bool:
    """Whether the loader had to assume orientation, position or spacing (then world coordinates are fictional)."""
    return any(str(n).startswith(GEOMETRY_GUESS_NOTES) for n in getattr(volume, "notes", []))


def pixel_grid_ras_affine(volume: Any, label_shape: tuple[int, ...]) -> np.ndarray | None:
    """RAS affine of a label array indexed (column, row, frame) of the series' one multi-frame file, built from the
    loaded volume's own pixel -> voxel mapping; None when the series is not one such file or the shapes disagree.

    For a series whose geometry tags are missing, a label map written on the same pixel grid (as the competition's
    NIfTI files are) can only be aligned by index: its world affine and the loader's assumed one need not agree.
    """
    sources = getattr(volume, "slice_sources", None) or []
    sops = {sop for sop, _ in sources}
    if len(sops) != 1 or any(frame is None for _, frame in sources):
        return None
    if len(label_shape) < 3 or label_shape[2] != len(sources) or sorted(label_shape[:3]) != sorted(volume.array.shape):
        return None
    sop = next(iter(sops))
    origin = np.array(volume.voxel_of(sop, 0.0, 0.0, 0))
    cols = [np.array(volume.voxel_of(sop, 1.0, 0.0, 0)) - origin, np.array(volume.voxel_of(sop, 0.0, 1.0, 0)) - origin,
            np.array(volume.voxel_of(sop, 0.0, 0.0, 1)) - origin]
    index_to_voxel = np.eye(4)
    index_to_voxel[:3, :3] = np.stack(cols, axis=1)
    index_to_voxel[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(volume.affine, dtype=np.float64) @ index_to_voxel


def read_label_map(nifti_path: str | os.PathLike, volume: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """A ``*_cowseg.nii`` vessel label map (nibabel) and the RAS+ affine that places it on the series.

    With the loaded ``volume`` of a series whose geometry the loader had to guess, the labels are aligned by pixel
    index (see ``pixel_grid_ras_affine``) instead of by the NIfTI's world affine.
    """
    import nibabel as nib

    path = Path(nifti_path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise ValueError(f"{path}: cannot read the NIfTI label map ({exc})") from None
    affine = np.asarray(img.affine, dtype=np.float64)
    if volume is not None and geometry_is_guessed(volume):
        by_index = pixel_grid_ras_affine(volume, data.shape)
        if by_index is None:
            raise ValueError(f"{path}: the series' geometry was guessed and the label map is not on its pixel grid "
                             f"(label shape {data.shape}, volume shape {volume.array.shape}); cannot align it")
        affine = by_index
    return data, affine


def cowseg_to_roi(nifti_path: str | os.PathLike, prepared: PreparedSeries, volume: Any = None) -> np.ndarray:
    """Read a ``*_cowseg.nii`` vessel label map (``read_label_map``) and resample it onto the ROI grid."""
    path = Path(nifti_path)
    data, affine = read_label_map(path, volume)
    return labels_to_roi(data, affine, prepared, where=str(path))
