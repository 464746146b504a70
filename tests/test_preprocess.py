"""prepare_series on hand-made volumes: grid, affine, point mapping, labels; then on the synthetic competition."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import nibabel as nib
import numpy as np
import pytest

from kaggle_utils.config import DataConfig
from kaggle_utils.preprocess import (
    apply_affine,
    cowseg_to_roi,
    labels_to_roi,
    localizer_to_roi_voxel,
    prepare_series,
)

SPACING = (1.5, 0.8, 0.7)


def canonical_affine(spacing, origin):
    """(z, y, x) indices towards S, P, L -> LPS (x, y, z) mm, like the loader's axis-aligned case."""
    aff = np.zeros((4, 4))
    aff[0, 2], aff[1, 1], aff[2, 0] = spacing[2], spacing[1], spacing[0]
    aff[:3, 3] = origin
    aff[3, 3] = 1.0
    return aff


@dataclass
class FakeVolume:
    array: np.ndarray
    spacing: tuple
    affine: np.ndarray
    modality: str = "CT"
    series_uid: str = "1.2.3"
    notes: list = field(default_factory=lambda: ["loader note"])

    def voxel_of(self, sop_uid, x, y, frame=None):
        # A fake acquisition: SOP "s<k>" is axial slice k, pixel column x -> index x, row y -> index y.
        return (float(sop_uid[1:]), float(y), float(x))


@lru_cache(maxsize=4)  # built once per argument set; tests only read it
def head_volume(modality="CT", blob_index=(70, 130, 128)):
    shape = (120, 260, 256)
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    centre, radii = (55, 130, 128), (60, 110, 100)
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii))
    inside, outside, bright = (40.0, -1000.0, 400.0) if modality == "CT" else (300.0, 0.0, 1500.0)
    arr = np.where(r2 <= 1.0, inside, outside).astype(np.float32)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((zz, yy, xx), blob_index, SPACING))
    arr[d2 <= 3.0**2] = bright  # a 6 mm bright "aneurysm"
    return FakeVolume(arr, SPACING, canonical_affine(SPACING, (-90.0, -100.0, -60.0)), modality)


CFG = DataConfig(roi_size_mm=(60.0, 90.0, 90.0), out_shape=(30, 45, 45), roi_locator="heuristic",
                 roi_centre_below_top_mm=60.0,
                 roi_centre_fraction_yx=(0.47, 0.5))


def test_prepared_grid_affine_and_dtype():
    vol = head_volume()
    prep = prepare_series(vol, CFG)
    assert prep.image.dtype == np.uint8 and prep.image.shape == (2, 30, 45, 45)
    assert np.allclose(prep.spacing, (2.0, 2.0, 2.0))
    assert prep.modality == "CT" and prep.series_uid == "1.2.3" and "loader note" in prep.notes
    # The ROI centre (in ROI voxels) maps to the box centre (in source voxels).
    centre_roi = (np.array(CFG.out_shape) - 1) / 2.0
    assert np.allclose(prep.lps_of_voxel(centre_roi), apply_affine(vol.affine, np.array(prep.roi.centre)))
    faces = prep.roi_box
    assert np.allclose((faces[1] - faces[0]) * np.array(SPACING), CFG.roi_size_mm)
    assert prep.source_shape == vol.array.shape


def test_bright_blob_lands_where_its_lps_point_maps():
    vol = head_volume(blob_index=(70, 130, 128))
    prep = prepare_series(vol, CFG)
    lps = apply_affine(vol.affine, np.array([70.0, 130.0, 128.0]))
    roi_point = prep.voxel_of_lps(lps)
    assert prep.contains(roi_point).all()
    vessel = prep.image[0].astype(np.int32)
    peak = np.unravel_index(np.argmax(vessel), vessel.shape)
    assert np.abs(np.array(peak) - roi_point).max() <= 1.0
    assert np.allclose(prep.voxel_of_source(np.array([70.0, 130.0, 128.0])), roi_point)


