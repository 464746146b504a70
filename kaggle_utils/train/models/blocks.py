"""Building blocks shared by the model families: input normalisation, 2.5D stacks, coordinate channels, max-like
pooling and the label-weight buffers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kaggle_utils.schema import N_LABELS
from kaggle_utils.train.losses import column_weights


def normalise(image: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (the ImageNet convention of the tf_ EfficientNets)."""
    return image.float() / 127.5 - 1.0


def resize_inplane(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, Z, Y, X) -> (B, C, Z, *size) bilinear; unchanged when already that size."""
    b, c, z, h, w = x.shape
    if (h, w) == tuple(size):
        return x
    out = F.interpolate(x.reshape(b, c * z, h, w), size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(b, c, z, *size)


def stack_centres(depth: int, stride: int) -> torch.Tensor:
    """Slice indices the 2.5D stacks are centred on."""
    return torch.arange(0, depth, max(stride, 1))


def make_stacks(x: torch.Tensor, n_slices: int, centres: torch.Tensor) -> torch.Tensor:
    """(B, C, Z, H, W) -> (B, S, n_slices * C, H, W): adjacent slices around each centre (edges repeated)."""
    b, c, z, h, w = x.shape
    offsets = torch.arange(n_slices) - n_slices // 2
    idx = (centres[:, None] + offsets[None, :]).clamp(0, z - 1).to(x.device)  # (S, k)
    stacks = x[:, :, idx]  # (B, C, S, k, H, W)
    return stacks.permute(0, 2, 3, 1, 4, 5).reshape(b, len(centres), n_slices * c, h, w)


def grid_centres(n_cells: int, extent: float) -> torch.Tensor:
    """Voxel-coordinate centres of ``n_cells`` equal cells covering ``extent`` voxels."""
    return (torch.arange(n_cells, dtype=torch.float32) + 0.5) * (extent / n_cells) - 0.5


# ---------------------------------------------------------------------------------------------------------------------
# Coordinate channels: the one implementation every model uses


def coordinate_channels(positions: Sequence[torch.Tensor], full: Sequence[int]) -> torch.Tensor:
    """(B, 3, nz, ny, nx) coordinates in [-1, 1] of the whole ROI (``full`` voxels per axis) at the voxel positions
    ``positions[a]`` (B, n_a) along each axis (z, y, x).

    Voxel v of an axis of n voxels spans [v - 0.5, v + 0.5], so position v maps to 2 (v + 0.5) / n - 1: the ROI's
    edges are -1 and 1 and a crop's channels are those of the same voxels in the whole ROI.
    """
    axes = [2.0 * (p.float() + 0.5) / n - 1.0 for p, n in zip(positions, full)]
    b = axes[0].shape[0]
    nz, ny, nx = (a.shape[1] for a in axes)
    z = axes[0][:, :, None, None].expand(b, nz, ny, nx)
    y = axes[1][:, None, :, None].expand(b, nz, ny, nx)
    x = axes[2][:, None, None, :].expand(b, nz, ny, nx)
    return torch.stack([z, y, x], dim=1)


def feature_grid_coords(origin: torch.Tensor, cells: Sequence[int], extent: Sequence[float],
                        full: Sequence[int]) -> torch.Tensor:
    """(B, 3, *cells) ROI coordinates of the centres of a feature grid of ``cells`` cells covering ``extent`` voxels
    per axis, for inputs that start at ``origin`` (B, 3) voxels of a ROI of ``full`` voxels."""
    origin = origin.float()
    positions = [origin[:, a, None] + grid_centres(n, e).to(origin.device)[None, :]
                 for a, (n, e) in enumerate(zip(cells, extent))]
    return coordinate_channels(positions, full)


def global_coords(offset: torch.Tensor, size: tuple[int, int, int], full: tuple[int, int, int],
                  device: torch.device) -> torch.Tensor:
    """(B, 3, *size) voxel-wise ROI coordinates for patches of ``size`` voxels starting at ``offset`` (B, 3)."""
    return feature_grid_coords(offset.to(device), size, size, full)


def roi_coords(origin: torch.Tensor, centres: torch.Tensor, grid: tuple[int, int], crop_hw: tuple[float, float],
               full: tuple[int, int, int]) -> torch.Tensor:
    """(B, S, 3, gh, gw) ROI coordinates for 2.5D features: z of each stack's centre slice, y, x of each feature cell's
    centre, for crops starting at ``origin`` (B, 3) cache voxels and spanning ``crop_hw`` cache pixels in-plane."""
    origin = origin.float()
    dev = origin.device
    positions = [origin[:, 0, None] + centres.to(dev).float()[None, :],
                 origin[:, 1, None] + grid_centres(grid[0], crop_hw[0]).to(dev)[None, :],
                 origin[:, 2, None] + grid_centres(grid[1], crop_hw[1]).to(dev)[None, :]]
    return coordinate_channels(positions, full).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------------
# Pooling and heads


def lse(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Log-sum-exp over ``dims`` (a smooth maximum that is never below the maximum)."""
    return torch.logsumexp(x.flatten(dims[0], dims[-1]), dim=dims[0]) if len(dims) > 1 else torch.logsumexp(x, dims[0])


def consistent_present(present_own: torch.Tensor, loc_logits: torch.Tensor) -> torch.Tensor:
    """Aneurysm Present = log-sum-exp(own logit, location logits) >= max location logit."""
    return torch.logsumexp(torch.cat([present_own[:, None], loc_logits], dim=1), dim=1)


class LabelWeights(nn.Module):
    """Mixin-like holder of the column / class weights (non-persistent buffers: never part of model.pt)."""

    def init_label_weights(self, present_weight: float) -> None:
        self.register_buffer("col_weight", column_weights(present_weight), persistent=False)
        self.register_buffer("pos_weight", torch.ones(N_LABELS), persistent=False)

    def set_label_priors(self, priors: np.ndarray, enabled: bool) -> None:
        """Class-weighted BCE: pos_weight = negatives / positives per column (clipped to [1, 50])."""
        if enabled:
            p = np.clip(np.asarray(priors, dtype=np.float64), 1e-3, 1 - 1e-3)
            self.pos_weight.copy_(torch.as_tensor(np.clip((1 - p) / p, 1.0, 50.0), dtype=torch.float32))

    def active_pos_weight(self) -> torch.Tensor | None:
        """``pos_weight`` when class weighting is on (any weight other than 1), else None."""
        return self.pos_weight if self.pos_weight.ne(1).any() else None
