"""ROI locator and box resampling on hand-made volumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from kaggle_utils.config import DataConfig
from kaggle_utils.roi import (
    HeuristicLocator,
    RoiBox,
    available_locators,
    clamp_centre_inside,
    get_locator,
    head_extent,
    register_locator,
    resample_box,
    roi_affine,
)


@dataclass
class FakeVolume:
    array: np.ndarray
    spacing: tuple[float, float, float]
    modality: str = "CT"
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    notes: list = field(default_factory=list)


def ellipsoid_head(shape, centre, radii, inside=40.0, outside=-1000.0):
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii))
    return np.where(r2 <= 1.0, inside, outside).astype(np.float32)


def test_box_grid_tiles_the_box():
    box = RoiBox(centre=(10.0, 10.0, 10.0), size_mm=(4.0, 4.0, 8.0))
    start, step = box.grid((1.0, 1.0, 2.0), (2, 2, 2))
    # z: box covers indices [8, 12); two output voxels of 2 mm -> centres at 9 and 11.
    assert np.allclose(start, [9.0, 9.0, 9.0]) and np.allclose(step, [2.0, 2.0, 2.0])
    assert np.allclose(box.index_bounds((1.0, 1.0, 2.0)), [[8, 8, 8], [12, 12, 12]])


def test_resample_identity_grid_returns_the_array():
    arr = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    out = resample_box(arr, np.zeros(3), np.ones(3), arr.shape, cval=0.0)
    assert np.allclose(out, arr)


def test_resample_reproduces_a_linear_function_exactly():
    zz, yy, xx = np.meshgrid(np.arange(20), np.arange(30), np.arange(40), indexing="ij")
    arr = (2.0 * zz + 3.0 * yy - 0.5 * xx).astype(np.float32)
    start, step = np.array([3.25, 5.5, 7.75]), np.array([0.5, 1.25, 2.0])
    out = resample_box(arr, start, step, (10, 12, 9), cval=0.0, antialias=True)
    z = start[0] + step[0] * np.arange(10)
    y = start[1] + step[1] * np.arange(12)
    x = start[2] + step[2] * np.arange(9)
    expected = 2.0 * z[:, None, None] + 3.0 * y[None, :, None] - 0.5 * x[None, None, :]
    assert np.allclose(out, expected, atol=1e-4)


def test_resample_outside_the_volume_is_filled():
    arr = np.ones((4, 4, 4), dtype=np.float32)
    out = resample_box(arr, np.array([10.0, 0.0, 0.0]), np.ones(3), (2, 2, 2), cval=-7.0)
    assert np.all(out == -7.0)
    # Half inside: the inside part keeps its value, the outside part is padded.
    half = resample_box(arr, np.array([2.0, 0.0, 0.0]), np.ones(3), (4, 2, 2), cval=-7.0)
    assert np.all(half[:2] == 1.0) and np.all(half[3:] == -7.0)


def test_antialias_averages_a_thin_line_instead_of_skipping_it():
    arr = np.zeros((3, 3, 30), dtype=np.float32)
    arr[1, 1, 1::3] = 1.0  # one-voxel bright dots, every third voxel, all between the plain samples
    start, step = np.array([1.0, 1.0, 0.0]), np.array([1.0, 1.0, 3.0])
    plain = resample_box(arr, start, step, (1, 1, 10), cval=0.0, antialias=False)
    smooth = resample_box(arr, start, step, (1, 1, 10), cval=0.0, antialias=True)
    assert plain.max() == 0.0  # point sampling misses every dot
    assert np.allclose(smooth[0, 0, 1:-1], 1.0 / 3.0, atol=1e-6)  # area average keeps the mean


def test_roi_affine_composes_the_grid():
    src = np.diag([2.0, 0.5, 0.5, 1.0])
    src[:3, 3] = [10.0, -20.0, 30.0]
    aff = roi_affine(src, np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 4.0]))
    # ROI voxel (1, 1, 1) -> source index (3, 6, 7) -> LPS
    assert np.allclose(aff @ [1, 1, 1, 1], src @ [3, 6, 7, 1])


def test_head_extent_of_an_ellipsoid():
    arr = ellipsoid_head((80, 100, 90), centre=(35, 52, 45), radii=(30, 40, 36))
    ext = head_extent(arr, (2.0, 2.0, 2.0), threshold=-300.0)
    assert abs(ext.z_top - 65) <= 2 and abs(ext.z_bottom - 5) <= 2
    assert abs((ext.y_range[0] + ext.y_range[1]) / 2 - 52) <= 2
    assert abs((ext.x_range[0] + ext.x_range[1]) / 2 - 45) <= 2
    assert not ext.top_truncated


def test_head_extent_ignores_a_table_and_noise():
    arr = ellipsoid_head((80, 100, 90), centre=(35, 52, 45), radii=(30, 40, 36))
    arr[:, 95:97, :] = 100.0  # a CT table under the head, full length in z
    rng = np.random.default_rng(1)
    idx = tuple(rng.integers(0, n, 30) for n in arr.shape)
    arr[idx] = 500.0  # scattered bright noise voxels in the air
    ext = head_extent(arr, (2.0, 2.0, 2.0), threshold=-300.0)
    assert abs(ext.z_top - 65) <= 2
    assert abs((ext.y_range[0] + ext.y_range[1]) / 2 - 52) <= 4


def test_heuristic_box_below_the_top_and_central():
    cfg = DataConfig(roi_size_mm=(40.0, 60.0, 60.0), roi_centre_below_top_mm=50.0, roi_centre_fraction_yx=(0.47, 0.5))
    arr = ellipsoid_head((80, 100, 90), centre=(35, 52, 45), radii=(30, 40, 36))
    box = get_locator("heuristic").locate(FakeVolume(arr, (2.0, 2.0, 2.0)), cfg)
    assert box.locator == "heuristic" and box.size_mm == (40.0, 60.0, 60.0)
    assert abs(box.centre[0] - (65 - 25)) <= 2  # 50 mm = 25 slices under the top
    assert abs(box.centre[1] - 52) <= 3 and abs(box.centre[2] - 45) <= 3  # head sampled every 2nd voxel


def test_heuristic_with_truncated_top_centres_on_the_imaged_head():
    cfg = DataConfig(roi_size_mm=(20.0, 60.0, 60.0))
    # A slab: the head fills z entirely (like a TOF-MRA slab), MR intensities.
    arr = ellipsoid_head((40, 100, 90), centre=(20, 50, 45), radii=(200, 40, 36), inside=300.0, outside=0.0)
    box = HeuristicLocator().locate(FakeVolume(arr, (1.0, 2.0, 2.0), modality="MR"), cfg)
    assert abs(box.centre[0] - 19.5) <= 1.0
    assert any("cut off" in n for n in box.notes)


def test_clamp_centre_inside():
    assert clamp_centre_inside(2.0, 5.0, 100) == 4.5  # box [-0.5, 9.5] touches the bottom face
    assert clamp_centre_inside(98.0, 5.0, 100) == 94.5
    assert clamp_centre_inside(50.0, 5.0, 100) == 50.0
    assert clamp_centre_inside(3.0, 80.0, 100) == 49.5  # box larger than the volume: centred


def test_registry_adds_and_rejects_names():
    @register_locator("test_fixed_centre")
    class Fixed:
        def locate(self, volume, data_cfg):
            return RoiBox((1.0, 2.0, 3.0), tuple(data_cfg.roi_size_mm), "test_fixed_centre")

    assert "test_fixed_centre" in available_locators() and "heuristic" in available_locators()
    assert get_locator("test_fixed_centre").locate(None, DataConfig()).centre == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="already registered"):
        register_locator("heuristic")(Fixed)
    with pytest.raises(KeyError, match="unknown ROI locator"):
        get_locator("nope")
