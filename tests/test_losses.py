"""``kaggle_utils.train.losses`` against values worked out by hand with plain ``math`` (no torch loss functions)."""

from __future__ import annotations

import math

import pytest
import torch

from kaggle_utils.schema import N_LABELS, N_LOCATIONS
from kaggle_utils.train import losses


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(x: float, y: float, pos_weight: float = 1.0) -> float:
    """-(pw * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x))), straight from the definition."""
    return -(pos_weight * y * math.log(sigmoid(x)) + (1.0 - y) * math.log(1.0 - sigmoid(x)))


def no_points(batch: int, n: int = 2) -> torch.Tensor:
    """(B, P, 4) localizer points (location, z, y, x), all padding (location -1)."""
    points = torch.zeros(batch, n, 4)
    points[..., 0] = -1
    return points


def test_column_weights_give_present_its_weight_and_average_one():
    w = losses.column_weights(13.0)
    # 13 locations at 1 and Aneurysm Present at 13 sum to 26; scaled by 14 / 26 so the mean is 1.
    assert w.shape == (N_LABELS,)
    assert w[:N_LOCATIONS].tolist() == pytest.approx([14 / 26] * N_LOCATIONS)
    assert w[N_LOCATIONS].item() == pytest.approx(13 * 14 / 26)
    assert losses.column_weights(1.0).tolist() == pytest.approx([1.0] * N_LABELS)


# A 2 x 14 example: logits and 0/1 targets chosen by hand.
LOGITS = [[0.5, -1.0, 2.0, 0.0, -0.3, 1.2, -2.5, 0.8, 0.1, -0.7, 3.0, -1.5, 0.4, 1.0],
          [-0.2, 0.9, -1.8, 0.6, 2.2, -0.4, 0.0, -3.0, 1.4, 0.3, -0.9, 0.7, -1.1, -0.5]]
TARGETS = [[1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1],
           [0, 1, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1]]


def test_series_bce_plain_weighted_and_pos_weighted_by_hand():
    logits, target = torch.tensor(LOGITS), torch.tensor(TARGETS, dtype=torch.float32)
    ones = torch.ones(N_LABELS)
    plain = sum(bce(x, y) for row_x, row_y in zip(LOGITS, TARGETS) for x, y in zip(row_x, row_y)) / 28
    assert losses.series_bce(logits, target, ones).item() == pytest.approx(plain, rel=1e-6)

    # Column weights: Aneurysm Present (last column) weighs 13, then the mean-1 normalisation (14 / 26).
    col_w = [14 / 26] * 13 + [13 * 14 / 26]
    weighted = sum(bce(x, y) * w for row_x, row_y in zip(LOGITS, TARGETS) for x, y, w in zip(row_x, row_y, col_w)) / 28
    got = losses.series_bce(logits, target, losses.column_weights(13.0)).item()
    assert got == pytest.approx(weighted, rel=1e-6)
    assert weighted != pytest.approx(plain, rel=1e-3)  # the weights change the answer

    # pos_weight multiplies the positive term only: 4 for every column.
    pw = 4.0
    pos = sum(bce(x, y, pw) for row_x, row_y in zip(LOGITS, TARGETS) for x, y in zip(row_x, row_y)) / 28
    got = losses.series_bce(logits, target, ones, pos_weight=torch.full((N_LABELS,), pw)).item()
    assert got == pytest.approx(pos, rel=1e-6)


def test_series_bce_of_half_precision_logits_is_float32():
    logits = torch.tensor(LOGITS).half()
    out = losses.series_bce(logits, torch.tensor(TARGETS), torch.ones(N_LABELS))
    assert out.dtype == torch.float32


def test_located_mask_needs_a_point_for_every_positive_location():
    target = torch.zeros(4, N_LABELS)
    target[0, 2] = target[0, -1] = 1  # positive at location 2, which has a point
    target[1, 5] = target[1, -1] = 1  # positive at location 5, no point
    target[3, 1] = target[3, 7] = target[3, -1] = 1  # two positives, only location 7 has a point
    # sample 2 is negative: nothing to localise, so its heatmap target (all zero) is known
    points = no_points(4)
    points[0, 0] = torch.tensor([2, 1.0, 1.0, 1.0])
    points[3, 1] = torch.tensor([7, 0.0, 0.0, 0.0])
    assert losses.located_mask(points, target).tolist() == [True, False, True, False]
    assert losses.located_mask(no_points(4), target).tolist() == [False, False, True, False]


