"""Offline inference: ``predict(series_path) -> polars.DataFrame`` for the competition gateway, and a batch command.

``predict`` is a plain module-level function (the gateway rejects bound methods, partials and lambdas). It is backed by
one ``Predictor`` built from trained run folders, chosen with ``configure(runs=[...])`` or ``KAGGLE_UTILS_RUNS``. The
models load on the first call; each series is decoded, preprocessed with exactly the ``DataConfig`` its run was trained
on, and scored by every fold, with a left/right flip whose labels are swapped back. Folds and runs are averaged.

Never crash: any failure of one series (decode, geometry, out of memory, non-finite output, time) is logged with the
series and the reason, counted, and answered with the label priors saved in the run folder. A missing or unreadable
model file is different: it fails loudly at start-up (``configure`` or the first call), never silently.

A ``BudgetGuard`` projects the total runtime from per-series latency and steps down (drop the flip, then folds) when
the projection would overrun the budget. The share directory is emptied after every series; only paths inside it are
ever deleted.

    python -m kaggle_utils predict --models RUN [RUN ...] --series-dir DIR --ids CSV --out FILE.parquet
"""

from __future__ import annotations

import argparse
import atexit
import collections
import dataclasses
import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kaggle_utils import paths
from kaggle_utils.config import DataConfig, ExperimentConfig, InferConfig, from_dict, read_yaml
from kaggle_utils.errors import KitError
from kaggle_utils.io import empty_dir
from kaggle_utils.schema import ID_COL, LABEL_COLS, N_LABELS
from kaggle_utils.train import runs

log = logging.getLogger("kaggle_utils.infer")

Clock = Callable[[], float]


class ModelLoadError(KitError):
    """A run folder whose model files are missing or unreadable: inference refuses to start."""


class SeriesFailure(Exception):
    """A problem with one series found by the predictor itself (non-finite output, time limit, bad array)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------------------------------------------------
# Run folders: cheap start-up checks, priors, the inference config.


def check_run_folder(run_dir: str | os.PathLike) -> list[Path]:
    """The run's model files (``train.runs`` owns the layout); raises ``ModelLoadError`` if serving cannot use it."""
    try:
        return runs.check_run_folder(run_dir)
    except runs.RunError as exc:
        raise ModelLoadError(str(exc)) from None


