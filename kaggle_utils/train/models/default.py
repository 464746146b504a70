"""``default``: a timm 2D backbone over 2.5D stacks (adjacent slices x windows as channels), a localizer heatmap head
with coordinate channels, a sequence model across slices (bi-GRU / transformer) and max-like (log-sum-exp) pooling to
14 outputs; auxiliary heatmap + per-slice losses from the localizer points. Trained on crops, it is scored in windows
of the crop's size (``predict.inference_windows``, ``predict.windowed_forward``; ``infer.windowed``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from kaggle_utils.config import ConfigError, ExperimentConfig
from kaggle_utils.schema import N_LABELS, N_LOCATIONS
from kaggle_utils.train.losses import (
    detect_where_loss,
    heatmap_loss,
    located_mask,
    point_heatmap,
    series_bce,
    slice_targets,
)
from kaggle_utils.train.models.blocks import (
    LabelWeights,
    consistent_present,
    grid_centres,
    lse,
    make_stacks,
    normalise,
    resize_inplane,
    roi_coords,
    stack_centres,
)
from kaggle_utils.train.models.registry import register_model
from kaggle_utils.train.models.weights import create_backbone

log = logging.getLogger(__name__)


class SliceSequence(nn.Module):
    """Context across slices: bidirectional GRU, a small transformer encoder, or nothing."""

    def __init__(self, kind: str, dim: int, dropout: float):
        super().__init__()
        self.kind = kind
        if kind == "gru":
            self.net = nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True)
        elif kind == "transformer":
            layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=dropout,
                                               batch_first=True)
            self.net = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        elif kind == "none":
            self.net = nn.Identity()
        else:
            raise ConfigError(f"unknown model.seq_model {kind!r}; choose 'gru', 'transformer' or 'none'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gru":
            out, _ = self.net(x)
            return x + out
        return self.net(x)


class Stack25DModel(LabelWeights):
    """The kit's default recipe (see the module docstring)."""

    takes_origin = True  # batch["origin"] places a crop in the ROI: windowed inference (see ``inference_windows``)

    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        m = cfg.model
        self.n_windows = len(cfg.data.ct_windows)
        if m.in_chans % self.n_windows:
            raise ConfigError(f"model.in_chans={m.in_chans} must be a multiple of the cache's {self.n_windows} "
                              "image channels (slices per stack x windows)")
        self.slices_per_stack = m.in_chans // self.n_windows
        self.image_size = m.image_size
        self.slice_stride = m.slice_stride
        self.aux_weight = m.aux_loss_weight
        self.heat_pos_weight = m.heatmap_pos_weight
        self.backbone = create_backbone(m.backbone, m.in_chans, m.pretrained_file, num_classes=0)
        if not hasattr(self.backbone, "forward_intermediates") or m.feature_level >= len(self.backbone.feature_info):
            raise ConfigError(f"model.backbone {m.backbone!r} has no feature level {m.feature_level} "
                              "(it must support timm's forward_intermediates)")
        self.feature_level = m.feature_level
        feat = self.backbone.feature_info[m.feature_level]["num_chs"]
        # drop the stages after the feature level: they would cost time and never get a gradient
        self.backbone.prune_intermediate_layers(indices=[m.feature_level], prune_norm=True, prune_head=True)
        self.full_shape = tuple(int(v) for v in cfg.data.out_shape)  # the whole ROI (Z, Y, X) the cache holds
        if self.image_size < self.full_shape[-1]:
            # the backbone would see coarser pixels than the cache stores: issue 12's 112 mm wide box cost the
            # cpu_tiny model (then 96 px) 1.17 mm pixels and held-out quality against the old 96 mm cube at 1 mm
            log.warning("model.image_size=%d is smaller than the cache's in-plane width of %d px (data.out_shape): "
                        "the backbone sees the ROI downscaled by %.2f; set model.image_size=%d to keep the cache's "
                        "resolution", self.image_size, self.full_shape[-1], self.image_size / self.full_shape[-1],
                        self.full_shape[-1])
        self.neck = nn.Sequential(nn.Conv2d(feat + 3, m.head_dim, 1), nn.BatchNorm2d(m.head_dim), nn.ReLU(inplace=True))
        # second neck conv: 3x3 in-plane, or 3x3x3 across neighbouring stacks too (a sphere and a tube differ in z)
        self.neck_3d = m.neck_3d
        conv, norm = (nn.Conv3d, nn.BatchNorm3d) if m.neck_3d else (nn.Conv2d, nn.BatchNorm2d)
        self.neck2 = nn.Sequential(conv(m.head_dim, m.head_dim, 3, padding=1), norm(m.head_dim), nn.ReLU(inplace=True))
        if m.heat_head not in ("per_location", "detect_where"):
            raise ConfigError(f"unknown model.heat_head {m.heat_head!r}; choose 'per_location' or 'detect_where'")
        self.factorised = m.heat_head == "detect_where"
        self.heat_head = nn.Conv2d(m.head_dim, N_LOCATIONS, 1)  # per-location heat, or ``where`` when factorised
        self.detect_head = nn.Conv2d(m.head_dim, 1, 1) if self.factorised else None
        self.slice_proj = nn.Sequential(nn.Linear(2 * m.head_dim + N_LOCATIONS, m.seq_hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(m.dropout))
        self.sequence = SliceSequence(m.seq_model, m.seq_hidden, m.dropout)
        self.slice_head = nn.Linear(m.seq_hidden, N_LABELS)
        # sparse targets: start near "nothing here"
        nn.init.constant_(self.detect_head.bias if self.factorised else self.heat_head.bias, -4.0)
        nn.init.constant_(self.slice_head.bias, -4.0)
        self.init_label_weights(m.present_loss_weight)

    def heat_maps(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Per-location heat logits (N, 13, h, w), plus detect (N, 1, h, w) and where (N, 13, h, w) when factorised."""
        if not self.factorised:
            return self.heat_head(d), None, None
        detect, where = self.detect_head(d), self.heat_head(d)
        return detect + F.log_softmax(where, dim=1), detect, where

    def forward(self, batch: dict) -> dict:
        image = batch["image"]
        # in-plane scale from the cache grid to the backbone grid; a training crop keeps that scale
        scale = self.image_size / self.full_shape[-1]
        size = tuple(max(1, round(n * scale)) for n in image.shape[-2:])
        x = resize_inplane(normalise(image), size)
        b, _, depth, h, w = x.shape
        centres = stack_centres(depth, self.slice_stride)
        stacks = make_stacks(x, self.slices_per_stack, centres)  # (B, S, k*C, H, W)
        s = stacks.shape[1]
        feat = self.backbone.forward_intermediates(stacks.flatten(0, 1), indices=[self.feature_level],
                                                   intermediates_only=True)[-1]  # (B*S, F, h', w')
        origin = batch.get("origin")
        if origin is None:
            origin = torch.zeros(b, 3)
        coords = roi_coords(origin.to(feat.device, torch.float32), centres.to(feat.device), feat.shape[-2:],
                            (h / scale, w / scale), self.full_shape).to(feat.dtype)  # (B, S, 3, h', w')
        d = self.neck(torch.cat([feat, coords.flatten(0, 1)], dim=1))
        if self.neck_3d:  # (B*S, D, h, w) -> (B, D, S, h, w) and back
            d5 = self.neck2(d.view(b, s, *d.shape[1:]).transpose(1, 2))
            d = d5.transpose(1, 2).flatten(0, 1)
        else:
            d = self.neck2(d)
        heat, detect, where = self.heat_maps(d)  # (B*S, 13, h', w')
        heat_slice = lse(heat, (2, 3))  # (B*S, 13)
        pooled = torch.cat([d.mean(dim=(2, 3)), d.amax(dim=(2, 3)), heat_slice], dim=1)
        seq = self.sequence(self.slice_proj(pooled).view(b, s, -1))
        slice_logits = self.slice_head(seq)  # (B, S, 14)
        slice_logits = torch.cat([slice_logits[..., :N_LOCATIONS] + heat_slice.view(b, s, -1),
                                  slice_logits[..., N_LOCATIONS:]], dim=-1)
        loc = lse(slice_logits[..., :N_LOCATIONS].transpose(1, 2), (2,))  # (B, 13)
        present = consistent_present(lse(slice_logits[..., N_LOCATIONS], (1,)), loc)
        logits = torch.cat([loc, present[:, None]], dim=1)
        out = {"logits": logits, "slice_logits": slice_logits, "slice_z": centres.to(logits.device)}
        if "target" in batch:
            maps = heat if detect is None else torch.cat([detect, where], dim=1)
            out["loss"] = self.loss(batch, logits, slice_logits, maps.view(b, s, -1, *heat.shape[-2:]),
                                    centres.to(x.device, torch.float32), depth, (h, w))
        return out

    def loss(self, batch: dict, logits: torch.Tensor, slice_logits: torch.Tensor, heat: torch.Tensor,
             centres: torch.Tensor, depth: int, size: tuple[int, int]) -> torch.Tensor:
        """Series BCE + aux_loss_weight * (heatmap BCE + per-slice BCE) on samples whose points are complete."""
        target = batch["target"]
        main = series_bce(logits, target, self.col_weight, self.active_pos_weight())
        if self.aux_weight <= 0 or "points" not in batch:
            return main
        points = batch["points"].float().clone()
        src_h, src_w = batch["image"].shape[-2:]
        points[..., 2] = (points[..., 2] + 0.5) * size[0] / src_h - 0.5  # into the resized slice grid
        points[..., 3] = (points[..., 3] + 0.5) * size[1] / src_w - 0.5
        mask = located_mask(points, target)
        hh, ww = heat.shape[-2:]
        cell = (size[0] / hh, size[1] / ww)
        heat_t = point_heatmap(points, (centres, grid_centres(hh, size[0]).to(heat.device),
                                        grid_centres(ww, size[1]).to(heat.device)),
                               (max(1.0, self.slices_per_stack / 2), 0.75 * cell[0], 0.75 * cell[1]))
        if self.factorised:  # heat holds [detect, where x 13]
            heat_l = detect_where_loss(heat[:, :, 0], heat[:, :, 1:].permute(0, 2, 1, 3, 4), heat_t, mask,
                                       self.heat_pos_weight)
        else:
            heat_l = heatmap_loss(heat.permute(0, 2, 1, 3, 4), heat_t, mask, self.heat_pos_weight)
        slice_t = slice_targets(points, centres, max(1.0, self.slices_per_stack / 2))
        if mask.any():
            slice_l = F.binary_cross_entropy_with_logits(slice_logits[mask].float(), slice_t[mask])
        else:
            slice_l = slice_logits.sum() * 0.0
        return main + self.aux_weight * (heat_l + slice_l)


@register_model("default")
def build_default(cfg: ExperimentConfig) -> nn.Module:
    return Stack25DModel(cfg)
