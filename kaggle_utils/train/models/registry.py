"""The model registry: ``@register_model(name)`` makes a builder selectable as ``model.name``; ``build_model(cfg)``
calls it. The model modules register themselves when the ``kaggle_utils.train.models`` package is imported."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from kaggle_utils.config import ConfigError, ExperimentConfig

MODEL_REGISTRY: dict[str, Callable[[ExperimentConfig], nn.Module]] = {}


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
