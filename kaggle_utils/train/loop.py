"""The training loop and the ``train`` command.

``python -m kaggle_utils train --cache CACHE --config configs/NAME.yaml --out RUN [--fold K|all|-1] [key=value ...]``

Per fold (``train_fold``: build, resume, epochs of steps + validation, finish): seeded model, AdamW with warmup +
cosine over a budget counted in optimizer steps (``train.max_steps``, or ``train.epochs`` epochs), so the same config
and seed give the same model on any machine; ``train.max_train_minutes`` is only a safety cap, and a fold it cuts
short says so (``budget_stop: time_cap`` in its metrics, the run summary and the console). Gradient accumulation,
optional EMA (timm's ``ModelEmaV3``), AMP on CUDA, a checkpoint (``fold<k>/state.pt``) at the end of every epoch and
every ``train.checkpoint_every_steps`` optimizer steps, validation with the competition metric after every epoch,
and out-of-fold predictions from the fold's final weights. A killed run started again with the same arguments
resumes from its last checkpoint and ends with the same weights (the sample order and augmentation are functions of
(seed, epoch, position), and the RNG state is checkpointed). Under ``torchrun`` the loop runs DDP (one process per
GPU): each rank trains on its share of every epoch; rank 0 writes the run folder.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from kaggle_utils.config import ConfigError, ExperimentConfig, load_config, save_config, to_dict
from kaggle_utils.coverage import COVERAGE_NAME, read_coverage
from kaggle_utils.errors import KitError
from kaggle_utils.io import atomic_path
from kaggle_utils.metric import score_over_scorable_columns
from kaggle_utils.schema import ID_COL, LABEL_COLS, PRESENT_COL
from kaggle_utils.train import runs
from kaggle_utils.train.dataset import (
    SeriesDataset,
    TrainingCache,
    epoch_batches,
    epoch_order,
    eval_batches,
    make_loader,
    open_training_cache,
)
from kaggle_utils.train.folds import FOLD_COL, FoldError, ensure_folds, read_folds
from kaggle_utils.train.models import (
    MODEL_REGISTRY,
    autocast_for,
    build_model,
    count_parameters,
    param_groups,
    predict_with_slices,
)

StepCallback = Callable[[int, int], None]  # (epoch, optimizer step within the epoch), after each step


class TrainError(KitError):
    """Training cannot start (or resume) with these inputs."""


# ---------------------------------------------------------------------------------------------------------------------
# Small pieces


def validate_config(cfg: ExperimentConfig) -> None:
    """Config errors that must stop a run before anything is written (the typed schema checked the rest)."""
    if cfg.model.name not in MODEL_REGISTRY:
        raise ConfigError(f"unknown model.name {cfg.model.name!r}; registered models: {sorted(MODEL_REGISTRY)}")
    t = cfg.train
    for name in ("epochs", "batch_size", "grad_accum"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be at least 1, got {getattr(t, name)}")
    if t.max_steps < 0:
        raise ConfigError(f"train.max_steps must be 0 (use epochs) or a positive step count, got {t.max_steps}")
    if t.n_folds < 2:
        raise ConfigError(f"train.n_folds must be at least 2, got {t.n_folds}")
    if t.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available")
    # the model's own checks (channel counts, feature levels, weights file) also run before the run folder exists
    build_model(cfg)


def pick_device(cfg: ExperimentConfig) -> torch.device:
    if dist.is_available() and dist.is_initialized() and torch.cuda.is_available() and cfg.train.device != "cpu":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def lr_factor(progress: float, warmup_fraction: float, min_ratio: float) -> float:
    """Linear warmup over ``warmup_fraction`` of training, then cosine down to ``min_ratio``."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup_fraction > 0 and progress < warmup_fraction:
        return max(progress / warmup_fraction, 1e-3)
    rest = (progress - warmup_fraction) / max(1.0 - warmup_fraction, 1e-9)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * rest))