def test_point_heatmap_values_by_hand():
    centres = (torch.arange(3.0), torch.arange(4.0), torch.arange(5.0))
    points = no_points(1, 3)
    points[0, 0] = torch.tensor([4, 1.0, 2.0, 3.0])
    points[0, 1] = torch.tensor([1, 0.0, 0.0, 0.0])
    points[0, 2] = torch.tensor([1, 0.0, 0.0, 2.0])  # a second point of location 1: the maximum counts
    heat = losses.point_heatmap(points, centres, (1.0, 1.0, 1.0))
    assert heat.shape == (1, N_LOCATIONS, 3, 4, 5)
    assert heat[0, 4, 1, 2, 3].item() == pytest.approx(1.0)
    assert heat[0, 4, 1, 2, 4].item() == pytest.approx(math.exp(-0.5))  # one voxel away in x
    assert heat[0, 4, 2, 3, 3].item() == pytest.approx(math.exp(-1.0))  # one away in z and in y
    assert heat[0, 1, 0, 0, 1].item() == pytest.approx(math.exp(-0.5))  # halfway between the two points
    assert heat[0, 1, 0, 0, 0].item() == pytest.approx(1.0)  # max(1, exp(-2)), not the sum
    others = [k for k in range(N_LOCATIONS) if k not in (1, 4)]
    assert heat[0, others].abs().max().item() == 0.0
    # sigma scales each axis: with sigma_x = 2 one voxel in x is exp(-0.125)
    wide = losses.point_heatmap(points, centres, (1.0, 1.0, 2.0))
    assert wide[0, 4, 1, 2, 4].item() == pytest.approx(math.exp(-0.125))
    assert losses.point_heatmap(no_points(1), centres, (1.0, 1.0, 1.0)).abs().max().item() == 0.0  # padding


def test_heatmap_loss_weights_positives_and_ignores_masked_samples():
    logits = torch.tensor([[0.3, -1.2], [5.0, -5.0]])  # (B, cells)
    target = torch.tensor([[0.5, 0.0], [1.0, 1.0]])
    mask = torch.tensor([True, False])
    pw = 3.0
    # weight = 1 + (pw - 1) * target: 2 for the half-positive cell, 1 for the background cell
    expected = (bce(0.3, 0.5) * 2.0 + bce(-1.2, 0.0) * 1.0) / 3.0
    assert losses.heatmap_loss(logits, target, mask, pw).item() == pytest.approx(expected, rel=1e-6)
    changed = logits.clone()
    changed[1] = torch.tensor([-9.0, 9.0])  # the masked-out sample does not count
    assert losses.heatmap_loss(changed, target, mask, pw).item() == pytest.approx(expected, rel=1e-6)

    none = torch.tensor([False, False])
    requires = logits.clone().requires_grad_(True)
    zero = losses.heatmap_loss(requires, target, none, pw)
    assert zero.item() == 0.0
    zero.backward()  # still part of the graph, with a zero gradient
    assert requires.grad is not None and requires.grad.abs().max().item() == 0.0


def test_slice_targets_mark_slices_near_each_point():
    points = no_points(1, 2)
    points[0, 0] = torch.tensor([3, 2.0, 0.0, 0.0])  # location 3 at z = 2
    out = losses.slice_targets(points, torch.arange(5.0), half_width=1.0)
    assert out.shape == (1, 5, N_LABELS)
    assert out[0, :, 3].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # |z - 2| <= 1
    assert out[0, :, -1].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # the "any" column
    assert out[0, :, [k for k in range(N_LOCATIONS) if k != 3]].abs().max().item() == 0.0
    assert losses.slice_targets(no_points(1), torch.arange(5.0), 1.0).abs().max().item() == 0.0


def test_detect_where_loss_by_hand():
    # B = 1, S = 1 slice, a 1 x 2 grid: cell 0 holds location 2 (target 1), cell 1 is background.
    heat_target = torch.zeros(1, N_LOCATIONS, 1, 1, 2)
    heat_target[0, 2, 0, 0, 0] = 1.0
    detect = torch.tensor([[[[0.7, -0.4]]]])  # (B, S, h, w)
    where = torch.zeros(1, N_LOCATIONS, 1, 1, 2)
    where[0, :, 0, 0, 0] = torch.linspace(-1.0, 1.0, N_LOCATIONS)
    where[0, :, 0, 0, 1] = torch.linspace(2.0, -2.0, N_LOCATIONS)  # background cell: ignored by the CE term
    mask = torch.tensor([True])
    pw = 5.0
    detect_term = (bce(0.7, 1.0) * pw + bce(-0.4, 0.0) * 1.0) / (pw + 1.0)
    cell0 = [-1.0 + 2.0 * k / (N_LOCATIONS - 1) for k in range(N_LOCATIONS)]
    ce = -(cell0[2] - math.log(sum(math.exp(v) for v in cell0)))  # cross-entropy towards location 2
    got = losses.detect_where_loss(detect, where, heat_target, mask, pw).item()
    assert got == pytest.approx(detect_term + ce, rel=1e-6)

    # No point near any cell: only the detection term; no sample in the mask: zero.
    empty = torch.zeros_like(heat_target)
    only_detect = (bce(0.7, 0.0) + bce(-0.4, 0.0)) / 2.0
    assert losses.detect_where_loss(detect, where, empty, mask, pw).item() == pytest.approx(only_detect, rel=1e-6)
    assert losses.detect_where_loss(detect, where, heat_target, torch.tensor([False]), pw).item() == 0.0
