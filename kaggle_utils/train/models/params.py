"""Parameter counting and the AdamW parameter groups (timm's rule: no weight decay on biases and 1-D tensors)."""

from __future__ import annotations

import torch.nn as nn
from timm.optim import param_groups_weight_decay


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups from ``timm.optim.param_groups_weight_decay``: biases and norm weights (every tensor of at most
    one dimension) get no weight decay, frozen parameters are left out, empty groups are dropped."""
    return param_groups_weight_decay(model, weight_decay)
