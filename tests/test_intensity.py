"""Intensity conversion against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from kaggle_utils.intensity import (
    ct_channels,
    modality_channels,
    mr_channels,
    percentile_ranges,
    range_to_uint8,
    window_to_uint8,
)


def test_window_hand_computed():
    # centre 40, width 80 -> [0, 80] HU onto [0, 255]: 255/80 = 3.1875 per HU; 20 HU -> 63.75 -> 64, 40 -> 127.5 -> 128.
    hu = np.array([-1000.0, 0.0, 20.0, 40.0, 60.0, 80.0, 1000.0], dtype=np.float32)
    out = window_to_uint8(hu, 40.0, 80.0)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 64, 128, 191, 255, 255]


def test_vessel_window_hand_computed():
    # centre 200, width 700 -> [-150, 550]; 255/700 per HU: 200 HU -> 127.5 -> 128; 25 HU -> 63.75 -> 64.
    out = window_to_uint8(np.array([-150.0, 25.0, 200.0, 550.0]), 200.0, 700.0)
    assert out.tolist() == [0, 64, 128, 255]


def test_range_keeps_shape_and_degenerate_range():
    vals = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    out = range_to_uint8(vals, 0.0, 23.0)
    assert out.shape == (2, 3, 4) and out[0, 0, 0] == 0 and out[-1, -1, -1] == 255
    assert range_to_uint8(np.array([1.0, 5.0, 9.0]), 5.0, 5.0).tolist() == [0, 0, 255]


def test_window_rejects_nonpositive_width():
    with pytest.raises(ValueError, match="width"):
        window_to_uint8(np.zeros(3), 40.0, 0.0)


def test_ct_channels_stack_in_window_order():
    hu = np.array([[40.0, 200.0]])
    out = ct_channels(hu, ((200.0, 700.0), (40.0, 80.0)))
    assert out.shape == (2, 1, 2)
    assert out[0].tolist() == [[round((40 + 150) * 255 / 700), 128]]  # 69.21 -> 69
    assert out[1].tolist() == [[128, 255]]


def test_percentiles_of_reference_hand_computed():
    ref = np.arange(101, dtype=np.float32)  # percentile p of 0..100 is exactly p
    assert percentile_ranges(ref, ((1.0, 99.0), (50.0, 90.0))) == [(1.0, 99.0), (50.0, 90.0)]
    out = mr_channels(np.array([0.0, 10.0, 50.0, 100.0]), ((10.0, 90.0),), reference=ref)
    # [10, 90] -> [0, 255]: 50 -> 127.5 -> 128
    assert out.tolist() == [[0, 0, 128, 255]]


def test_mr_without_reference_uses_the_values_themselves():
    vals = np.linspace(0.0, 100.0, 101)
    out = mr_channels(vals, ((0.0, 100.0),))
    assert out[0, 0] == 0 and out[0, -1] == 255 and out[0, 50] == 128


def test_mr_scaling_is_invariant_to_a_global_intensity_scale():
    rng = np.random.default_rng(0)
    vals = rng.gamma(2.0, 100.0, size=(8, 8, 8)).astype(np.float32)
    a = mr_channels(vals, ((1.0, 99.5), (50.0, 99.9)))
    b = mr_channels(vals * 7.0, ((1.0, 99.5), (50.0, 99.9)))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_modality_dispatch_and_equal_channel_counts():
    vals = np.full((2, 2, 2), 40.0)
    ct = modality_channels(vals, "CT", ((40.0, 80.0), (0.0, 100.0)), ((1.0, 99.0), (50.0, 99.0)))
    mr = modality_channels(vals, "MR", ((40.0, 80.0), (0.0, 100.0)), ((1.0, 99.0), (50.0, 99.0)))
    assert ct.shape == mr.shape == (2, 2, 2, 2)
    with pytest.raises(ValueError, match="equal channel counts"):
        modality_channels(vals, "CT", ((40.0, 80.0),), ((1.0, 99.0), (50.0, 99.0)))
    with pytest.raises(ValueError, match="unknown modality"):
        modality_channels(vals, "US", ((40.0, 80.0),), ((1.0, 99.0),))
    with pytest.raises(ValueError, match="outside"):
        percentile_ranges(vals, ((1.0, 101.0),))
