"""``cnn3d``: a small 3D CNN over the ROI volume with a coordinate-aware heatmap head; Aneurysm Present is
log-sum-exp(own logit, 13 location logits), so it is never below the largest location logit."""

from __future__ import annotations

import torch
import torch.nn as nn

from kaggle_utils.config import ExperimentConfig
from kaggle_utils.schema import N_LOCATIONS
from kaggle_utils.train.losses import heatmap_loss, located_mask, point_heatmap, series_bce
from kaggle_utils.train.models.blocks import (
    LabelWeights,
    consistent_present,
    feature_grid_coords,
    grid_centres,
    lse,
    normalise,
)
from kaggle_utils.train.models.registry import register_model


def conv3d_block(cin: int, cout: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(cout),
                         nn.ReLU(inplace=True), nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout),
                         nn.ReLU(inplace=True))


class Small3DModel(LabelWeights):
    """A 4-stage 3D CNN over the ROI volume with a coordinate-aware heatmap head (stride 8 in z, 16 in-plane)."""

    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        m = cfg.model
        w = m.width
        chans = len(cfg.data.ct_windows)
        self.aux_weight = m.aux_loss_weight
        self.heat_pos_weight = m.heatmap_pos_weight
        self.encoder = nn.Sequential(conv3d_block(chans, w, (1, 2, 2)), conv3d_block(w, 2 * w, (2, 2, 2)),
                                     conv3d_block(2 * w, 4 * w, (2, 2, 2)), conv3d_block(4 * w, 8 * w, (2, 2, 2)))
        self.neck = nn.Sequential(nn.Conv3d(8 * w + 3, m.head_dim, 1), nn.BatchNorm3d(m.head_dim),
                                  nn.ReLU(inplace=True))
        self.heat_head = nn.Conv3d(m.head_dim, N_LOCATIONS, 1)
        self.present_head = nn.Sequential(nn.Dropout(m.dropout), nn.Linear(2 * m.head_dim, 1))
        nn.init.constant_(self.heat_head.bias, -4.0)
        self.init_label_weights(m.present_loss_weight)

    def forward(self, batch: dict) -> dict:
        x = normalise(batch["image"])
        f = self.encoder(x)
        shape = x.shape[-3:]
        origin = torch.zeros(x.shape[0], 3, device=f.device)
        coords = feature_grid_coords(origin, f.shape[-3:], shape, shape).to(f.dtype)  # cell centres of the input
        d = self.neck(torch.cat([f, coords], dim=1))
        heat = self.heat_head(d)  # (B, 13, z', y', x')
        loc = lse(heat, (2, 3, 4))
        present = consistent_present(self.present_head(torch.cat([d.mean(dim=(2, 3, 4)), d.amax(dim=(2, 3, 4))],
                                                                 dim=1))[:, 0], loc)
        logits = torch.cat([loc, present[:, None]], dim=1)
        out = {"logits": logits}
        if "target" in batch:
            target = batch["target"]
            loss = series_bce(logits, target, self.col_weight, self.active_pos_weight())
            if self.aux_weight > 0 and "points" in batch:
                points = batch["points"].float()
                mask = located_mask(points, target)
                cells = heat.shape[-3:]
                centres = tuple(grid_centres(n, e).to(x.device) for n, e in zip(cells, shape))
                sigma = tuple(0.75 * e / n for n, e in zip(cells, shape))
                heat_t = point_heatmap(points, centres, sigma)
                loss = loss + self.aux_weight * heatmap_loss(heat, heat_t, mask, self.heat_pos_weight)
            out["loss"] = loss
        return out


@register_model("cnn3d")
def build_cnn3d(cfg: ExperimentConfig) -> nn.Module:
    return Small3DModel(cfg)
