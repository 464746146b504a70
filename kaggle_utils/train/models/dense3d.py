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
L/R flip swapping labels and points). The patch is drawn from a generator seeded with the sample's ``seed`` (the
augmentation seed the sampler hands out, see ``SeriesDataset``), never from the global RNG: the same seed cuts the
same patch, whatever the batch, the worker count or a resume. Validation and inference run on the whole volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kaggle_utils.config import ConfigError, ExperimentConfig
from kaggle_utils.schema import N_LOCATIONS
from kaggle_utils.train.losses import located_mask, point_heatmap
from kaggle_utils.train.models.blocks import global_coords, grid_centres, normalise
from kaggle_utils.train.models.registry import register_model


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3x3 conv, batch norm, ReLU."""
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(cout),
                         nn.ReLU(inplace=True))


def _uniform(generator: torch.Generator) -> float:
    return torch.rand(1, generator=generator).item()


def choose_patch_offset(points: torch.Tensor, full: tuple[int, int, int], patch: tuple[int, int, int],
                        pos_p: float, generator: torch.Generator) -> torch.Tensor:
    """(3,) start of one sample's patch: near one of its localizer points (P, 4) with chance ``pos_p``, else uniform."""
    valid = points[:, 0] >= 0
    centre = None
    if bool(valid.any()) and _uniform(generator) < pos_p:
        rows = points[valid]
        centre = rows[torch.randint(len(rows), (1,), generator=generator).item(), 1:]
    offset = torch.zeros(3, dtype=torch.long)
    for a in range(3):
        room = full[a] - patch[a]
        if room <= 0:
            continue
        if centre is not None:  # the point anywhere in the patch's central 3/4
            jitter = (_uniform(generator) - 0.5) * 0.75 * patch[a]
            start = int(round(float(centre[a]) - patch[a] / 2 + jitter))
        else:
            start = int(torch.randint(room + 1, (1,), generator=generator).item())
        offset[a] = min(max(start, 0), room)
    return offset


def choose_patch_offsets(points: torch.Tensor, full: tuple[int, int, int], patch: tuple[int, int, int],
                         pos_p: float, generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
    """(B, 3) patch starts for points (B, P, 4), from one generator for the batch or one per sample."""
    pts = points.detach().cpu()
    gens = [generator] * len(pts) if isinstance(generator, torch.Generator) else list(generator)
    if len(gens) != len(pts):
        raise ValueError(f"{len(gens)} generators for a batch of {len(pts)}")
    return torch.stack([choose_patch_offset(p, full, patch, pos_p, g) for p, g in zip(pts, gens)])


def patch_generators(batch: dict) -> list[torch.Generator]:
    """One generator per sample, seeded with ``batch['seed']`` (B,); ``batch['patch_generator']`` overrides it."""
    n = batch["image"].shape[0]
    if "patch_generator" in batch:
        return [batch["patch_generator"]] * n
    if "seed" not in batch:
        raise ConfigError("model dense3d cuts its training patches from batch['seed'] (one int per sample, as "
                          "SeriesDataset gives) or batch['patch_generator'] (a torch.Generator); the batch has "
                          "neither")
    return [torch.Generator().manual_seed(int(s)) for s in batch["seed"].reshape(-1).tolist()]


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
        x = normalise(image)
        full = tuple(int(v) for v in x.shape[-3:])
        offsets = torch.zeros(x.shape[0], 3, dtype=torch.long)
        crop = self.training and "target" in batch and all(self.patch) and "points" in batch
        if crop:
            patch = tuple(min(p, f) for p, f in zip(self.patch, full))
            offsets = choose_patch_offsets(batch["points"], full, patch, self.patch_pos_p, patch_generators(batch))
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
        centres = tuple(grid_centres(n, e).to(detect.device) for n, e in zip(cells, size))
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


@register_model("dense3d")
def build_dense3d(cfg: ExperimentConfig) -> nn.Module:
    return Dense3DDetector(cfg)
