"""Serve ``predict`` through the competition's gateway when its ``kaggle_evaluation`` package is available, else
through the kit's local gateway, which emulates the contract (COMPETITION.md, "Serving") so a submission can be tried
on one's own machine:

- the served function must be a plain ``def`` named ``predict``;
- the share directory must be empty at the start; each series is exposed there as a folder of symlinks to its
  ``*.dcm`` files at the series' absolute path mirrored under the share directory (basename = SeriesInstanceUID), in
  random order, one call at a time in one worker thread (a test id without ``*.dcm`` aborts); predict may empty or
  even remove the share directory, which is recreated for the next series;
- each answer must be a polars or pandas DataFrame of exactly one row (anything else fails the run at once); wrong
  columns, NaN or out-of-range values are written as they are (answers whose columns disagree fail at the end),
  ``SeriesInstanceUID`` is added first;
- ``serve()`` must be reached within 15 minutes of the notebook starting (checked when the caller says when it started)
  and every call after the first must answer within the per-call timeout (30 minutes; both from ``limits``); an
  exception in ``predict`` fails the run and no submission is written; a stale ``submission.parquet`` is removed at
  the start, the new one is written atomically.

The competition's gateway listens on fixed ports, so gateway runs (either kind) take a machine-wide lock file and never
overlap.

    python -m kaggle_utils serve --models RUN [RUN ...] --data-dir COMPETITION [--local]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import importlib
import inspect
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from kaggle_utils import limits, paths
from kaggle_utils.config import InferConfig
from kaggle_utils.errors import KitError
from kaggle_utils.io import atomic_path, empty_dir
from kaggle_utils.schema import ID_COL

log = logging.getLogger("kaggle_utils.gateway")

SUBMISSION_NAME = "submission.parquet"
LOCK_NAME = "kaggle_utils_gateway.lock"


class GatewayError(KitError):
    """The served function or the data broke the gateway contract: the run fails, no submission is written."""


# --------------------------------------------------------------------------------------------------------------------
# Shared pieces.


def lock_path() -> Path:
    """Machine-wide lock file: the competition gateway's ports are machine-wide too."""
    return Path(tempfile.gettempdir()) / LOCK_NAME


@contextlib.contextmanager
def gateway_lock(wait_s: float = 900.0, poll_s: float = 0.2) -> Iterator[Path]:
    """Hold the gateway lock for the duration of one gateway run; wait up to ``wait_s`` for another run to finish."""
    path = lock_path()
    with open(path, "a+") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GatewayError(
                        f"another gateway run holds {path} (pid {_read_pid(path)}); two runs must never overlap"
                    ) from None
                time.sleep(poll_s)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield path
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def check_predict_function(fn: Any) -> None:
    """The competition gateway only accepts a plain function named ``predict``."""
    if not inspect.isfunction(fn) or fn.__name__ != "predict":
        kind = type(fn).__name__
        name = getattr(fn, "__name__", repr(fn))
        raise GatewayError(
            f"the served function must be a plain `def predict(series_path)`; got {kind} {name!r} "
            "(bound methods, functools.partial and lambdas are rejected)"
        )


def resolve_test_data(
    data_dir: str | os.PathLike | None = None,
    test_csv: str | os.PathLike | None = None,
    series_dir: str | os.PathLike | None = None,
) -> tuple[Path, Path]:
    """Absolute ``(test.csv, series folder)``: explicit paths, else ``DATA/kaggle_evaluation/{test.csv,series}``."""
    if test_csv is None or series_dir is None:
        base = paths.data_dir(data_dir) / "kaggle_evaluation"
        test_csv = test_csv or base / "test.csv"
        series_dir = series_dir or base / "series"
    test_csv, series_dir = Path(test_csv).expanduser().resolve(), Path(series_dir).expanduser().resolve()
    if not test_csv.is_file():
        raise GatewayError(f"test csv {test_csv} does not exist")
    if not series_dir.is_dir():
        raise GatewayError(f"series folder {series_dir} does not exist")
    return test_csv, series_dir


def prepare_share_dir(share_dir: str | os.PathLike) -> Path:
    """Create the share directory if needed; it must be empty when the gateway starts."""
    share = Path(share_dir).expanduser()
    share.mkdir(parents=True, exist_ok=True)
    leftovers = sorted(p.name for p in share.iterdir())
    if leftovers:
        raise GatewayError(f"share directory {share} must be empty when the gateway starts; it holds {leftovers[:5]}")
    return share.resolve()


