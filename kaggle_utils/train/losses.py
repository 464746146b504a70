"""Losses shared by the models: weighted series BCE, localizer-point heatmaps and the heatmap / per-slice aux loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kaggle_utils.schema import N_LABELS, N_LOCATIONS


def column_weights(present_weight: float, device: torch.device | None = None) -> torch.Tensor:
    """Per-column loss weights: 1 per location, ``present_weight`` for Aneurysm Present (normalised to mean 1)."""
    w = torch.ones(N_LABELS, device=device)
    w[N_LOCATIONS] = present_weight
    return w * (N_LABELS / w.sum())


def series_bce(logits: torch.Tensor, target: torch.Tensor, col_weight: torch.Tensor,
               pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over batch of the column-weighted BCE of the 14 series logits."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none", pos_weight=pos_weight)
    return (loss * col_weight).mean()


def located_mask(points: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) bool: True when every positive location of the sample has a localizer point (heatmap target is known)."""
    loc = points[..., 0].long()  # (B, P), -1 = padding
    has_point = torch.zeros(target.shape[0], N_LOCATIONS, dtype=torch.bool, device=target.device)
    valid = loc >= 0
    if valid.any():
        b_idx = torch.arange(target.shape[0], device=target.device)[:, None].expand_as(loc)
        has_point[b_idx[valid], loc[valid]] = True
    positive = target[:, :N_LOCATIONS] > 0.5
    return (~positive | has_point).all(dim=1)


def point_heatmap(points: torch.Tensor, centres: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                  sigma: tuple[float, float, float]) -> torch.Tensor:
    """Gaussian targets (B, 13, nz, ny, nx) at grid ``centres`` (voxel coordinates per axis) from points (B, P, 4)."""
    cz, cy, cx = centres
    b, p, _ = points.shape
    loc = points[..., 0].long()
    dz = (cz[None, None, :] - points[..., 1:2]) / sigma[0]  # (B, P, nz)
    dy = (cy[None, None, :] - points[..., 2:3]) / sigma[1]
    dx = (cx[None, None, :] - points[..., 3:4]) / sigma[2]
    g = torch.exp(-0.5 * (dz[..., :, None, None] ** 2 + dy[..., None, :, None] ** 2 + dx[..., None, None, :] ** 2))
    g = g * (loc >= 0)[..., None, None, None]
    onehot = F.one_hot(loc.clamp(min=0), N_LOCATIONS).to(g.dtype) * (loc >= 0)[..., None]  # (B, P, 13)
    # max over points of the same location
    heat = (onehot[..., None, None, None] * g[:, :, None]).amax(dim=1)  # (B, 13, nz, ny, nx)
    return heat


def heatmap_loss(heat_logits: torch.Tensor, heat_target: torch.Tensor, mask: torch.Tensor,
                 pos_weight: float) -> torch.Tensor:
    """BCE between heatmap logits and Gaussian targets (same shape, batch first), for the samples in ``mask``."""
    if not mask.any():
        return heat_logits.sum() * 0.0
    logits = heat_logits[mask].float()
    target = heat_target[mask].float()
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weight = 1.0 + (pos_weight - 1.0) * target
    return (loss * weight).sum() / weight.sum()


def slice_targets(points: torch.Tensor, centres_z: torch.Tensor, half_width: float) -> torch.Tensor:
    """(B, S, 14): location k on slice s when a point of k lies within ``half_width`` slices; last column = any."""
    loc = points[..., 0].long()
    near = (centres_z[None, None, :] - points[..., 1:2]).abs() <= half_width  # (B, P, S)
    near = near & (loc >= 0)[..., None]
    onehot = F.one_hot(loc.clamp(min=0), N_LOCATIONS).to(torch.float32) * (loc >= 0)[..., None]  # (B, P, 13)
    per_loc = (onehot[:, :, None, :] * near[..., None].float()).amax(dim=1)  # (B, S, 13)
    present = per_loc.amax(dim=-1, keepdim=True)
    return torch.cat([per_loc, present], dim=-1)


def detect_where_loss(detect: torch.Tensor, where: torch.Tensor, heat_target: torch.Tensor, mask: torch.Tensor,
                      pos_weight: float) -> torch.Tensor:
    """Factorised heatmap loss: BCE of ``detect`` (B, S, h, w) against the any-location target, plus cross-entropy of
    ``where`` (B, 13, S, h, w) towards the point's location, weighted by the target (only near points)."""
    if not mask.any():
        return detect.sum() * 0.0 + where.sum() * 0.0
    det_l = heatmap_loss(detect, heat_target.amax(dim=1), mask, pos_weight)
    target = heat_target[mask].float()  # (b, 13, S, h, w)
    near = target.amax(dim=1)
    if near.sum() <= 0:
        return det_l + where.sum() * 0.0
    ce = F.cross_entropy(where[mask].float(), target.argmax(dim=1), reduction="none")
    return det_l + (ce * near).sum() / near.sum()
