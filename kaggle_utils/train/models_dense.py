"""``dense3d``: a small fully-convolutional 3D detector with dense supervision from the localizer points.

Instead of learning 14 series labels from a handful of series-level gradients, every voxel of the output map gets a
target: a Gaussian blob at each localizer point. The output is factorised as

    logit(location k at voxel v) = detect(v) + log_softmax_k(where(v))

``detect`` says "an aneurysm is here" (trained with all points pooled, so the rare locations share the detector) and
``where`` says which of the 13 anatomical locations voxel v belongs to (trained near the points; it sees global
coordinate channels, so a training patch knows where it sits in the ROI). Series logits are the maximum of the map
per location; Aneurysm Present is the maximum of ``detect``, so it is never below any location logit.

Training crops a random patch per sample inside the model (centred near a localizer point with chance
``model.patch_pos_p``), so the data path is the kit's usual one (full cached ROI volumes, live augmentation with the
L/R flip swapping labels and points). Validation and inference run on the whole volume.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kaggle_utils.config import ConfigError, ExperimentConfig
from kaggle_utils.schema import N_LOCATIONS
from kaggle_utils.train.losses import located_mask, point_heatmap


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3x3 conv, batch norm, ReLU."""
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(cout),
                         nn.ReLU(inplace=True))


def global_coords(offset: torch.Tensor, size: tuple[int, int, int], full: tuple[int, int, int],
                  device: torch.device) -> torch.Tensor:
    """(B, 3, *size) coordinates in [-1, 1] of the full volume for patches starting at ``offset`` (B, 3) voxels."""
    axes = []
    for a in range(3):
        idx = offset[:, a, None].to(device, torch.float32) + torch.arange(size[a], device=device, dtype=torch.float32)
        axes.append(2.0 * (idx + 0.5) / full[a] - 1.0)  # (B, n_a)
    z = axes[0][:, :, None, None].expand(-1, *size)
    y = axes[1][:, None, :, None].expand(-1, *size)
    x = axes[2][:, None, None, :].expand(-1, *size)
    return torch.stack([z, y, x], dim=1)


def choose_patch_offsets(points: torch.Tensor, full: tuple[int, int, int], patch: tuple[int, int, int],
                         pos_p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 3) patch starts: near a random localizer point of the sample with chance ``pos_p``, else uniform.

    Draws from ``generator`` or, by default, the global torch RNG (which the training loop checkpoints, so a resumed
    run cuts the same patches).
    """
    b = points.shape[0]
    offsets = torch.zeros(b, 3, dtype=torch.long)
    pts = points.detach().cpu()
    for i in range(b):
        valid = pts[i, :, 0] >= 0
        use_point = bool(valid.any()) and torch.rand(1, generator=generator).item() < pos_p
        if use_point:
            rows = pts[i, valid]
            p = rows[torch.randint(len(rows), (1,), generator=generator).item(), 1:]
        for a in range(3):
            room = full[a] - patch[a]
            if room <= 0:
                continue
            if use_point:  # the point anywhere in the patch's central 3/4
                jitter = (torch.rand(1, generator=generator).item() - 0.5) * 0.75 * patch[a]
                start = int(round(float(p[a]) - patch[a] / 2 + jitter))
            else:
                start = int(torch.randint(room + 1, (1,), generator=generator).item())
            offsets[i, a] = min(max(start, 0), room)
    return offsets


def crop_patches(x: torch.Tensor, offsets: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, Z, Y, X) -> (B, C, *patch) at per-sample ``offsets`` (B, 3)."""
    out = []
    for i in range(x.shape[0]):
        z, y, w = (int(v) for v in offsets[i])
        out.append(x[i, :, z : z + patch[0], y : y + patch[1], w : w + patch[2]])
    return torch.stack(out)