def partial_score(y_true: np.ndarray, y_prob: np.ndarray) -> dict:
    """``metric.score_over_scorable_columns`` in the metrics' shape: NaN where undefined, no per-column table."""
    scored = score_over_scorable_columns(y_true, y_prob)
    nan = float("nan")
    return {
        "score": nan if scored["score"] is None else scored["score"],
        "n_columns": scored["n_columns"],
        "present_auc": nan if scored["present_auc"] is None else scored["present_auc"],
        "location_auc_mean": nan if scored["location_auc_mean"] is None else scored["location_auc_mean"],
    }


def make_ema(model: nn.Module, decay: float) -> ModelEmaV3 | None:
    """timm's EMA of the parameters (buffers copied, as BatchNorm statistics are already averages); None when off."""
    if decay <= 0:
        return None
    ema = ModelEmaV3(model, decay=decay, exclude_buffers=True)
    for p in ema.module.parameters():
        p.requires_grad_(False)
    return ema


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------------------------------------
# Run-level preparation


@dataclass
class RunContext:
    """Everything a fold needs, prepared once per run."""

    cfg: ExperimentConfig
    cache: TrainingCache
    out: Path
    fold_of: np.ndarray  # fold index per cache row
    device: torch.device
    rank: int = 0
    world: int = 1
    progress: bool = True
    step_callback: StepCallback | None = None
    timings: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def label_priors(targets: np.ndarray) -> dict[str, float]:
    return {c: float(targets[:, j].mean()) for j, c in enumerate(LABEL_COLS)}


