"""The training loop's EMA (``make_ema``: timm's ``ModelEmaV3``) and the AdamW parameter groups (``param_groups``:
timm's ``param_groups_weight_decay``), against values worked out by hand on tiny models with known parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from kaggle_utils.train.loop import make_ema
from kaggle_utils.train.models.params import count_parameters, param_groups


def tiny_linear(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def test_ema_update_is_decay_times_old_plus_one_minus_decay_times_new():
    model = tiny_linear([[1.0, 2.0], [3.0, 4.0]], [0.5, -0.5])
    ema = make_ema(model, 0.9)
    assert ema is not None and ema.module is not model
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert torch.equal(ema.module.weight, model.weight)  # starts as a copy
    # No warmup (the loop calls update without a step): the decay is the configured one from the first update.
    assert ema.get_decay() == 0.9 and not ema.use_warmup

    with torch.no_grad():
        model.weight.copy_(torch.tensor([[11.0, 2.0], [-7.0, 4.0]]))
        model.bias.copy_(torch.tensor([1.5, 9.5]))
    ema.update(model)
    # 0.9 * old + 0.1 * new, by hand
    assert ema.module.weight.flatten().tolist() == pytest.approx([2.0, 2.0, 2.0, 4.0])
    assert ema.module.bias.tolist() == pytest.approx([0.6, 0.5])

    ema.update(model)  # a second update with the same weights: 0.9 * 2 + 0.1 * 11 = 2.9, 0.9 * 0.6 + 0.1 * 1.5
    assert ema.module.weight.flatten().tolist() == pytest.approx([2.9, 2.0, 1.1, 4.0])
    assert ema.module.bias.tolist() == pytest.approx([0.69, 1.4])
    assert model.weight.tolist() == [[11.0, 2.0], [-7.0, 4.0]]  # the trained model is untouched


def test_ema_copies_buffers_instead_of_averaging_them():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = make_ema(model, 0.5)
    with torch.no_grad():
        model[1].running_mean.copy_(torch.tensor([4.0, -2.0]))
        model[1].weight.copy_(torch.tensor([3.0, 5.0]))  # BatchNorm starts at weight 1
    ema.update(model)
    assert ema.module[1].running_mean.tolist() == [4.0, -2.0]  # copied, as the statistics are already averages
    assert ema.module[1].weight.tolist() == pytest.approx([2.0, 3.0])  # a parameter: 0.5 * 1 + 0.5 * new


def test_ema_off_when_decay_is_zero():
    assert make_ema(nn.Linear(2, 2), 0.0) is None


class Tiny(nn.Module):
    """Parameters with known names: conv (4-D weight + bias), norm (1-D weight + bias), head (2-D + bias), a 1-D
    learned scale, and a frozen layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3)
        self.norm = nn.BatchNorm3d(2)
        self.head = nn.Linear(2, 3)
        self.scale = nn.Parameter(torch.ones(3))
        self.frozen = nn.Linear(3, 3)
        for p in self.frozen.parameters():
            p.requires_grad_(False)


def names_of(model: nn.Module, params) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_param_groups_no_decay_on_biases_norms_and_1d():
    model = Tiny()
    groups = param_groups(model, 0.05)
    by_decay = {g["weight_decay"]: names_of(model, g["params"]) for g in groups}
    assert by_decay == {
        0.0: {"conv.bias", "norm.weight", "norm.bias", "head.bias", "scale"},
        0.05: {"conv.weight", "head.weight"},
    }
    assert all(set(g) == {"params", "weight_decay"} for g in groups)  # no per-group lr: one lr for all
    # 2*1*27 + 2 (conv) + 2 + 2 (norm) + 3*2 + 3 (head) + 3 (scale) + 9 + 3 (frozen) = 84
    assert count_parameters(model) == 84
    assert sum(p.numel() for g in groups for p in g["params"]) == 84 - 12  # frozen left out


def test_param_groups_drive_adamw_decay():
    """One AdamW step with zero gradients: only decayed weights shrink, by lr * wd * w."""
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[0].bias.fill_(2.0)
        model[1].weight.fill_(2.0)
    opt = torch.optim.AdamW(param_groups(model, 0.5), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert model[0].weight.flatten().tolist() == pytest.approx([2.0 * (1 - 0.1 * 0.5)] * 4)  # 1.9
    assert model[0].bias.tolist() == [2.0, 2.0] and model[1].weight.tolist() == [2.0, 2.0]


def test_param_groups_drop_empty_groups():
    norm_only = nn.LayerNorm(4)
    groups = param_groups(norm_only, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.0]
