"""The run folder: where a training run writes its config, provenance, priors, fold weights, metrics and OOF
predictions, and ``load_run`` which inference and reports use to read it back.

Layout (docs/ARCHITECTURE.md "Run folder"):
  RUN/config.yaml  cache_info.json  kit.json  priors.json  folds.csv  metrics.json  oof.parquet  curves.png
  RUN/coverage.json (the training cache's ROI coverage, when it has localizer points)
  RUN/fold<k>/model.pt (state_dict only)  metrics.json  oof.parquet  state.pt (training state while unfinished)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from kaggle_utils import __version__
from kaggle_utils.config import DataConfig, ExperimentConfig, load_config
from kaggle_utils.errors import KitError
from kaggle_utils.io import atomic_write_text
from kaggle_utils.paths import REPO_ROOT
from kaggle_utils.schema import LABEL_COLS

CONFIG_NAME = "config.yaml"
CACHE_INFO_NAME = "cache_info.json"
KIT_NAME = "kit.json"
PRIORS_NAME = "priors.json"
FOLDS_NAME = "folds.csv"
METRICS_NAME = "metrics.json"
OOF_NAME = "oof.parquet"
OOF_SLICES_NAME = "oof_slices.parquet"  # per-slice scores of the OOF series (report gallery)
CURVES_NAME = "curves.png"
MODEL_NAME = "model.pt"
STATE_NAME = "state.pt"


class RunError(KitError):
    """A run folder that is incomplete, corrupt, or does not match the requested training."""


def fold_name(fold: int) -> str:
    """``fold3`` for fold 3, ``foldfull`` for the full fit (fold = -1)."""
    return "foldfull" if fold < 0 else f"fold{fold}"


def fold_dir(run: Path, fold: int) -> Path:
    return Path(run) / fold_name(fold)


def git_commit() -> str:
    """The kit checkout's commit, or "unknown" outside a git checkout (e.g. a Kaggle dataset copy)."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        return "unknown"
    result = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=False)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def kit_info() -> dict:
    return {"kit_version": __version__, "git_commit": git_commit(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__}


def write_json(path: Path, data: dict) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise RunError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{what} {path} is not valid JSON: {exc}") from None


def save_state_dict(model: nn.Module, path: Path) -> Path:
    """Weights only (a plain state_dict of tensors), written atomically."""
    from kaggle_utils.io import atomic_path

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


@dataclass
class LoadedRun:
    """A trained run ready for prediction."""

    run_dir: Path
    cfg: ExperimentConfig
    data_cfg: DataConfig  # the preprocessing the cache was made with; inference must use exactly this
    models: list[tuple[int, nn.Module]]  # (fold, model in eval mode); fold -1 = full fit
    priors: dict[str, float]
    kit: dict


def check_run_folder(run_dir: str | Path) -> list[Path]:
    """The run's model files, after a cheap check that the folder has what serving needs; raises ``RunError``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunError(f"run folder {run} does not exist")
    for name in (CONFIG_NAME, CACHE_INFO_NAME, PRIORS_NAME):
        if not (run / name).is_file():
            raise RunError(f"run folder {run} has no {name} (is it a finished training run?)")
    model_files = [fold_dir(run, f) / MODEL_NAME for f in model_folds(run)]
    if not model_files:
        raise RunError(f"run folder {run} has no fold*/{MODEL_NAME} model file")
    for d in sorted(d for d in run.glob("fold*") if d.is_dir()):
        if not (d / MODEL_NAME).is_file():  # a fold silently missing from the ensemble is a bug, not a detail
            raise RunError(f"model file {d / MODEL_NAME} is missing (unfinished fold? remove the folder)")
    for f in model_files:
        if f.stat().st_size == 0:
            raise RunError(f"model file {f} is empty")
    return model_files


def read_priors(run_dir: str | Path) -> dict[str, float]:
    """The label priors training saved (``RUN/priors.json``): the fallback answer for a series that fails."""
    path = Path(run_dir) / PRIORS_NAME
    raw = read_json(path, "priors file")
    missing = [c for c in LABEL_COLS if c not in raw]
    if missing:
        raise RunError(f"priors file {path} lacks column(s) {missing}")
    return {c: float(raw[c]) for c in LABEL_COLS}


def read_run_config(run_dir: str | Path) -> ExperimentConfig:
    """The resolved config saved with a run (old flat model sections load too)."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise RunError(f"{path} does not exist: {Path(run_dir)} is not a training run folder")
    return load_config(path)


def model_folds(run: Path) -> list[int]:
    """Folds with finished weights, in order (-1 = full fit last)."""
    folds = []
    for d in sorted(Path(run).glob("fold*")):
        if (d / MODEL_NAME).is_file():
            name = d.name[len("fold"):]
            if name == "full":
                folds.append(-1)
            elif name.isdigit():
                folds.append(int(name))
    return sorted(f for f in folds if f >= 0) + [f for f in folds if f < 0]


def load_fold_model(run: Path, fold: int, cfg: ExperimentConfig, device: str | torch.device = "cpu") -> nn.Module:
    """Build the config's model (without pretrained files) and load one fold's weights; eval mode."""
    from kaggle_utils.train.models import build_model

    path = fold_dir(run, fold) / MODEL_NAME
    if not path.is_file():
        raise RunError(f"model file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file of any kind becomes one clear message
        raise RunError(f"model file {path} could not be read: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"model file {path} is not a state_dict of tensors")
    # the trained weights replace any pretrained init, so the pretrained file need not exist where we load
    build_cfg = cfg
    if hasattr(cfg.model, "pretrained_file"):
        build_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained_file=""))
    model = build_model(build_cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RunError(f"model file {path} does not fit model {cfg.model.name!r} of {run / CONFIG_NAME}: "
                       f"{str(exc).splitlines()[0]}") from None
    return model.to(device).eval()


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", folds: list[int] | None = None) -> LoadedRun:
    """Read a run folder: config, the cache's data config, priors, and every finished fold model (or ``folds``)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunError(f"run folder {run} does not exist")
    cfg = read_run_config(run)
    from kaggle_utils.train.dataset import cache_data_config

    data_cfg = cache_data_config(read_json(run / CACHE_INFO_NAME, "cache info"))
    priors = read_priors(run)
    available = model_folds(run)
    chosen = available if folds is None else folds
    if not chosen:
        raise RunError(f"run folder {run} holds no finished fold (no fold*/{MODEL_NAME})")
    models = [(f, load_fold_model(run, f, cfg, device)) for f in chosen]
    kit = read_json(run / KIT_NAME, "kit file") if (run / KIT_NAME).is_file() else {}
    return LoadedRun(run, cfg, data_cfg, models, priors, kit)
