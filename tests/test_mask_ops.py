"""The heuristic locator's fast mask operations equal scipy's, and prepare_series output is unchanged by them."""

import numpy as np
import pytest
from scipy import ndimage

from kaggle_utils import roi
from kaggle_utils.config import DataConfig
from kaggle_utils.dicom import load_series
from kaggle_utils.mask_ops import binary_opening_cross, largest_component_exact
from kaggle_utils.preprocess import prepare_series
from kaggle_utils.synth import make_series

CROSS = ndimage.generate_binary_structure(3, 1)


def scipy_largest_component(mask: np.ndarray) -> np.ndarray:
    """roi.largest_component as it was before mask_ops (the reference)."""
    opened = ndimage.binary_opening(mask, structure=CROSS)
    if not opened.any():
        return mask
    labels, n = ndimage.label(opened)
    if n == 1:
        return opened
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


@pytest.mark.parametrize("shape", [(1, 6, 7), (2, 3, 4), (17, 23, 19), (40, 44, 36)])
@pytest.mark.parametrize("fill", [0.2, 0.6, 0.85, 0.97])
def test_opening_and_largest_component_equal_scipy(shape, fill):
    rng = np.random.default_rng(hash((shape, fill)) % 2**32)
    mask = rng.random(shape) < fill
    assert np.array_equal(binary_opening_cross(mask), ndimage.binary_opening(mask, structure=CROSS))
    got = largest_component_exact(mask)
    assert got.dtype == bool and got.shape == mask.shape
    assert np.array_equal(got, scipy_largest_component(mask))


def test_two_equal_components_keep_the_first_in_raster_order():
    mask = np.zeros((10, 10, 20), dtype=bool)
    mask[2:7, 2:7, 2:7] = True
    mask[2:7, 2:7, 12:17] = True
    got = largest_component_exact(mask)
    assert got[4, 4, 4] and not got[4, 4, 14]
    assert np.array_equal(got, scipy_largest_component(mask))


def test_noise_only_mask_falls_back_to_the_raw_mask():
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[::3, ::3, ::3] = True  # isolated voxels: the opening removes all of them
    assert np.array_equal(largest_component_exact(mask), mask)


@pytest.mark.parametrize("modality", ["CTA", "MRA"])
def test_prepare_series_cache_arrays_bit_identical_to_the_scipy_locator(tmp_path, monkeypatch, modality):
    truth = make_series(
        tmp_path, modality=modality, image_size=96, n_slices=48, seed=3, aneurysms=("Anterior Communicating Artery",)
    )
    volume = load_series(truth["path"])
    # Salt noise and a bright plate behind the head (a table): the opening and the component choice move the box
    # here (without them its y centre moves by 1.4-4.6 voxels), so the comparison covers them.
    rng = np.random.default_rng(0)
    volume.array[rng.random(volume.array.shape) < 0.03] = volume.array.max()
    volume.array[:, -6:-3, :] = volume.array.max()
    cfg = DataConfig(roi_locator="heuristic")
    new = prepare_series(volume, cfg)
    monkeypatch.setattr(roi, "largest_component", scipy_largest_component)
    old = prepare_series(volume, cfg)
    assert new.roi == old.roi
    monkeypatch.setattr(roi, "largest_component", lambda mask: mask)
    assert prepare_series(volume, cfg).roi != new.roi  # the masks matter to the box on this input
    assert new.image.dtype == old.image.dtype and np.array_equal(new.image, old.image)
    assert np.array_equal(new.affine, old.affine)