def shared_path(share_dir: Path, source: Path) -> Path:
    """Where the competition gateway exposes ``source``: its absolute path mirrored under the share directory."""
    source = source.absolute()
    return share_dir / source.relative_to(source.anchor)


def link_series(source: Path, dest: Path) -> int:
    """Expose one series in the share directory as symlinks to its ``*.dcm`` files; a series without any aborts."""
    files = sorted(source.glob("*.dcm")) if source.is_dir() else []
    if not files:
        raise GatewayError(f"test series {source.name}: no *.dcm files in {source}; the gateway aborts the run")
    dest.mkdir(parents=True)
    for f in files:
        os.symlink(f.resolve(), dest / f.name)
    return len(files)


def validate_answer(answer: Any, series_uid: str) -> pl.DataFrame:
    """1-row DataFrame check of the real gateway: other types or row counts fail at once; contents are not judged."""
    import pandas as pd

    if isinstance(answer, pd.DataFrame):
        answer = pl.from_pandas(answer)
    if not isinstance(answer, pl.DataFrame):
        raise GatewayError(f"predict returned {type(answer).__name__} for {series_uid}; it must return a DataFrame")
    if answer.height != 1:
        raise GatewayError(f"predict returned {answer.height} rows for {series_uid}; it must return exactly 1")
    if ID_COL in answer.columns:
        answer = answer.drop(ID_COL)
    return answer


def concat_answers(rows: list[pl.DataFrame]) -> pl.DataFrame:
    """All answers as one table; answers whose columns disagree fail the run, as in the competition gateway."""
    if not rows:
        return pl.DataFrame({ID_COL: []}, schema={ID_COL: pl.String})
    try:
        return pl.concat(rows, how="vertical_relaxed")
    except (pl.exceptions.SchemaError, pl.exceptions.ComputeError, pl.exceptions.ShapeError) as exc:
        raise GatewayError(f"predict answers have inconsistent columns or types; the run fails: {exc}") from None


# --------------------------------------------------------------------------------------------------------------------
# The kit's local gateway.


@dataclass
class GatewayResult:
    """What a local gateway run produced."""

    submission: Path
    order: list[str]
    latencies: list[float] = field(default_factory=list)
    leftovers: int = 0  # calls after which predict left files in the share directory
    startup_s: float | None = None  # from the notebook's start to the gateway's start, when known


def limit_lines(latencies: list[float], startup_s: float | None = None) -> list[str]:
    """The served run against the competition's limits: the worst series after the first (which may load the models
    and has no deadline) against the per-series limit, and the start-up against the server-start limit."""
    lines = []
    if startup_s is not None:
        verdict = "ok" if startup_s <= limits.SERVER_START_LIMIT_S else "TOO LATE: the rerun would fail"
        lines.append(f"server start: {startup_s:.1f} s after the notebook started vs the "
                     f"{limits.SERVER_START_LIMIT_S / 60:.0f}-minute limit -> {verdict}")
    if latencies:
        lines.append(f"first call (loads the models, no deadline): {latencies[0]:.2f} s")
    if len(latencies) > 1:
        worst = max(latencies[1:])
        verdict = "ok" if worst <= limits.SERIES_TIMEOUT_S else "TOO SLOW: the gateway would fail the run"
        lines.append(f"worst series after the first: {worst:.2f} s vs the {limits.SERIES_TIMEOUT_S / 60:.0f}-minute "
                     f"limit per series ({worst / limits.SERIES_TIMEOUT_S:.1%} of it) -> {verdict}")
    return lines