def priors_vector(priors: Any, where: str) -> np.ndarray:
    """Label priors (mapping column -> probability, or 14 values in LABEL_COLS order) as a float64 vector."""
    if isinstance(priors, dict):
        missing = [c for c in LABEL_COLS if c not in priors]
        if missing:
            raise ModelLoadError(f"{where}: priors lack the column(s) {missing}")
        values = np.array([float(priors[c]) for c in LABEL_COLS], dtype=np.float64)
    else:
        values = np.asarray(priors, dtype=np.float64).reshape(-1)
        if values.shape != (N_LABELS,):
            raise ModelLoadError(f"{where}: expected {N_LABELS} priors, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
        raise ModelLoadError(f"{where}: priors must be probabilities in [0, 1], got {values.tolist()}")
    return values


def read_priors(run_dir: str | os.PathLike) -> np.ndarray:
    """The fallback probabilities saved by training (``RUN/priors.json``) as a vector in LABEL_COLS order."""
    try:
        return priors_vector(runs.read_priors(run_dir), str(Path(run_dir) / runs.PRIORS_NAME))
    except runs.RunError as exc:
        raise ModelLoadError(f"cannot read label priors: {exc}") from None


def run_infer_config(run_dir: str | os.PathLike) -> InferConfig:
    """The ``infer`` section saved with a run (defaults where the run predates a field)."""
    data = read_yaml(Path(run_dir) / runs.CONFIG_NAME)
    return from_dict(InferConfig, data.get("infer") or {}, f"{run_dir}/{runs.CONFIG_NAME}:infer")


def scoring_config(run_cfg: ExperimentConfig, infer_cfg: InferConfig) -> ExperimentConfig:
    """The config the models are run with: the run's (model, crop sizes) with the predictor's resolved ``infer``
    section (windowing, window step), and mixed precision from ``infer.autocast``, not from ``train.amp``.

    The model code reads autocast from ``train.amp``; the copy carries ``infer.autocast`` there so the saved training
    setting never decides inference precision."""
    train = dataclasses.replace(run_cfg.train, amp=infer_cfg.autocast != "off")
    return dataclasses.replace(run_cfg, infer=infer_cfg, train=train)


def resolve_device(requested: str | None, infer_cfg: InferConfig) -> str:
    """An explicit ``device`` argument wins, then ``infer.device``; "auto" = cuda if available."""
    choice = requested or infer_cfg.device
    return default_device() if choice == "auto" else choice


# --------------------------------------------------------------------------------------------------------------------
# Share directory: empty it after each series, never touch anything outside it.


def check_share_dir(share_dir: str | os.PathLike) -> Path:
    """Refuse share directories whose emptying would be a disaster (root, home, the repo, the cwd or above it)."""
    resolved = Path(share_dir).expanduser().resolve()
    forbidden = {Path("/").resolve(), Path.home().resolve(), paths.REPO_ROOT.resolve()}
    cwd = Path.cwd().resolve()
    if resolved in forbidden or resolved == cwd or resolved in cwd.parents:
        raise KitError(f"refusing to use {share_dir} as the share directory: predict() empties it after every series")
    return resolved


def is_inside(path: str | os.PathLike, folder: Path) -> bool:
    """True when ``path`` (symlinks resolved) lies strictly inside ``folder``."""
    resolved = Path(path).expanduser().resolve()
    return resolved != folder and folder in resolved.parents


def clean_share_dir(share_dir: Path, series_path: str | os.PathLike) -> int:
    """Empty ``share_dir`` after serving ``series_path``; return the number of entries removed.

    Deletes nothing when the series lies outside the share directory (e.g. batch prediction on training data), and
    never follows a symlink: links are removed, their targets stay.
    """
    if not share_dir.is_dir():
        return 0
    if not is_inside(series_path, share_dir):
        log.warning("series %s is outside the share directory %s: nothing deleted", series_path, share_dir)
        return 0
    return empty_dir(share_dir)


# --------------------------------------------------------------------------------------------------------------------
# Runtime budget.


@dataclass(frozen=True)
class Level:
    """One quality step: with or without the flip, and how many folds of each run."""

    tta: bool
    folds: int

    def __str__(self) -> str:
        return f"{self.folds} fold(s){' + flip' if self.tta else ''}"


def degradation_levels(max_folds: int, tta: bool) -> list[Level]:
    """Best first: full ensemble with flip, then without flip, then one fold fewer at a time down to one."""
    levels = [Level(True, max_folds)] if tta else []
    levels += [Level(False, k) for k in range(max_folds, 0, -1)]
    return levels


class BudgetGuard:
    """Projects the total runtime from measured latencies and picks the best level that still fits the budget.

    Latency is modelled as ``overhead + passes * per_pass``, both measured (means over the last ``window`` series),
    so the cost of a level never used yet is still predictable. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        budget_s: float,
        expected_series: int,
        levels: Sequence[Level],
        folds_per_run: Sequence[int],
        warmup_series: int = 3,
        clock: Clock = time.monotonic,
        window: int = 50,
    ):
        self.budget_s = float(budget_s)
        self.expected_series = int(expected_series)
        self.levels = list(levels)
        self.folds_per_run = [int(n) for n in folds_per_run]
        self.warmup_series = int(warmup_series)
        self.clock = clock
        self.overheads: collections.deque[float] = collections.deque(maxlen=window)
        self.pass_times: collections.deque[float] = collections.deque(maxlen=window)
        self.started_at: float | None = None
        self.done = 0
        self.level_index = 0

    def start(self) -> None:
        if self.started_at is None:
            self.started_at = self.clock()

    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else self.clock() - self.started_at

    def passes(self, level: Level) -> int:
        """Forward passes per series at ``level`` (a run with fewer folds than the level uses all it has)."""
        return sum(min(level.folds, n) for n in self.folds_per_run) * (2 if level.tta else 1)

    def record(self, overhead_s: float, model_s: float, passes: int) -> None:
        """One finished series: non-model time and model time over ``passes`` forward passes (0 = fallback)."""
        self.done += 1
        if passes > 0:
            self.overheads.append(max(overhead_s, 0.0))
            self.pass_times.append(max(model_s, 0.0) / passes)

    def per_series(self, level: Level) -> float | None:
        if not self.pass_times:
            return None
        return statistics.fmean(self.overheads) + self.passes(level) * statistics.fmean(self.pass_times)

    def projected_total(self, level: Level | None = None) -> float | None:
        """Elapsed time plus the remaining expected series at ``level`` (default: the current one)."""
        per = self.per_series(level or self.level)
        if per is None:
            return None
        return self.elapsed() + max(self.expected_series - self.done, 0) * per

    @property
    def level(self) -> Level:
        return self.levels[self.level_index]

    def choose(self) -> Level:
        """Best level whose projection fits (the lowest one when none does); unchanged during the warm-up."""
        if len(self.pass_times) < self.warmup_series:
            return self.level
        fits = [i for i, lv in enumerate(self.levels) if self.projected_total(lv) <= self.budget_s]
        new_index = fits[0] if fits else len(self.levels) - 1
        if new_index != self.level_index:
            log.warning(
                "runtime budget: projected %.2f h at %s vs budget %.2f h -> switching to %s (projected %.2f h)",
                self.projected_total() / 3600, self.level, self.budget_s / 3600, self.levels[new_index],
                self.projected_total(self.levels[new_index]) / 3600,
            )
            self.level_index = new_index
        return self.level

    def report(self) -> dict:
        projected = self.projected_total()
        return {
            "series_done": self.done,
            "expected_series": self.expected_series,
            "elapsed_s": round(self.elapsed(), 3),
            "per_series_s": None if self.per_series(self.level) is None else round(self.per_series(self.level), 4),
            "projected_total_s": None if projected is None else round(projected, 1),
            "budget_s": self.budget_s,
            "level": str(self.level),
        }


# --------------------------------------------------------------------------------------------------------------------
# The predictor.


@dataclass
class SeriesRecord:
    """What happened to one series: latency by stage, the level used, and the fallback reason if any."""

    series: str
    stages: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0
    level: str = ""
    passes: int = 0
    fallback: str | None = None
    message: str = ""


def _load_runs_default(run_dir: Path, device: str) -> Any:
    return runs.load_run(run_dir, device)


def _load_series_default(series_path: str) -> Any:
    from kaggle_utils.decode_pool import load_series_pooled  # compressed series: a process pool kept between calls

    return load_series_pooled(series_path)


def _prepare_default(volume: Any, data_cfg: DataConfig) -> Any:
    from kaggle_utils.preprocess import prepare_series

    return prepare_series(volume, data_cfg)


def _predict_probs_default(model: Any, images: Any, cfg: ExperimentConfig, lr_flip: bool) -> np.ndarray:
    from kaggle_utils.train.models import predict_probs

    return predict_probs(model, images, cfg, lr_flip=lr_flip)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Stages:
    """The pluggable steps (defaults: the kit's loader, preprocessing, run loader and model); tests swap them."""

    load_run: Callable[[Path, str], Any] = _load_runs_default
    load_series: Callable[[str], Any] = _load_series_default
    prepare: Callable[[Any, DataConfig], Any] = _prepare_default
    # (model, images uint8 (B, C, Z, Y, X), cfg, lr_flip) -> (B, 14); with lr_flip the labels come back unswapped.
    predict_probs: Callable[[Any, Any, ExperimentConfig, bool], np.ndarray] = _predict_probs_default


def _failure_reason(exc: BaseException) -> str:
    """A short, countable reason for a failed series."""
    if isinstance(exc, SeriesFailure):
        return exc.reason
    name = type(exc).__name__
    if isinstance(exc, MemoryError) or "OutOfMemory" in name:
        return "out of memory"
    return name


class Predictor:
    """Scores series with the fold ensembles of one or more run folders; never raises for a bad series."""

    def __init__(
        self,
        run_dirs: Sequence[str | os.PathLike],
        share_dir: str | os.PathLike | None = None,
        infer_cfg: InferConfig | None = None,
        device: str | None = None,
        clock: Clock = time.monotonic,
        stages: Stages | None = None,
    ):
        if not run_dirs:
            raise ModelLoadError("no run folders given")
        self.run_dirs = [Path(r) for r in run_dirs]
        for run_dir in self.run_dirs:
            check_run_folder(run_dir)
        self.priors = [read_priors(r) for r in self.run_dirs]  # read once: the fallback before and after loading
        self.fallback_probs = np.mean(self.priors, axis=0)
        self.infer_cfg = infer_cfg if infer_cfg is not None else run_infer_config(self.run_dirs[0])
        self.share_dir = check_share_dir(share_dir) if share_dir is not None else None
        self.device = device
        self.clock = clock
        self.stages = stages or Stages()
        self.created_at = clock()
        self._lock = threading.Lock()
        self.runs: list[runs.LoadedRun] | None = None
        self.guard: BudgetGuard | None = None
        self.records: list[SeriesRecord] = []
        self.reported = 0  # records already shown by report()
        self.cleanup_errors = 0
        self.load_s = 0.0

    # -- start-up ----------------------------------------------------------------------------------------------------
    def load(self) -> list[runs.LoadedRun]:
        """Load every run's fold models (once). Any problem raises ``ModelLoadError``: no silent fallback here."""
        if self.runs is not None:
            return self.runs
        t0 = self.clock()
        device = resolve_device(self.device, self.infer_cfg)
        loaded_runs = []
        for run_dir in self.run_dirs:
            try:
                loaded = self.stages.load_run(run_dir, device)
            except Exception as exc:  # re-raised loudly with the run named: a broken model must stop the submission
                raise ModelLoadError(f"cannot load the models of run {run_dir}: {type(exc).__name__}: {exc}") from exc
            if not loaded.models:
                raise ModelLoadError(f"run {run_dir} loaded no fold models")
            models = list(loaded.models)  # load_run's order: folds ascending, the full fit last
            if self.infer_cfg.max_folds > 0:
                models = models[: self.infer_cfg.max_folds]
            # the resolved inference settings travel with the run: _score passes exactly this config down
            loaded_runs.append(runs.LoadedRun(run_dir, scoring_config(loaded.cfg, self.infer_cfg), loaded.data_cfg,
                                              models, dict(zip(LABEL_COLS, self.priors[len(loaded_runs)])),
                                              getattr(loaded, "kit", {})))
        self.runs = loaded_runs
        max_folds = max(len(r.models) for r in loaded_runs)
        cfg = self.infer_cfg
        self.guard = BudgetGuard(
            cfg.budget_hours * 3600.0,
            cfg.expected_series,
            degradation_levels(max_folds, cfg.lr_flip_tta),
            folds_per_run=[len(r.models) for r in loaded_runs],
            warmup_series=cfg.budget_warmup_series,
            clock=self.clock,
        )
        self.guard.started_at = self.created_at  # the budget covers start-up and model loading too
        self.load_s = self.clock() - t0
        log.info(
            "loaded %d run(s), %d fold model(s) on %s in %.1f s",
            len(loaded_runs), sum(len(r.models) for r in loaded_runs), device, self.load_s,
        )
        return loaded_runs

    # -- one series --------------------------------------------------------------------------------------------------
    def _check_time(self, started: float) -> None:
        if self.clock() - started > self.infer_cfg.series_time_limit_s:
            raise SeriesFailure("time limit", f"over the per-series limit of {self.infer_cfg.series_time_limit_s} s")

    def _score(self, series_path: str, level: Level, rec: SeriesRecord, started: float) -> np.ndarray:
        """Decode, preprocess once per distinct DataConfig, run the models; raises on any problem."""
        import torch

        t = self.clock()
        volume = self.stages.load_series(series_path)
        array = getattr(volume, "array", None)
        if array is not None and not np.all(np.isfinite(array)):
            raise SeriesFailure("non-finite image", "the decoded volume holds NaN or infinite values")
        rec.stages["load"] = self.clock() - t
        self._check_time(started)

        per_run: list[np.ndarray] = []
        prepared_by_cfg: dict[str, Any] = {}
        rec.stages["preprocess"] = 0.0
        rec.stages["model"] = 0.0
        for run in self.runs:
            key = json.dumps(dataclasses.asdict(run.data_cfg), sort_keys=True)
            if key not in prepared_by_cfg:
                t = self.clock()
                prepared = self.stages.prepare(volume, run.data_cfg)
                image = np.asarray(prepared.image)
                if image.dtype != np.uint8 or image.ndim != 4 or image.size == 0:
                    raise SeriesFailure("bad image", f"prepared image is {image.dtype} {image.shape}, not uint8 CZYX")
                prepared_by_cfg[key] = torch.from_numpy(np.ascontiguousarray(image))[None]
                rec.stages["preprocess"] += self.clock() - t
                self._check_time(started)
            images = prepared_by_cfg[key]
            t = self.clock()
            fold_probs = []
            for _fold, model in run.models[: level.folds]:
                with torch.inference_mode():
                    probs = self._model_probs(model, images, run.cfg, lr_flip=False)
                    rec.passes += 1
                    if level.tta:  # the flip is a patient left/right flip; predict_probs swaps the labels back
                        probs = 0.5 * (probs + self._model_probs(model, images, run.cfg, lr_flip=True))
                        rec.passes += 1
                if not np.all(np.isfinite(probs)):
                    raise SeriesFailure("non-finite output", "the model returned NaN or infinite probabilities")
                fold_probs.append(probs)
                self._check_time(started)
            rec.stages["model"] += self.clock() - t
            per_run.append(np.mean(fold_probs, axis=0))
        return np.clip(np.mean(per_run, axis=0), 0.0, 1.0)

    def _model_probs(self, model: Any, images: Any, cfg: ExperimentConfig, lr_flip: bool) -> np.ndarray:
        probs = np.asarray(self.stages.predict_probs(model, images, cfg, lr_flip), dtype=np.float64).reshape(-1)
        if probs.shape != (N_LABELS,):
            raise SeriesFailure("bad output", f"model returned {probs.shape}, expected ({N_LABELS},)")
        return probs

    def predict_probs(self, series_path: str) -> tuple[np.ndarray, SeriesRecord]:
        """14 probabilities for one series and what happened; failures give the fallback priors, never raise."""
        with self._lock:  # the gateway calls one at a time; a threaded batch caller must not interleave series
            return self._predict_probs(series_path)

    def _predict_probs(self, series_path: str) -> tuple[np.ndarray, SeriesRecord]:
        self.load()  # outside the fallback boundary: a broken model must fail loudly
        self.guard.start()
        level = self.guard.choose()
        rec = SeriesRecord(series=Path(series_path).name, level=str(level))
        started = self.clock()
        try:
            if self.guard.elapsed() > self.guard.budget_s:  # past the budget: answer at once to finish in time
                raise SeriesFailure("time budget spent", f"{self.guard.elapsed() / 3600:.2f} h elapsed of the "
                                    f"{self.guard.budget_s / 3600:.2f} h budget; priors without reading the series")
            probs = self._score(str(series_path), level, rec, started)
        except Exception as exc:  # the gateway boundary: log, count, answer with the priors
            rec.fallback = _failure_reason(exc)
            rec.message = f"{type(exc).__name__}: {exc}"
            log.warning("series %s: fallback priors (%s): %s", series_path, rec.fallback, rec.message)
            probs = self.fallback_probs.copy()
            if "OutOfMemory" in type(exc).__name__:
                _free_gpu_memory()
        finally:
            t = self.clock()
            self._cleanup(series_path, rec)
            rec.stages["cleanup"] = self.clock() - t
            rec.total_s = self.clock() - started
        model_s = rec.stages.get("model", 0.0) if rec.fallback is None else 0.0
        self.guard.record(rec.total_s - model_s, model_s, rec.passes if rec.fallback is None else 0)
        self.records.append(rec)
        if len(self.records) % 100 == 0:
            log.info("progress: %s", self.guard.report())
        return probs, rec

    def _cleanup(self, series_path: str, rec: SeriesRecord) -> None:
        """Empty the share directory; a failure is logged and counted, never raised (the row is still valid)."""
        if self.share_dir is None:
            return
        try:
            clean_share_dir(self.share_dir, series_path)
        except OSError as exc:  # the gateway boundary: a full disk later is better than a failed submission now
            self.cleanup_errors += 1
            log.error("series %s: could not empty the share directory %s: %s", series_path, self.share_dir, exc)

    def predict(self, series_path: str) -> pl.DataFrame:
        """The gateway's answer: 1 row, the 14 label columns in order, Float64 in [0, 1]."""
        probs, _ = self.predict_probs(series_path)
        return probs_frame(probs)

    # -- reporting ---------------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Counts, latencies, fallback reasons and the budget projection so far."""
        totals = [r.total_s for r in self.records]
        fallbacks = [r for r in self.records if r.fallback]
        ok = [r for r in self.records if r.fallback is None]
        stage_names = sorted({name for r in ok for name in r.stages})
        return {
            "series": len(self.records),
            "fallbacks": len(fallbacks),
            "stage_median_s": {n: statistics.median(r.stages.get(n, 0.0) for r in ok) for n in stage_names},
            "fallback_reasons": dict(collections.Counter(r.fallback for r in fallbacks)),
            "fallback_series": [(r.series, r.fallback, r.message) for r in fallbacks],
            "latency_median_s": statistics.median(totals) if totals else None,
            "latency_p95_s": float(np.percentile(totals, 95)) if totals else None,
            "model_load_s": self.load_s,
            "cleanup_errors": self.cleanup_errors,
            "budget": self.guard.report() if self.guard else None,
        }


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def probs_frame(probs: np.ndarray) -> pl.DataFrame:
    """14 probabilities -> the 1-row Float64 frame the gateway expects (NaN replaced by 0.5 as a last resort)."""
    values = np.asarray(probs, dtype=np.float64).reshape(N_LABELS)
    values = np.clip(np.where(np.isfinite(values), values, 0.5), 0.0, 1.0)
    return pl.DataFrame({c: [float(v)] for c, v in zip(LABEL_COLS, values)}, schema={c: pl.Float64 for c in LABEL_COLS})


def summary_text(summary: dict) -> str:
    """A short human-readable summary: counts, reasons, latency and the budget projection."""
    lines = [f"inference summary: {summary['series']} series, {summary['fallbacks']} fallback(s)"]
    for reason, count in sorted(summary["fallback_reasons"].items()):
        lines.append(f"  fallback reason {reason!r}: {count}")
    for series, reason, message in summary["fallback_series"][:20]:
        lines.append(f"    {series}: {reason}: {message}")
    if summary["latency_median_s"] is not None:
        lines.append(
            f"  latency median {summary['latency_median_s']:.3f} s, p95 {summary['latency_p95_s']:.3f} s; "
            f"model load {summary['model_load_s']:.1f} s"
        )
    if summary.get("stage_median_s"):
        lines.append("  median by stage: " + ", ".join(f"{k} {v:.3f} s" for k, v in summary["stage_median_s"].items()))
    if summary.get("cleanup_errors"):
        lines.append(f"  share directory could not be emptied {summary['cleanup_errors']} time(s) (see the log)")
    budget = summary.get("budget")
    if budget and budget["projected_total_s"] is not None:
        lines.append(
            f"  projected total {budget['projected_total_s'] / 3600:.2f} h for {budget['expected_series']} series "
            f"vs budget {budget['budget_s'] / 3600:.2f} h at {budget['level']}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Module-level API for the gateway.

_PREDICTOR: Predictor | None = None
_ATEXIT_REGISTERED = False


def configure(
    runs: Sequence[str | os.PathLike] | None = None,
    share_dir: str | os.PathLike | None = None,
    *,
    clean_share: bool = True,
    infer: InferConfig | dict | None = None,
    device: str | None = None,
    clock: Clock = time.monotonic,
    load_now: bool = False,
    stages: Stages | None = None,
) -> Predictor:
    """Choose the run folders behind ``predict`` (default: ``KAGGLE_UTILS_RUNS``) and the share directory.

    ``infer`` overrides the run's ``infer`` config section (a dict of fields or a full ``InferConfig``).
    ``load_now`` loads the models immediately instead of on the first call. Model problems raise here or at load.
    """
    global _PREDICTOR, _ATEXIT_REGISTERED
    run_list = paths.run_dirs(list(runs) if runs else None)
    if isinstance(infer, dict):
        base = dataclasses.asdict(run_infer_config(run_list[0]))
        infer = from_dict(InferConfig, {**base, **infer}, "configure(infer=...)")
    share = paths.share_dir(share_dir) if clean_share else None
    predictor = Predictor(run_list, share, infer, device=device, clock=clock, stages=stages)
    if load_now:
        predictor.load()
    _PREDICTOR = predictor
    if not _ATEXIT_REGISTERED:
        atexit.register(_log_summary_at_exit)
        _ATEXIT_REGISTERED = True
    return predictor


def get_predictor() -> Predictor:
    """The configured predictor; configured from the environment on first use."""
    return _PREDICTOR if _PREDICTOR is not None else configure()


def reset() -> None:
    """Forget the configured predictor (tests, or re-configuring in a notebook)."""
    global _PREDICTOR
    _PREDICTOR = None


def predict(series_path: str) -> pl.DataFrame:
    """Gateway entry point: one series folder in, a 1-row frame of the 14 label probabilities out."""
    return get_predictor().predict(series_path)


def summary() -> dict:
    """Summary of everything ``predict`` answered so far (empty when not configured)."""
    return _PREDICTOR.summary() if _PREDICTOR is not None else {}


def report() -> str:
    """Print the summary of what ``predict`` answered so far (and remember it was shown) and return it."""
    if _PREDICTOR is None:
        return ""
    text = summary_text(_PREDICTOR.summary())
    print(text, flush=True)
    _PREDICTOR.reported = len(_PREDICTOR.records)
    return text


def _log_summary_at_exit() -> None:
    """The summary at interpreter exit (e.g. after ``serve()`` on the rerun) unless it was already reported."""
    if _PREDICTOR is not None and len(_PREDICTOR.records) > _PREDICTOR.reported:
        log.warning("%s", summary_text(_PREDICTOR.summary()))


# --------------------------------------------------------------------------------------------------------------------
# Batch command.


def predict_many(predictor: Predictor, series_dir: Path, ids: Sequence[str]) -> pl.DataFrame:
    """ID column + 14 label columns for every id (missing or bad series get the fallback priors)."""
    rows = []
    for uid in ids:
        probs, _ = predictor.predict_probs(str(series_dir / uid))
        rows.append(np.asarray(probs, dtype=np.float64))
    data = {ID_COL: list(ids)}
    matrix = np.vstack(rows) if rows else np.zeros((0, N_LABELS))
    data.update({c: matrix[:, i] for i, c in enumerate(LABEL_COLS)})
    return pl.DataFrame(data, schema={ID_COL: pl.String, **{c: pl.Float64 for c in LABEL_COLS}})


def read_ids(csv_path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """The series ids of a csv with a ``SeriesInstanceUID`` column."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise KitError(f"ids file {csv_path} does not exist")
    frame = pl.read_csv(csv_path, columns=None, infer_schema_length=0)
    if ID_COL not in frame.columns:
        raise KitError(f"ids file {csv_path} has no {ID_COL} column (columns: {frame.columns})")
    ids = frame[ID_COL].to_list()
    return ids[:limit] if limit else ids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", help="run folder(s) (default: KAGGLE_UTILS_RUNS)")
    parser.add_argument("--series-dir", required=True, help="folder of series/<SeriesInstanceUID>/ DICOM folders")
    parser.add_argument("--ids", required=True, help="csv with a SeriesInstanceUID column")
    parser.add_argument("--out", required=True, help="output parquet (SeriesInstanceUID + 14 label columns)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N ids")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument("--no-tta", action="store_true", help="skip the left/right flip")


def run(args: argparse.Namespace) -> int:
    series_dir = Path(args.series_dir)
    if not series_dir.is_dir():
        raise KitError(f"series folder {series_dir} does not exist")
    out = paths.ensure_parent(args.out)
    ids = read_ids(args.ids, args.limit)
    infer: dict = {"expected_series": max(len(ids), 1)}
    if args.no_tta:
        infer["lr_flip_tta"] = False
    predictor = configure(args.models, clean_share=False, infer=infer, device=args.device)
    frame = predict_many(predictor, series_dir, ids)
    from kaggle_utils.io import atomic_path

    with atomic_path(out) as tmp:
        frame.write_parquet(tmp)
    report()
    print(f"wrote {len(frame)} rows to {out}")
    return 0

