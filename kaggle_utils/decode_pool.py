"""A decode process pool kept alive between series, for inference: ``predict`` loads one series at a time, and a
pool started per call costs more than it saves (bench/bench_preprocess.py), so the processes are started once and
reused.

``load_series_pooled(path)`` is ``dicom.load_series(path, workers=N)`` on the persistent pool, N from
``pool_workers()`` (the machine's cores, at most ``MAX_WORKERS``; env ``KAGGLE_UTILS_DECODE_WORKERS`` overrides,
1 turns the pool off). Uncompressed series never use it (``dicom_decode.use_pool``: reading them in this process is
cheaper than shipping pixels between processes). A pool that cannot start or dies is dropped and the series is
decoded in this process instead, with a log line and a note on the volume; the next series gets a fresh pool.
``shutdown()`` (also registered with ``atexit``) stops the processes.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from concurrent.futures import ProcessPoolExecutor

from kaggle_utils import dicom_decode

__all__ = ["MAX_WORKERS", "load_series_pooled", "persistent_executor", "pool_workers", "shutdown", "start"]

log = logging.getLogger(__name__)

MAX_WORKERS = 4  # a Kaggle CPU notebook's cores; more processes than cores only add switching
ENV_WORKERS = "KAGGLE_UTILS_DECODE_WORKERS"

_lock = threading.Lock()
_executor: ProcessPoolExecutor | None = None
_executor_workers = 0
_atexit_registered = False


def pool_workers() -> int:
    """Decode processes for inference: ``KAGGLE_UTILS_DECODE_WORKERS`` if set, else min(cores, MAX_WORKERS)."""
    value = os.environ.get(ENV_WORKERS, "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError as exc:
            raise ValueError(f"{ENV_WORKERS}={value!r} is not an integer number of processes") from exc
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_WORKERS))


def _alive(executor: ProcessPoolExecutor | None) -> bool:
    """Not shut down and no process died (private flags: the executor has no public health check)."""
    return executor is not None and not getattr(executor, "_broken", False) and not getattr(
        executor, "_shutdown_thread", False)


def _noop(i: int) -> int:
    return i


def start(workers: int) -> ProcessPoolExecutor | None:
    """Start (or keep) the persistent pool with ``workers`` processes; None when ``workers <= 1``. Raises
    ``dicom_decode.PoolUnavailable`` when processes cannot be started."""
    global _executor, _executor_workers, _atexit_registered
    if workers <= 1:
        return None
    with _lock:
        if _alive(_executor) and _executor_workers == workers:
            return _executor
        _shutdown_locked()
        try:
            executor = ProcessPoolExecutor(max_workers=workers, mp_context=dicom_decode._pool_context())
            list(executor.map(_noop, range(workers)))  # start every process now, not inside the first series
        except (OSError, ValueError, RuntimeError) as exc:  # BrokenProcessPool is a RuntimeError
            raise dicom_decode.PoolUnavailable(f"{type(exc).__name__}: {exc}") from exc
        _executor, _executor_workers = executor, workers
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        return executor


def persistent_executor(workers: int) -> ProcessPoolExecutor | None:
    """The live persistent pool if one was started with at least ``workers`` processes, else None (the caller then
    starts a pool of its own for the series). Never starts processes itself."""
    executor = _executor
    if not _alive(executor) or _executor_workers < workers:
        return None
    return executor


def _shutdown_locked() -> None:
    global _executor, _executor_workers
    if _executor is not None:
        _executor.shutdown(wait=True, cancel_futures=True)
    _executor, _executor_workers = None, 0


def shutdown() -> None:
    """Stop the persistent pool's processes (idempotent)."""
    with _lock:
        _shutdown_locked()


def is_running() -> bool:
    return _executor is not None


def load_series_pooled(series_path, workers: int | None = None):
    """``load_series`` with compressed series decoded on the persistent pool (started on first use). Pool trouble
    never fails the series: it is decoded in this process, logged, and noted on the volume."""
    from kaggle_utils.dicom import load_series

    workers = pool_workers() if workers is None else workers
    if workers <= 1:
        return load_series(series_path)
    try:
        start(workers)
    except dicom_decode.PoolUnavailable as exc:
        log.warning("decode pool unavailable (%s); decoding %s in this process", exc, series_path)
        volume = load_series(series_path)
        volume.notes.append(f"decode pool unavailable ({exc}); decoded in this process")
        return volume
    return load_series(series_path, workers=workers)