def test_ct_windows_on_the_roi():
    prep = prepare_series(head_volume(), CFG)
    # Brain tissue at 40 HU: vessel window (200, 700) -> (40 + 150) * 255 / 700 = 69.2; brain window (40, 120) -> 128.
    centre = tuple(n // 2 - 6 for n in CFG.out_shape)  # tissue, away from the bright blob
    assert prep.image[1][centre] == 128 and prep.image[0][centre] == 69


def test_mr_uses_percentiles_and_same_channel_count():
    prep = prepare_series(head_volume("MR"), CFG)
    assert prep.image.shape == (2, 30, 45, 45) and prep.modality == "MR"
    assert prep.image[0].max() == 255 and prep.image[0].min() == 0  # air below the 1st percentile of the head


def test_localizer_point_maps_through_voxel_of():
    vol = head_volume()
    prep = prepare_series(vol, CFG)
    roi = localizer_to_roi_voxel(vol, prep, "s70", x=128.0, y=130.0)
    assert np.allclose(roi, prep.voxel_of_source(np.array([70.0, 130.0, 128.0])))


def test_cowseg_nifti_onto_the_roi_grid(tmp_path):
    vol = head_volume()
    prep = prepare_series(vol, CFG)
    # A label volume on a 1 mm RAS grid covering the head; label 13 in a 4 mm cube around a known LPS point.
    point_lps = apply_affine(vol.affine, np.array([70.0, 130.0, 128.0]))
    ras_origin = np.array([-200.0, -200.0, -150.0])
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = ras_origin
    labels = np.zeros((400, 400, 300), dtype=np.uint8)
    ijk = np.rint(point_lps * [-1, -1, 1] - ras_origin).astype(int)
    labels[ijk[0] - 2 : ijk[0] + 3, ijk[1] - 2 : ijk[1] + 3, ijk[2] - 2 : ijk[2] + 3] = 13
    path = tmp_path / "x_cowseg.nii"
    nib.save(nib.Nifti1Image(labels, aff), str(path))
    grid = cowseg_to_roi(path, prep)
    assert grid.shape == prep.image.shape[1:] and grid.dtype == np.uint8
    roi_point = np.rint(prep.voxel_of_lps(point_lps)).astype(int)
    assert grid[tuple(roi_point)] == 13
    assert set(np.unique(grid)) == {0, 13} and (grid == 13).sum() <= 27  # a 5 mm cube on a 2 mm grid


def test_labels_to_roi_rejects_bad_labels(tmp_path):
    prep = prepare_series(head_volume(), CFG)
    with pytest.raises(ValueError, match="0..255"):
        labels_to_roi(np.full((4, 4, 4), -1, dtype=np.int16), np.eye(4), prep, where="bad.nii")
    with pytest.raises(ValueError, match="3D"):
        labels_to_roi(np.zeros((4, 4)), np.eye(4), prep)
    garbage = tmp_path / "g_cowseg.nii"
    garbage.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        cowseg_to_roi(garbage, prep)


def test_unknown_locator_is_a_clear_error():
    # The config refuses the name before any series is prepared, and lists the registered locators.
    with pytest.raises(ValueError, match=r"unknown ROI locator 'nope'; registered: \[.*'heuristic'"):
        prepare_series(head_volume(), DataConfig(roi_locator="nope"))


def test_cowseg_of_a_series_with_guessed_geometry_aligns_by_pixel_index(tmp_path):
    """No geometry tags: the loader's world frame is a guess, so the label map is matched by (column, row, frame)."""
    base = head_volume()
    vol = FakeVolume(base.array, base.spacing, base.affine, notes=["no ImagePositionPatient: stacked every 1.5 mm"])
    vol.slice_sources = [("mf", k) for k in range(base.array.shape[0])]
    vol.voxel_of = lambda sop, x, y, frame=None: (float(frame), float(y), float(x))
    prep = prepare_series(vol, CFG)
    z, y, x = 70, 130, 128
    labels = np.zeros(base.array.shape[::-1], dtype=np.uint8)  # NIfTI order (column, row, frame)
    labels[x - 2 : x + 3, y - 2 : y + 3, z - 1 : z + 2] = 7
    path = tmp_path / "mf_cowseg.nii"
    nib.save(nib.Nifti1Image(labels, np.diag([9.0, 9.0, 9.0, 1.0])), str(path))  # a world affine that is no help
    grid = cowseg_to_roi(path, prep, vol)
    roi = np.rint(prep.voxel_of_source(np.array([z, y, x], dtype=float))).astype(int)
    assert grid[tuple(roi)] == 7
    assert (cowseg_to_roi(path, prep) == 7).sum() == 0  # by world coordinates it would miss entirely
    wrong = tmp_path / "small_cowseg.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(wrong))
    with pytest.raises(ValueError, match="not on its pixel grid"):
        cowseg_to_roi(wrong, prep, vol)


@pytest.mark.parametrize("level", [0, 1, 6])
def test_npz_written_at_any_level_reads_back_identical_to_numpy_savez(tmp_path, level):
    """The cache's npz container (stored by default, chosen by measured time) changes bytes on disk, not arrays."""
    from kaggle_utils.cache import write_npz

    rng = np.random.default_rng(level)
    image = np.zeros((2, 12, 16, 16), dtype=np.uint8)  # mostly air, like an ROI's corners
    image[:, 3:9, 4:12, 4:12] = rng.integers(0, 256, (2, 6, 8, 8))
    arrays = {"image": image, "affine": rng.normal(size=(4, 4))}
    size = write_npz(tmp_path / "kit.npz", arrays, level=level)
    np.savez(tmp_path / "ref.npz", **arrays)
    assert size == (tmp_path / "kit.npz").stat().st_size
    with np.load(tmp_path / "kit.npz") as kit, np.load(tmp_path / "ref.npz") as ref:
        assert sorted(kit.files) == sorted(ref.files) == ["affine", "image"]
        for name in arrays:
            assert kit[name].dtype == ref[name].dtype
            np.testing.assert_array_equal(kit[name], ref[name])
    if level == 0:  # stored: the file is the raw arrays plus small headers
        assert size < sum(a.nbytes for a in arrays.values()) + 2048
    else:
        assert size < arrays["image"].nbytes / 2