class LocalGateway:
    """Replays a test csv through ``predict_fn`` exactly as the competition gateway would (see the module doc)."""

    def __init__(
        self,
        predict_fn: Callable[[str], Any],
        test_csv: Path,
        series_dir: Path,
        share_dir: Path,
        out_dir: Path,
        call_timeout_s: float = InferConfig.call_timeout_s,
        seed: int | None = None,
        limit: int | None = None,
        started_at: float | None = None,
    ):
        self.predict_fn = predict_fn
        self.test_csv = Path(test_csv)
        self.series_dir = Path(series_dir)
        self.share_dir = Path(share_dir)
        self.out_dir = Path(out_dir)
        self.call_timeout_s = call_timeout_s
        self.seed = seed
        self.limit = limit
        self.started_at = started_at  # time.monotonic() when the notebook started (None: not checked)

    def series_order(self) -> list[str]:
        frame = pl.read_csv(self.test_csv, infer_schema_length=0)
        if ID_COL not in frame.columns:
            raise GatewayError(f"test csv {self.test_csv} has no {ID_COL} column (columns: {frame.columns})")
        ids = list(dict.fromkeys(frame[ID_COL].to_list()))
        random.Random(self.seed).shuffle(ids)
        return ids[: self.limit] if self.limit else ids

    def _call(self, executor: concurrent.futures.Executor, series_path: Path, first: bool) -> Any:
        future = executor.submit(self.predict_fn, str(series_path))
        timeout = None if first else self.call_timeout_s
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError as exc:
            if future.done():  # predict itself raised a TimeoutError
                raise GatewayError(f"predict raised on series {series_path.name}: {exc!r}; the run fails") from exc
            raise GatewayError(
                f"predict did not answer series {series_path.name} within {self.call_timeout_s} s; the run fails"
            ) from None
        except Exception as exc:
            raise GatewayError(
                f"predict raised on series {series_path.name}: {type(exc).__name__}: {exc}; the run fails"
            ) from exc

    def run(self) -> GatewayResult:
        check_predict_function(self.predict_fn)
        submission = self.out_dir / SUBMISSION_NAME
        submission.unlink(missing_ok=True)  # a stale file must not pass for this run's result
        startup_s = None if self.started_at is None else time.monotonic() - self.started_at
        if startup_s is not None and startup_s > limits.SERVER_START_LIMIT_S:
            raise GatewayError(
                f"the gateway started {startup_s / 60:.1f} min after the notebook; the competition's allows "
                f"{limits.SERVER_START_LIMIT_S / 60:.0f} min: load models inside the first predict call, not before"
            )
        self.share_dir = prepare_share_dir(self.share_dir)
        order = self.series_order()
        result = GatewayResult(submission=submission, order=order, startup_s=startup_s)
        rows = []
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-predict")
        try:
            for i, uid in enumerate(order):
                series_path = shared_path(self.share_dir, self.series_dir / uid)
                link_series(self.series_dir / uid, series_path)
                t0 = time.perf_counter()
                answer = self._call(executor, series_path, first=(i == 0))
                result.latencies.append(time.perf_counter() - t0)
                frame = validate_answer(answer, uid)
                rows.append(frame.select(pl.lit(uid).alias(ID_COL), pl.all()))
                left = empty_dir(self.share_dir)  # predict may remove the folder itself: allowed
                if left:
                    result.leftovers += 1
                    log.warning("predict left %d entr(ies) in the share directory after %s", left, uid)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
        table = concat_answers(rows)
        with atomic_path(submission) as tmp:
            table.write_parquet(tmp)
        log.info("local gateway: %d series served, wrote %s", len(order), submission)
        return result


# --------------------------------------------------------------------------------------------------------------------
# The competition's gateway.


def load_competition_server(evaluation_dir: Path) -> Any:
    """``kaggle_evaluation.rsna_inference_server`` from the folder that contains ``kaggle_evaluation/``."""
    if str(evaluation_dir) not in sys.path:
        sys.path.insert(0, str(evaluation_dir))
    return importlib.import_module("kaggle_evaluation.rsna_inference_server")


def serve_competition(
    predict_fn: Callable[[str], Any],
    evaluation_dir: Path,
    data_paths: tuple[Path, Path] | None = None,
    share_dir: Path | None = None,
) -> None:
    """``RSNAInferenceServer(predict)``: ``serve()`` on the competition rerun, ``run_local_gateway(...)`` otherwise."""
    check_predict_function(predict_fn)
    module = load_competition_server(evaluation_dir)
    server = module.RSNAInferenceServer(predict_fn)
    if paths.is_competition_rerun():
        server.serve()
        return
    stale = Path.cwd() / SUBMISSION_NAME  # the competition's gateway writes here; a failed run must not leave one
    if stale.exists():
        log.info("removing the previous %s before the local gateway run", stale)
        stale.unlink()
    kwargs: dict[str, Any] = {}
    if data_paths is not None:
        kwargs["data_paths"] = tuple(str(Path(p).resolve()) for p in data_paths)  # the gateway needs absolute paths
    accepted = inspect.signature(server.run_local_gateway).parameters
    if share_dir is not None and "file_share_dir" in accepted:
        kwargs["file_share_dir"] = str(share_dir)
    server.run_local_gateway(**kwargs)


