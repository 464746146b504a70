"""``seed_baseline``: the seed README's model: 3 slices as one 3-channel image, efficientnet_b3, channel attention,
multi-task head with batch norm and dropout, class-weighted BCE."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kaggle_utils.config import ConfigError, ExperimentConfig
from kaggle_utils.schema import N_LOCATIONS
from kaggle_utils.train.losses import series_bce
from kaggle_utils.train.models.blocks import LabelWeights, normalise
from kaggle_utils.train.models.registry import register_model
from kaggle_utils.train.models.weights import create_backbone


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation style channel attention over a feature map."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels),
                                nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class SeedBaselineModel(LabelWeights):
    """3 slices (depth fractions, first window) as a 3-channel image -> backbone -> attention -> multi-task head."""

    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        m = cfg.model
        self.fractions = tuple(m.seed_slice_fractions)
        if m.in_chans != len(self.fractions):
            raise ConfigError(f"seed_baseline: model.in_chans={m.in_chans} must equal the number of "
                              f"model.seed_slice_fractions ({len(self.fractions)})")
        self.image_size = m.image_size
        self.backbone = create_backbone(m.backbone, m.in_chans, m.pretrained_file, num_classes=0, global_pool="")
        feat = self.backbone.num_features
        self.attention = ChannelAttention(feat, m.attention_reduction)
        self.shared = nn.Sequential(nn.Linear(feat, m.hidden_dim), nn.BatchNorm1d(m.hidden_dim), nn.ReLU(inplace=True),
                                    nn.Dropout(m.dropout))
        self.location_head = nn.Sequential(nn.Dropout(m.head_dropout), nn.Linear(m.hidden_dim, N_LOCATIONS))
        self.present_head = nn.Sequential(nn.Dropout(m.head_dropout), nn.Linear(m.hidden_dim, 1))
        self.init_label_weights(m.present_loss_weight)

    def forward(self, batch: dict) -> dict:
        image = batch["image"]
        depth = image.shape[2]
        idx = [min(depth - 1, max(0, round(f * (depth - 1)))) for f in self.fractions]
        x = normalise(image[:, 0, idx])  # (B, 3, Y, X) from the first (vessel) window
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        f = self.attention(self.backbone.forward_features(x))
        h = self.shared(f.mean(dim=(2, 3)))
        logits = torch.cat([self.location_head(h), self.present_head(h)], dim=1)
        out = {"logits": logits}
        if "target" in batch:
            out["loss"] = series_bce(logits, batch["target"], self.col_weight, self.pos_weight)
        return out


@register_model("seed_baseline")
def build_seed_baseline(cfg: ExperimentConfig) -> nn.Module:
    return SeedBaselineModel(cfg)
