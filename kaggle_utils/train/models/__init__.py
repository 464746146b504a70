"""Models: ``build_model(cfg)`` picks a model by ``cfg.model.name``; every model takes a batch dict and returns a dict
with ``logits`` (B, 14) in ``schema.LABEL_COLS`` order, plus ``loss`` when ``target`` is in the batch.

Batch keys: ``image`` uint8 (B, C, Z, Y, X) ROI volume (the model normalises it), optional ``target`` float (B, 14),
``points`` float (B, P, 4) rows [location index, z, y, x] in the image's voxels (location -1 = padding), ``origin``
(B, 3) of a training crop in the ROI and ``seed`` (B,) the sample's augmentation seed.

Layout (one module per concern, as in timm):
  - ``registry``: ``register_model``, ``build_model``, ``MODEL_REGISTRY``.
  - ``weights``: timm backbones with weights from local files only (``create_backbone``, lite0 key conversion).
  - ``blocks``: shared pieces (normalisation, 2.5D stacks, the one coordinate-channel implementation, pooling).
  - one module per family: ``default`` (2.5D stacks -> timm backbone -> heatmap head + sequence model),
    ``seed_baseline`` (the seed README's 3-slice model), ``cnn3d`` (small 3D CNN with a heatmap head), ``dense3d``
    (small 3D U-Net trained on patches with a dense per-voxel target).
  - ``predict``: ``predict_probs`` / ``predict_with_slices`` (validation and inference), windowed inference.
  - ``params``: ``param_groups`` (timm's weight-decay groups), ``count_parameters``.
Importing this package registers every family.
"""

from __future__ import annotations

from kaggle_utils.train.models import cnn3d, default, dense3d, seed_baseline  # noqa: F401 - registers the models
from kaggle_utils.train.models.blocks import (
    LabelWeights,
    consistent_present,
    coordinate_channels,
    feature_grid_coords,
    global_coords,
    grid_centres,
    lse,
    make_stacks,
    normalise,
    resize_inplane,
    roi_coords,
    stack_centres,
)
from kaggle_utils.train.models.cnn3d import Small3DModel
from kaggle_utils.train.models.default import SliceSequence, Stack25DModel
from kaggle_utils.train.models.dense3d import Dense3DDetector
from kaggle_utils.train.models.params import count_parameters, param_groups
from kaggle_utils.train.models.predict import (
    autocast_for,
    inference_windows,
    predict_probs,
    predict_with_slices,
    window_starts,
    windowed_forward,
)
from kaggle_utils.train.models.registry import MODEL_REGISTRY, build_model, register_model
from kaggle_utils.train.models.seed_baseline import ChannelAttention, SeedBaselineModel
from kaggle_utils.train.models.weights import (
    PACKAGE_LITE0,
    WeightsError,
    convert_lite0_state_dict,
    create_backbone,
    is_lite0_package_format,
    load_backbone_weights,
    resolve_weights_file,
)

__all__ = [
    "MODEL_REGISTRY", "PACKAGE_LITE0", "ChannelAttention", "Dense3DDetector", "LabelWeights", "SeedBaselineModel",
    "SliceSequence", "Small3DModel", "Stack25DModel", "WeightsError", "autocast_for", "build_model",
    "consistent_present", "convert_lite0_state_dict", "coordinate_channels", "count_parameters", "create_backbone",
    "feature_grid_coords", "global_coords", "grid_centres", "inference_windows", "is_lite0_package_format",
    "load_backbone_weights", "lse", "make_stacks", "normalise", "param_groups", "predict_probs", "predict_with_slices",
    "register_model", "resize_inplane", "resolve_weights_file", "roi_coords", "stack_centres", "window_starts",
    "windowed_forward",
]