def serve(
    predict_fn: Callable[[str], Any] | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    test_csv: str | os.PathLike | None = None,
    series_dir: str | os.PathLike | None = None,
    share_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    evaluation_dir: str | os.PathLike | None = None,
    local: bool = False,
    call_timeout_s: float = InferConfig.call_timeout_s,
    seed: int | None = None,
    limit: int | None = None,
    started_at: float | None = None,
) -> GatewayResult | None:
    """Serve ``predict_fn`` (default ``kaggle_utils.infer.predict``) through the competition gateway if available
    (unless ``local``), else through ``LocalGateway``. Returns the local gateway's result, None for the competition's.
    ``started_at`` (``time.monotonic()`` at the notebook's start, e.g. ``KitEnv.started_at``) lets the local gateway
    check the competition's server-start limit.
    """
    if predict_fn is None:
        from kaggle_utils.infer import predict as predict_fn
    check_predict_function(predict_fn)
    evaluation = None if local else paths.kaggle_evaluation_dir(evaluation_dir)
    on_rerun = paths.is_competition_rerun()
    share = Path(share_dir) if share_dir is not None else paths.serving_share_dir(out_dir)
    _warn_if_predictor_share_differs(predict_fn, share)
    with gateway_lock():
        if evaluation is not None:
            log.info("serving through the competition gateway from %s (rerun: %s)", evaluation, on_rerun)
            data = None
            if not on_rerun and (data_dir or test_csv or series_dir):
                data = resolve_test_data(data_dir, test_csv, series_dir)
            # Always name the share folder: off Kaggle the competition's gateway has no default and fails on None.
            serve_competition(predict_fn, evaluation, data, share)
            return None
        if on_rerun:
            raise GatewayError("competition rerun without kaggle_evaluation: attach the competition data")
        test, series = resolve_test_data(data_dir, test_csv, series_dir)
        log.info("serving through the kit's local gateway (kaggle_evaluation not found)")
        gateway = LocalGateway(
            predict_fn, test, series, share, paths.work_dir(out_dir), call_timeout_s=call_timeout_s, seed=seed,
            limit=limit, started_at=started_at,
        )
        return gateway.run()


def _warn_if_predictor_share_differs(predict_fn: Callable, share: Path) -> None:
    from kaggle_utils import infer

    predictor = infer._PREDICTOR
    if predict_fn is infer.predict and predictor is not None and predictor.share_dir is not None:
        if predictor.share_dir != share.expanduser().resolve():
            log.warning(
                "predict empties %s but the gateway shares series through %s: pass the same share_dir to both",
                predictor.share_dir, share,
            )


# --------------------------------------------------------------------------------------------------------------------
# CLI.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", help="run folder(s) (default: KAGGLE_UTILS_RUNS)")
    parser.add_argument("--data-dir", help="competition folder holding kaggle_evaluation/test.csv and series/")
    parser.add_argument("--test-csv", help="csv with a SeriesInstanceUID column (overrides --data-dir)")
    parser.add_argument("--series-dir", help="folder of <SeriesInstanceUID>/ DICOM folders (overrides --data-dir)")
    parser.add_argument("--share-dir", help="the gateway's share directory (default: WORK/shared off Kaggle)")
    parser.add_argument("--out-dir", help="where submission.parquet goes (default: the work directory)")
    parser.add_argument("--evaluation-dir", help="folder containing the competition's kaggle_evaluation/ package")
    parser.add_argument("--local", action="store_true", help="use the kit's local gateway even if the real one exists")
    parser.add_argument("--timeout-s", type=float, default=InferConfig.call_timeout_s,
                        help=f"per-call timeout (default: the competition's {limits.SERIES_TIMEOUT_S} s)")
    parser.add_argument("--seed", type=int, default=None, help="series order seed (default: random)")
    parser.add_argument("--limit", type=int, default=None, help="serve only N series (local gateway)")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from kaggle_utils import infer

    share = Path(args.share_dir) if args.share_dir else paths.serving_share_dir(args.out_dir)
    infer.configure(args.models, share_dir=share, device=args.device)
    result = serve(
        infer.predict, data_dir=args.data_dir, test_csv=args.test_csv, series_dir=args.series_dir, share_dir=share,
        out_dir=args.out_dir, evaluation_dir=args.evaluation_dir, local=args.local, call_timeout_s=args.timeout_s,
        seed=args.seed, limit=args.limit,
    )
    infer.report()
    if result is not None:
        print(f"wrote {result.submission} ({len(result.order)} series)")
    return 0