def prepare_run_folder(out: Path, cfg: ExperimentConfig, cache: TrainingCache, force_resume: bool) -> None:
    """Create the run folder, or check that an existing one was made with this exact config."""
    cfg_path = out / runs.CONFIG_NAME
    if cfg_path.is_file():
        saved = load_config(cfg_path)
        if to_dict(saved) != to_dict(cfg):
            changed = sorted(_diff_keys(to_dict(saved), to_dict(cfg)))
            if not force_resume:
                raise TrainError(f"run folder {out} was started with another config (changed: {changed}); pass "
                                 "--force-resume to continue it with the new one, or choose another --out")
        old_info = runs.read_json(out / runs.CACHE_INFO_NAME, "cache info")
        if old_info.get("config_hash") != cache.info["config_hash"]:
            raise TrainError(f"run folder {out} was trained on a cache with data config {old_info.get('config_hash')},"
                             f" this cache has {cache.info['config_hash']}")
    else:
        if not out.parent.is_dir():
            raise TrainError(f"cannot create run folder {out}: its parent folder {out.parent} does not exist")
        out.mkdir(exist_ok=True)
    save_config(cfg, cfg_path)
    runs.write_json(out / runs.CACHE_INFO_NAME, cache.info)
    runs.write_json(out / runs.KIT_NAME, runs.kit_info())
    runs.write_json(out / runs.PRIORS_NAME, label_priors(cache.targets))
    coverage = read_coverage(cache.root)
    if coverage is not None:  # the ROI coverage of the cache it trained on, for the evaluate report
        runs.write_json(out / COVERAGE_NAME, coverage)


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            keys += _diff_keys(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            keys.append(f"{prefix}{k}")
    return keys


def fold_assignment(cache: TrainingCache, folds_path: Path, n_folds: int) -> np.ndarray:
    """Fold index per cache row; every cached series must be in the fold file."""
    folds = read_folds(folds_path, n_folds)
    mapping = dict(zip(folds[ID_COL].to_list(), folds[FOLD_COL].to_list()))
    missing = [u for u in cache.uids if u not in mapping]
    if missing:
        raise FoldError(f"fold file {folds_path} lacks {len(missing)} cached series (e.g. {missing[:2]}); it was "
                        "written for another cache: write a new one with `python -m kaggle_utils folds --overwrite`")
    return np.array([mapping[u] for u in cache.uids], dtype=np.int64)


def parse_fold_arg(value: str | int, n_folds: int) -> list[int]:
    """``all`` -> every fold; ``-1`` -> full fit; ``K`` -> that fold."""
    if str(value) == "all":
        return list(range(n_folds))
    try:
        fold = int(value)
    except ValueError:
        raise TrainError(f"--fold must be 'all', -1 or a fold index, got {value!r}") from None
    if fold < -1 or fold >= n_folds:
        raise TrainError(f"--fold {fold} is outside 0..{n_folds - 1} (or -1 for a full fit)")
    return [fold]


def fold_rows(ctx: RunContext, fold: int) -> tuple[list[int], list[int]]:
    """(training rows, validation rows) of a fold; the full fit (-1) trains on everything and validates nothing."""
    if fold < 0:
        return list(range(len(ctx.cache.uids))), []
    train_rows = np.flatnonzero(ctx.fold_of != fold).tolist()
    val_rows = np.flatnonzero(ctx.fold_of == fold).tolist()
    return train_rows, val_rows


# ---------------------------------------------------------------------------------------------------------------------
# One fold


def predict_rows(model: nn.Module, ctx: RunContext, rows: list[int],
                 slice_rows: list[dict] | None = None) -> np.ndarray:
    """Probabilities (len(rows), 14) for cache rows, no augmentation; DDP ranks share the work.

    With ``slice_rows`` (a list to fill), models that score slices also add one row per scored slice:
    SeriesInstanceUID, roi_z, score (Aneurysm Present probability of that slice) — the viewer's peak slices.
    """
    if not rows:
        return np.zeros((0, len(LABEL_COLS)), dtype=np.float32)
    dataset = SeriesDataset(ctx.cache, rows, ctx.cfg, train=False)
    batches = eval_batches(len(rows), ctx.cfg.train.batch_size, ctx.rank, ctx.world)
    positions, probs, slices = [], [], []
    for batch in make_loader(dataset, batches, ctx.cfg.train.num_workers if len(batches) > 1 else 0):
        batch_probs, slice_scores, slice_z = predict_with_slices(model, batch["image"], ctx.cfg)
        probs.append(batch_probs)
        batch_rows = [int(r) for r in batch["row"]]
        positions.extend(rows.index(r) for r in batch_rows)
        if slice_rows is not None and slice_scores is not None:
            slices.extend({ID_COL: ctx.cache.uids[r], "roi_z": int(z), "score": float(v)}
                          for r, scores in zip(batch_rows, slice_scores) for z, v in zip(slice_z, scores))
    local = (positions, np.concatenate(probs) if probs else np.zeros((0, len(LABEL_COLS)), np.float32), slices)
    if ctx.world > 1:
        gathered: list = [None] * ctx.world
        dist.all_gather_object(gathered, local)
    else:
        gathered = [local]
    out = np.zeros((len(rows), len(LABEL_COLS)), dtype=np.float32)
    for pos, p, rank_slices in gathered:
        if len(pos):
            out[np.asarray(pos)] = p
        if slice_rows is not None:
            slice_rows.extend(rank_slices)
    return out


def save_training_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated/corrupt checkpoint becomes one clear message
        raise TrainError(f"checkpoint {path} could not be read ({type(exc).__name__}: {exc}); delete it to restart "
                         "this fold from scratch") from exc


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class FoldBudget:
    """How long a fold trains, in optimizer steps (reproducible), with wall/CPU time only as a safety cap."""

    steps_per_epoch: int
    total_steps: int  # the cosine schedule spans exactly these steps
    n_epochs: int
    warmup_fraction: float
    cap_s: float  # 0 = no time cap

    @classmethod
    def plan(cls, tcfg: Any, steps_per_epoch: int) -> FoldBudget:
        total = steps_per_epoch * tcfg.epochs
        if tcfg.max_steps > 0:  # a step budget; train.epochs stays an upper bound
            total = min(total, tcfg.max_steps)
        n_epochs = math.ceil(total / steps_per_epoch)
        warmup = min(tcfg.warmup_epochs * steps_per_epoch / total, 1.0)
        return cls(steps_per_epoch, total, n_epochs, warmup, tcfg.max_train_minutes * 60.0)


@dataclass
class FoldState:
    """What a checkpoint holds besides the weights: where the fold is and what it has learnt about its samples."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    elapsed: float = 0.0
    hard_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    epoch_hard_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    history: list[dict] = field(default_factory=list)
    stop: str = ""  # "" while running; "time_cap" when the safety cap cut the fold short


@dataclass
class FoldParts:
    """The fold's model, optimizer and data, built once."""

    fold: int
    fdir: Path
    train_rows: list[int]
    val_rows: list[int]
    train_targets: np.ndarray
    train_mods: list[str]
    model: nn.Module
    ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dataset: SeriesDataset
    budget: FoldBudget
    train_model: nn.Module  # the model, or its DDP wrapper

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @property
    def state_path(self) -> Path:
        return self.fdir / runs.STATE_NAME


def finished_fold_metrics(fdir: Path) -> dict | None:
    """A finished fold's metrics (its weights and a complete metrics file exist), else None."""
    metrics_path = fdir / runs.METRICS_NAME
    if (fdir / runs.MODEL_NAME).is_file() and metrics_path.is_file():
        metrics = runs.read_json(metrics_path, "fold metrics")
        if metrics.get("complete"):
            return metrics
    return None


def build_fold(ctx: RunContext, fold: int) -> FoldParts:
    """Split, seeded model, EMA, optimizer, dataset and the step budget of one fold."""
    cfg, tcfg = ctx.cfg, ctx.cfg.train
    fdir = runs.fold_dir(ctx.out, fold)
    train_rows, val_rows = fold_rows(ctx, fold)
    if not train_rows:
        raise TrainError(f"fold {fold}: the training split is empty")
    if ctx.is_main:
        fdir.mkdir(exist_ok=True)
    if ctx.world > 1:
        dist.barrier()
    torch.manual_seed(cfg.seed * 1000 + fold + 1)
    model = build_model(cfg).to(ctx.device)
    train_targets = ctx.cache.targets[train_rows]
    model.set_label_priors(train_targets.mean(axis=0), cfg.model.class_weighted_loss)
    ema = make_ema(model, tcfg.ema_decay)
    optimizer = torch.optim.AdamW(param_groups(model, tcfg.weight_decay), lr=tcfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=tcfg.amp and ctx.device.type == "cuda")
    dataset = SeriesDataset(ctx.cache, train_rows, cfg, train=True)
    if tcfg.preload:
        dataset.preload()
    modalities = ctx.cache.labels["Modality"].to_list() if "Modality" in ctx.cache.labels.columns else None
    train_mods = [modalities[r] for r in train_rows] if modalities else ["?"] * len(train_rows)
    first_epoch = epoch_order(len(train_rows), train_targets, train_mods, tcfg, cfg.seed, 0)
    steps_per_epoch = max(len(epoch_batches(first_epoch, tcfg.batch_size, cfg.seed, 0, ctx.rank, ctx.world))
                          // tcfg.grad_accum, 1)
    train_model: nn.Module = model
    if ctx.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    return FoldParts(fold, fdir, train_rows, val_rows, train_targets, train_mods, model, ema, optimizer, scaler,
                     dataset, FoldBudget.plan(tcfg, steps_per_epoch), train_model)


def resume_state(ctx: RunContext, parts: FoldParts) -> FoldState:
    """A fresh state, or the one checkpointed by an interrupted run (weights, optimizer and RNG restored)."""
    n = len(parts.train_rows)
    state = FoldState(hard_scores=np.zeros(n, dtype=np.float32), epoch_hard_scores=np.zeros(n, dtype=np.float32))
    if not parts.state_path.is_file():
        return state
    saved = load_training_state(parts.state_path)
    parts.model.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.scaler.load_state_dict(saved["scaler"])
    if parts.ema is not None:
        parts.ema.module.load_state_dict(saved["ema"])
    state = FoldState(int(saved["epoch"]), int(saved["batch"]), int(saved["global_step"]), float(saved["elapsed"]),
                      saved["hard_scores"].numpy().copy(), saved["epoch_hard_scores"].numpy().copy(),
                      [dict(h) for h in saved["history"]])
    set_rng_state(saved["rng"], ctx.device)
    if ctx.is_main:
        print(f"fold {parts.fold}: resuming at epoch {state.epoch}, batch {state.batch}")
    return state


def checkpoint(ctx: RunContext, parts: FoldParts, state: FoldState, epoch: int, batch: int) -> None:
    if not ctx.is_main:
        return
    save_training_state(parts.state_path, {
        "model": unwrap(parts.model).state_dict(), "optimizer": parts.optimizer.state_dict(),
        "scaler": parts.scaler.state_dict(), "ema": parts.ema.module.state_dict() if parts.ema is not None else {},
        "epoch": epoch, "batch": batch, "global_step": state.global_step, "elapsed": state.elapsed,
        "hard_scores": torch.from_numpy(state.hard_scores),
        "epoch_hard_scores": torch.from_numpy(state.epoch_hard_scores), "history": state.history,
        "rng": rng_state(ctx.device)})


def optimizer_step(ctx: RunContext, parts: FoldParts, state: FoldState) -> None:
    """Schedule (by step count), clip, step, EMA."""
    tcfg, budget = ctx.cfg.train, parts.budget
    lr = tcfg.lr * lr_factor(state.global_step / budget.total_steps, budget.warmup_fraction, tcfg.min_lr_ratio)
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    if tcfg.grad_clip > 0:
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), tcfg.grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.ema is not None:
        parts.ema.update(parts.model)
    state.global_step += 1


def train_epoch(ctx: RunContext, parts: FoldParts, state: FoldState, epoch: int) -> dict:
    """One epoch (from ``state.batch`` when resuming); stops early at the step budget or the time cap."""
    cfg, tcfg, budget = ctx.cfg, ctx.cfg.train, parts.budget
    if epoch != state.epoch or state.batch == 0:
        state.epoch_hard_scores = state.hard_scores.copy()
    order = epoch_order(len(parts.train_rows), parts.train_targets, parts.train_mods, tcfg, cfg.seed, epoch,
                        state.epoch_hard_scores if tcfg.hard_negative_factor > 0 else None)
    batches = epoch_batches(order, tcfg.batch_size, cfg.seed, epoch, ctx.rank, ctx.world)
    first = state.batch if epoch == state.epoch else 0
    loader = make_loader(parts.dataset, batches[first:], tcfg.num_workers)
    clock = time.process_time if tcfg.budget_clock == "cpu" else time.perf_counter
    pos_index = {r: p for p, r in enumerate(parts.train_rows)}  # cache row -> position in the training split
    present_j = LABEL_COLS.index(PRESENT_COL)
    parts.train_model.train()
    losses, seen, t_epoch = [], 0, time.perf_counter()
    bar = tqdm(loader, total=len(batches) - first, desc=f"fold {parts.fold} epoch {epoch + 1}/{budget.n_epochs}",
               disable=not (ctx.progress and ctx.is_main), leave=False)
    t_last = clock()  # training time counts loading + steps, not validation
    for i, batch in enumerate(bar, start=first):
        batch = {k: (v.to(ctx.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        with autocast_for(ctx.device, tcfg.amp):
            out = parts.train_model(batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise TrainError(f"fold {parts.fold} epoch {epoch}: the loss became {loss.item()} (lower train.lr?)")
        parts.scaler.scale(loss / tcfg.grad_accum).backward()
        with torch.no_grad():  # hardness of each sample: BCE of its Aneurysm Present logit
            bce = F.binary_cross_entropy_with_logits(out["logits"][:, present_j].float(),
                                                     batch["target"][:, present_j], reduction="none")
        for r, h in zip(batch["row"].tolist(), bce.cpu().tolist()):
            state.hard_scores[pos_index[r]] = h
        losses.append(loss.item())
        seen += len(batch["row"])
        now = clock()
        state.elapsed, t_last = state.elapsed + now - t_last, now
        if (i + 1) % tcfg.grad_accum == 0 or i + 1 == len(batches):
            optimizer_step(ctx, parts, state)
            step_in_epoch = (i + 1) // tcfg.grad_accum
            if tcfg.checkpoint_every_steps > 0 and step_in_epoch % tcfg.checkpoint_every_steps == 0 \
                    and i + 1 < len(batches):
                checkpoint(ctx, parts, state, epoch, i + 1)
            if ctx.step_callback is not None:
                ctx.step_callback(epoch, step_in_epoch)
            if budget.cap_s > 0 and state.elapsed >= budget.cap_s:
                state.stop = "time_cap"
            if state.stop or state.global_step >= budget.total_steps:
                break
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{parts.optimizer.param_groups[0]['lr']:.2e}",
                        sps=f"{seen / max(time.perf_counter() - t_epoch, 1e-9):.1f}")
    bar.close()
    seconds = time.perf_counter() - t_epoch
    return {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "lr": parts.optimizer.param_groups[0]["lr"], "steps": state.global_step, "epoch_seconds": seconds,
            "train_samples_per_s": seen * ctx.world / max(seconds, 1e-9)}


def validate_epoch(ctx: RunContext, parts: FoldParts, record: dict) -> dict:
    if parts.val_rows:
        probs = predict_rows(parts.eval_model, ctx, parts.val_rows)
        record.update({f"val_{k}": v for k, v in partial_score(ctx.cache.targets[parts.val_rows], probs).items()})
    if ctx.is_main and ctx.progress:
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        print(f"fold {parts.fold}: {shown}")
    return record


def finish_fold(ctx: RunContext, parts: FoldParts, state: FoldState) -> dict:
    """OOF predictions of the final (EMA) weights, then the fold's outputs; metrics.json last (marks it finished)."""
    slice_rows: list[dict] = []
    oof = predict_rows(parts.eval_model, ctx, parts.val_rows, slice_rows)
    metrics = {"fold": parts.fold, "complete": True, "n_train": len(parts.train_rows), "n_val": len(parts.val_rows),
               "n_parameters": count_parameters(parts.model), "steps": state.global_step,
               "planned_steps": parts.budget.total_steps, "budget_stop": state.stop or "steps",
               "stopped_by_budget": state.stop == "time_cap", "train_seconds": state.elapsed,
               "history": state.history}
    if parts.val_rows:
        metrics["val"] = partial_score(ctx.cache.targets[parts.val_rows], oof)
    if ctx.is_main:
        if parts.val_rows:
            frame = pl.DataFrame({ID_COL: [ctx.cache.uids[r] for r in parts.val_rows],
                                  "fold": [parts.fold] * len(parts.val_rows),
                                  **{c: oof[:, j] for j, c in enumerate(LABEL_COLS)}})
            with atomic_path(parts.fdir / runs.OOF_NAME) as tmp:
                frame.write_parquet(tmp)
            if slice_rows:
                with atomic_path(parts.fdir / runs.OOF_SLICES_NAME) as tmp:
                    pl.DataFrame(slice_rows).write_parquet(tmp)
        runs.save_state_dict(parts.eval_model, parts.fdir / runs.MODEL_NAME)
        runs.write_json(parts.fdir / runs.METRICS_NAME, metrics)
        parts.state_path.unlink(missing_ok=True)
    if ctx.world > 1:
        dist.barrier()
    return metrics


def train_fold(ctx: RunContext, fold: int) -> dict:
    """Train (or resume, or skip when finished) one fold; returns its metrics dict."""
    done = finished_fold_metrics(runs.fold_dir(ctx.out, fold))
    if done is not None:
        return done
    parts = build_fold(ctx, fold)
    state = resume_state(ctx, parts)
    for epoch in range(state.epoch, parts.budget.n_epochs):
        record = train_epoch(ctx, parts, state, epoch)
        state.history.append(validate_epoch(ctx, parts, record))
        state.batch = 0
        if state.stop or state.global_step >= parts.budget.total_steps:
            break
        checkpoint(ctx, parts, state, epoch + 1, 0)
    if state.stop == "time_cap" and ctx.is_main:
        print(f"fold {fold}: WARNING: cut short by the train.max_train_minutes safety cap after "
              f"{state.global_step}/{parts.budget.total_steps} steps; this model is not reproducible")
    return finish_fold(ctx, parts, state)


# ---------------------------------------------------------------------------------------------------------------------
# Run-level outputs


def merge_oof(out: Path) -> pl.DataFrame | None:
    """Concatenate the folds' OOF predictions into RUN/oof.parquet (None when no fold has any)."""
    parts = [pl.read_parquet(p) for p in sorted(out.glob(f"fold*/{runs.OOF_NAME}"))]
    if not parts:
        return None
    oof = pl.concat(parts).sort([FOLD_COL, ID_COL])
    with atomic_path(out / runs.OOF_NAME) as tmp:
        oof.write_parquet(tmp)
    slice_parts = [pl.read_parquet(p) for p in sorted(out.glob(f"fold*/{runs.OOF_SLICES_NAME}"))]
    if slice_parts:  # per-slice scores of the OOF series, for the report's gallery of worst mistakes
        with atomic_path(out / runs.OOF_SLICES_NAME) as tmp:
            pl.concat(slice_parts).sort([ID_COL, "roi_z"]).write_parquet(tmp)
    return oof


def plot_curves(out: Path, fold_metrics: dict[int, dict]) -> Path:
    """Training loss and validation score per epoch, one line per fold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for fold, m in sorted(fold_metrics.items()):
        hist = m.get("history", [])
        epochs = [h["epoch"] for h in hist]
        axes[0].plot(epochs, [h["train_loss"] for h in hist], marker="o", label=runs.fold_name(fold))
        if any("val_score" in h for h in hist):
            axes[1].plot(epochs, [h.get("val_score", float("nan")) for h in hist], marker="o",
                         label=runs.fold_name(fold))
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].set(title="validation score (competition metric)", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / runs.CURVES_NAME
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def summarise(out: Path, cache: TrainingCache, fold_metrics: dict[int, dict]) -> dict:
    """RUN/metrics.json: per-fold final scores and the OOF score over every finished fold."""
    summary: dict = {"folds": {runs.fold_name(f): m.get("val", {}) for f, m in sorted(fold_metrics.items())}}
    # a fold stopped by the wall-clock safety cap trained fewer steps than planned: not reproducible, say so
    summary["cut_short_by_time_cap"] = [runs.fold_name(f) for f, m in sorted(fold_metrics.items())
                                        if m.get("budget_stop") == "time_cap" or m.get("stopped_by_budget")]
    oof = merge_oof(out)
    if oof is not None:
        truth = pl.DataFrame({ID_COL: cache.uids, **{c: cache.targets[:, j] for j, c in enumerate(LABEL_COLS)}})
        joined = oof.select(ID_COL).join(truth, on=ID_COL, how="left")
        y_true = joined.select(list(LABEL_COLS)).to_numpy()
        summary["oof"] = {"n": oof.height, **partial_score(y_true, oof.select(list(LABEL_COLS)).to_numpy())}
    runs.write_json(out / runs.METRICS_NAME, summary)
    return summary


# ---------------------------------------------------------------------------------------------------------------------
# Entry points


def train(cache_dir: str | Path, cfg: ExperimentConfig, out: str | Path, fold: str | int = "all",
          folds_file: str | Path | None = None, force_resume: bool = False, progress: bool = True,
          step_callback: StepCallback | None = None) -> dict:
    """Train ``cfg`` on a cache into the run folder ``out``; returns the run summary (RUN/metrics.json).

    Everything that can be wrong with the inputs is checked before the first step: the config, the cache's version
    and data config, the fold file, the fold choice, empty training splits, and a changed config on resume.
    """
    validate_config(cfg)
    out = Path(out)
    cache = open_training_cache(Path(cache_dir), cfg)
    if not cache.uids:
        raise TrainError(f"cache {cache_dir} holds no series with status ok: nothing to train on")
    folds_path = ensure_folds(cache.root, cache.labels, cfg.train.n_folds, cfg.seed,
                              Path(folds_file) if folds_file else None)
    fold_of = fold_assignment(cache, folds_path, cfg.train.n_folds)
    chosen = parse_fold_arg(fold, cfg.train.n_folds)
    for k in chosen:
        if k >= 0 and not np.any(fold_of != k):
            raise TrainError(f"fold {k}: the training split is empty (every cached series is in fold {k})")
    rank, world = rank_world()
    device = pick_device(cfg)
    if rank == 0:
        prepare_run_folder(out, cfg, cache, force_resume)
        folds_copy = read_folds(folds_path, cfg.train.n_folds)
        with atomic_path(out / runs.FOLDS_NAME) as tmp:
            folds_copy.write_csv(tmp)
    if world > 1:
        dist.barrier()
    ctx = RunContext(cfg, cache, out, fold_of, device, rank, world, progress, step_callback)
    fold_metrics = {}
    for k in chosen:
        fold_metrics[k] = train_fold(ctx, k)
    # every finished fold of the run counts for the summary, also those trained by earlier calls
    for k in range(-1, cfg.train.n_folds):
        path = runs.fold_dir(out, k) / runs.METRICS_NAME
        if k not in fold_metrics and path.is_file():
            fold_metrics[k] = runs.read_json(path, "fold metrics")
    summary = {}
    if rank == 0:
        summary = summarise(out, cache, fold_metrics)
        plot_curves(out, fold_metrics)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", help="preprocessed cache folder (default: $KAGGLE_UTILS_CACHE_DIR)")
    parser.add_argument("--config", required=True, help="experiment config YAML, e.g. configs/default.yaml")
    parser.add_argument("--out", required=True, help="run folder to create (or resume)")
    parser.add_argument("--fold", default="all", help="'all' (default), a fold index, or -1 for a full fit")
    parser.add_argument("--folds", help="fold file (default: CACHE/folds.csv, written once when absent)")
    parser.add_argument("--force-resume", action="store_true", help="resume a run folder even if the config changed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. train.epochs=3")


def init_distributed() -> None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)


def run(args: argparse.Namespace) -> int:
    from kaggle_utils import paths

    cfg = load_config(args.config, args.overrides)
    cache = paths.cache_dir(args.cache)
    init_distributed()
    try:
        summary = train(cache, cfg, Path(args.out), args.fold, args.folds, args.force_resume,
                        progress=not args.no_progress)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if summary:
        oof = summary.get("oof", {})
        print(f"run {args.out}: OOF score {oof.get('score', float('nan')):.4f} over {oof.get('n', 0)} series "
              f"({oof.get('n_columns', 0)}/14 columns defined)" if oof else f"run {args.out}: finished")
        if summary.get("cut_short_by_time_cap"):
            print(f"WARNING: fold(s) {summary['cut_short_by_time_cap']} were cut short by train.max_train_minutes "
                  "(fewer steps than planned): this run is not reproducible")
    return 0
