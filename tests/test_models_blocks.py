"""``kaggle_utils.train.models.blocks``: each block against shapes and values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from kaggle_utils.schema import N_LABELS
from kaggle_utils.train.losses import column_weights
from kaggle_utils.train.models import blocks


def test_normalise_maps_uint8_to_minus_one_one():
    out = blocks.normalise(torch.tensor([0, 255, 51], dtype=torch.uint8))
    assert out.dtype == torch.float32
    assert out.tolist() == pytest.approx([-1.0, 1.0, 51 / 127.5 - 1.0])  # -0.6


def test_resize_inplane_bilinear_half_pixel_values():
    x = torch.zeros(1, 2, 3, 1, 2)
    x[..., 0, 1] = 1.0  # every (channel, slice) row is [0, 1]
    out = blocks.resize_inplane(x, (1, 4))
    assert out.shape == (1, 2, 3, 1, 4)
    # half-pixel sampling: output x of 4 reads input (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped to [0, 1])
    assert out[0, 1, 2, 0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    assert blocks.resize_inplane(x, (1, 2)) is x  # already that size


def test_stack_centres_and_make_stacks_repeat_edges():
    assert blocks.stack_centres(10, 3).tolist() == [0, 3, 6, 9]
    assert blocks.stack_centres(3, 0).tolist() == [0, 1, 2]  # stride 0 counts as 1
    x = torch.zeros(1, 2, 5, 1, 1)
    x[0, 0, :, 0, 0] = torch.tensor([10.0, 11, 12, 13, 14])
    x[0, 1] = x[0, 0] + 100  # second channel
    stacks = blocks.make_stacks(x, 3, torch.tensor([0, 2, 4]))
    assert stacks.shape == (1, 3, 6, 1, 1)
    # slice-major, channel-minor: (z-1, c0), (z-1, c1), (z, c0), ...; the first and last slices repeat at the edges
    assert stacks[0, :, :, 0, 0].tolist() == [[10, 110, 10, 110, 11, 111],
                                              [11, 111, 12, 112, 13, 113],
                                              [13, 113, 14, 114, 14, 114]]


def test_grid_centres():
    assert blocks.grid_centres(2, 4.0).tolist() == [0.5, 2.5]  # cells [-0.5, 1.5] and [1.5, 3.5]
    assert blocks.grid_centres(4, 4.0).tolist() == [0.0, 1.0, 2.0, 3.0]  # one cell per voxel: the voxels


def test_coordinate_channels_corners_by_hand():
    # z: voxels 0 and 3 of 4; y: voxels 0 and 7 of 8; x: the outer edges -0.5 and 9.5 of 10 voxels
    positions = [torch.tensor([[0.0, 3.0]]), torch.tensor([[0.0, 7.0]]), torch.tensor([[-0.5, 9.5]])]
    c = blocks.coordinate_channels(positions, (4, 8, 10))
    assert c.shape == (1, 3, 2, 2, 2)
    # 2 (v + 0.5) / n - 1
    assert c[0, :, 0, 0, 0].tolist() == pytest.approx([-0.75, -0.875, -1.0])
    assert c[0, :, 1, 1, 1].tolist() == pytest.approx([0.75, 0.875, 1.0])
    assert c[0, :, 1, 0, 1].tolist() == pytest.approx([0.75, -0.875, 1.0])
    assert c[0, :, 0, 1, 0].tolist() == pytest.approx([-0.75, 0.875, -1.0])


def test_feature_grid_and_global_coords_by_hand():
    # One z cell over 4 voxels from z = 2 (centre 3.5 of 8 -> 0); two y/x cells over 8 voxels (centres 1.5, 5.5 of 8)
    c = blocks.feature_grid_coords(torch.tensor([[2, 0, 0]]), (1, 2, 2), (4.0, 8.0, 8.0), (8, 8, 8))
    assert c.shape == (1, 3, 1, 2, 2)
    assert c[0, :, 0, 0, 0].tolist() == pytest.approx([0.0, -0.5, -0.5])
    assert c[0, :, 0, 1, 1].tolist() == pytest.approx([0.0, 0.5, 0.5])
    # voxel-wise: a 2^3 patch at the corner of a 4^3 ROI, and the same patch one voxel further in x (a crop's channels
    # are those of the same voxels in the whole ROI)
    g = blocks.global_coords(torch.tensor([[0, 0, 0], [0, 0, 1]]), (2, 2, 2), (4, 4, 4), torch.device("cpu"))
    assert g.shape == (2, 3, 2, 2, 2)
    assert g[0, :, 0, 0, 0].tolist() == pytest.approx([-0.75, -0.75, -0.75])
    assert g[0, :, 1, 1, 1].tolist() == pytest.approx([-0.25, -0.25, -0.25])
    assert g[1, 2, 0, 0, :].tolist() == pytest.approx([-0.25, 0.25])
    assert torch.equal(g[1, 2, :, :, 0], g[0, 2, :, :, 1])


def test_roi_coords_for_2p5d_stacks_by_hand():
    # crops from (z, y, x) = (1, 2, 4) of a (4, 8, 16) ROI; stacks centred on slices 0 and 2; a 2 x 2 feature grid over
    # 4 x 4 pixels (cell centres at +0.5 and +2.5)
    c = blocks.roi_coords(torch.tensor([[1, 2, 4]]), torch.tensor([0, 2]), (2, 2), (4.0, 4.0), (4, 8, 16))
    assert c.shape == (1, 2, 3, 2, 2)  # (B, S, 3, gh, gw)
    assert c[0, 0, :, 0, 0].tolist() == pytest.approx([-0.25, -0.25, -0.375])  # z 1, y 2.5, x 4.5
    assert c[0, 1, :, 1, 0].tolist() == pytest.approx([0.75, 0.25, -0.375])  # z 3, y 4.5, x 4.5
    assert c[0, 1, :, 1, 1].tolist() == pytest.approx([0.75, 0.25, -0.125])  # x 6.5


def test_lse_and_consistent_present_by_hand():
    x = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), math.log(2.0)]]])  # (1, 2, 2): exp sums to 8
    assert blocks.lse(x, (1, 2)).tolist() == pytest.approx([math.log(8.0)])
    assert blocks.lse(x, (2,)).tolist() == [pytest.approx([math.log(4.0), math.log(4.0)])]
    own = torch.tensor([math.log(2.0)])
    locations = torch.zeros(1, 13)  # 13 logits of 0: exp sums to 13
    present = blocks.consistent_present(own, locations)
    assert present.tolist() == pytest.approx([math.log(15.0)])
    big = torch.zeros(1, 13)
    big[0, 4] = 9.0
    assert blocks.consistent_present(torch.tensor([-9.0]), big).item() >= 9.0  # never below the max location


class Holder(blocks.LabelWeights):
    def __init__(self, present_weight: float):
        super().__init__()
        self.init_label_weights(present_weight)


def test_label_weights_buffers_and_pos_weight_from_priors():
    h = Holder(13.0)
    assert torch.equal(h.col_weight, column_weights(13.0))
    assert h.state_dict() == {}  # non-persistent: never part of model.pt
    assert h.active_pos_weight() is None
    priors = np.full(N_LABELS, 0.5)
    priors[:4] = [0.2, 0.0005, 0.9, 0.01]
    h.set_label_priors(priors, enabled=False)
    assert h.active_pos_weight() is None  # off: unchanged
    h.set_label_priors(priors, enabled=True)
    # (1 - p) / p clipped to [1, 50]; p clipped to [1e-3, 1 - 1e-3] first: 0.8/0.2 = 4, 999 -> 50, 0.11 -> 1, 99 -> 50
    assert h.active_pos_weight()[:5].tolist() == pytest.approx([4.0, 50.0, 1.0, 50.0, 1.0])
    assert isinstance(h, nn.Module)