class Dense3DDetector(nn.Module):
    """A small 3D U-Net (output stride 2) with the detect / where factorised heatmap described in the module doc."""

    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        m = cfg.model
        w = m.width
        chans = len(cfg.data.ct_windows)
        self.patch = tuple(int(v) for v in m.patch_size)
        if len(self.patch) != 3 or any(v < 0 for v in self.patch):
            raise ConfigError(f"model.patch_size must be three non-negative ints (z, y, x), got {m.patch_size}")
        self.patch_pos_p = m.patch_pos_p
        self.where_weight = m.aux_loss_weight
        # straight to stride 2 (a 3x3x3 stride-2 conv still sees every voxel; full resolution is too slow on CPU)
        self.down1 = nn.Sequential(conv_bn(chans + 3, w, 2), conv_bn(w, 2 * w))  # stride 2
        self.down2 = nn.Sequential(conv_bn(2 * w, 4 * w, 2), conv_bn(4 * w, 4 * w))  # stride 4
        self.down3 = nn.Sequential(conv_bn(4 * w, 4 * w, 2), conv_bn(4 * w, 4 * w))  # stride 8: context
        self.up2 = conv_bn(8 * w, 4 * w)
        # 1x1 fuse then one 3x3: the stride-2 level holds most voxels, so its convs stay narrow
        self.up1 = nn.Sequential(nn.Conv3d(6 * w + 3, m.head_dim, 1, bias=False), nn.BatchNorm3d(m.head_dim),
                                 nn.ReLU(inplace=True), conv_bn(m.head_dim, m.head_dim))
        self.detect = nn.Conv3d(m.head_dim, 1, 1)
        self.where = nn.Conv3d(m.head_dim, N_LOCATIONS, 1)
        nn.init.constant_(self.detect.bias, -4.0)  # sparse targets: start near "nothing here"

    def set_label_priors(self, priors: np.ndarray, enabled: bool) -> None:
        """The dense loss needs no class weights (kept for the loop's model interface)."""

    def maps(self, x: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised input (B, C, Z, Y, X) + coords -> detect (B, 1, ...) and where (B, 13, ...) at stride 2."""
        f1 = self.down1(torch.cat([x, coords], dim=1))
        f2 = self.down2(f1)
        f3 = self.down3(f2)
        u2 = self.up2(torch.cat([f2, F.interpolate(f3, size=f2.shape[-3:], mode="trilinear")], dim=1))
        c1 = F.avg_pool3d(coords, 2, ceil_mode=True)[..., : f1.shape[-3], : f1.shape[-2], : f1.shape[-1]]
        u1 = self.up1(torch.cat([f1, F.interpolate(u2, size=f1.shape[-3:], mode="trilinear"), c1], dim=1))
        return self.detect(u1), self.where(u1)

    def forward(self, batch: dict) -> dict:
        image = batch["image"]
        x = image.float() / 127.5 - 1.0
        full = tuple(int(v) for v in x.shape[-3:])
        offsets = torch.zeros(x.shape[0], 3, dtype=torch.long)
        crop = self.training and "target" in batch and all(self.patch) and "points" in batch
        if crop:
            patch = tuple(min(p, f) for p, f in zip(self.patch, full))
            offsets = choose_patch_offsets(batch["points"], full, patch, self.patch_pos_p)
            x = crop_patches(x, offsets, patch)
        coords = global_coords(offsets, tuple(x.shape[-3:]), full, x.device)
        detect, where = self.maps(x, coords)
        loc_map = detect + F.log_softmax(where, dim=1)  # (B, 13, z, y, x)
        loc = loc_map.flatten(2).amax(dim=2)
        present = detect.flatten(1).amax(dim=1)
        out = {"logits": torch.cat([loc, present[:, None]], dim=1)}
        if "target" in batch:
            out["loss"] = self.loss(batch, detect, where, offsets, tuple(x.shape[-3:]))
        return out

    def loss(self, batch: dict, detect: torch.Tensor, where: torch.Tensor, offsets: torch.Tensor,
             size: tuple[int, int, int]) -> torch.Tensor:
        """Dense BCE of ``detect`` against Gaussian blobs at the points + CE of ``where`` weighted by the blobs.

        Samples with a positive location that has no localizer point are left out (where it is is unknown).
        """
        points = batch["points"].float().clone() if "points" in batch else None
        if points is None:
            raise ConfigError("model dense3d needs batch['points'] (localizer points) to train")
        mask = located_mask(points, batch["target"])
        valid = points[..., 0] >= 0
        points[..., 1:] -= offsets.to(points.device, torch.float32)[:, None, :] * valid[..., None]
        cells = detect.shape[-3:]
        centres = tuple(((torch.arange(n, dtype=torch.float32) + 0.5) * (e / n) - 0.5).to(detect.device)
                        for n, e in zip(cells, size))
        heat = point_heatmap(points, centres, (1.5, 1.5, 1.5))  # (B, 13, z, y, x), sigma in voxels
        any_heat = heat.amax(dim=1, keepdim=True)
        if not mask.any():
            return detect.sum() * 0.0
        d_logit, d_t = detect[mask].float(), any_heat[mask]
        # balanced: the blob cells and the background each weigh half (a pos_weight alone let the map collapse to
        # "nothing anywhere" on the synthetic bench: blob cells are ~1e-4 of the volume)
        bce = F.binary_cross_entropy_with_logits(d_logit, d_t, reduction="none")
        det_l = (bce * (1 - d_t)).sum() / (1 - d_t).sum().clamp(min=1.0)
        if d_t.sum() > 0:
            det_l = 0.5 * det_l + 0.5 * (bce * d_t).sum() / d_t.sum()
        h = heat[mask]
        near = h.amax(dim=1)  # (b, z, y, x)
        if near.sum() > 0:
            ce = F.cross_entropy(where[mask].float(), h.argmax(dim=1), reduction="none")
            where_l = (ce * near).sum() / near.sum()
        else:
            where_l = where.sum() * 0.0
        return det_l + self.where_weight * where_l
