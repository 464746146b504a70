"""Local submission smoke test: ``python submit.py smoke [--data-dir DIR] [--models RUN ...] [--limit N]``.

With no arguments it builds a tiny synthetic competition, preprocesses it, trains a tiny model and serves the held-out
series through the gateway (the competition's own when ``kaggle_evaluation`` is available, else the kit's local one),
exactly as a submission would be served. It then validates ``submission.parquet`` and prints per-series latency
(median, p95), the projected runtime for 2,500 series against the 12-hour budget, peak memory, the fallback count and
the competition score when labels exist. Exit status 0 only when the submission is valid.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from kaggle_utils import paths
from kaggle_utils.errors import KitError
from kaggle_utils.schema import ID_COL, LABEL_COLS

KAGGLE_BUDGET_HOURS = 12.0
EXPECTED_TEST_SERIES = 2500
SMOKE_CONFIG = paths.REPO_ROOT / "configs" / "cpu_tiny.yaml"
# Keep the no-argument smoke at a few minutes on 2 CPU cores: few folds, one short epoch.
SMOKE_TRAIN_OVERRIDES = ("train.n_folds=2", "train.epochs=1", "train.num_workers=0")
SMOKE_IMAGE_SIZE, SMOKE_SLICES = 64, 48  # small synthetic series: the smoke tests the plumbing, not the model


class SmokeError(KitError):
    """A smoke-test step failed (its message names the step)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python submit.py smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="competition folder (default: build a tiny synthetic one)")
    parser.add_argument("--models", nargs="+", help="trained run folder(s) (default: train a tiny model)")
    parser.add_argument("--limit", type=int, default=None, help="serve only the first N test series")
    parser.add_argument("--work-dir", help="where to build and write (default: a temporary folder, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--n-series", type=int, default=24, help="synthetic training series (no --data-dir)")
    parser.add_argument("--n-test", type=int, default=16, help="synthetic held-out series (no --data-dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=str(SMOKE_CONFIG), help="training config for the tiny model")
    parser.add_argument("--local", action="store_true", help="use the kit's local gateway even if the real one exists")
    parser.add_argument("--evaluation-dir", help="folder containing the competition's kaggle_evaluation/ package")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    return parser


def _cli(argv: list[str], step: str) -> None:
    """Run one ``python -m kaggle_utils`` command in-process; a non-zero exit stops the smoke test."""
    from kaggle_utils.cli import main as cli_main

    print(f"[smoke] {step}: python -m kaggle_utils {' '.join(argv)}", flush=True)
    code = cli_main(argv)
    if code != 0:
        raise SmokeError(f"{step} failed (exit status {code}): python -m kaggle_utils {' '.join(argv)}")


def build_competition(work: Path, n_series: int, n_test: int, seed: int) -> Path:
    from kaggle_utils.synth import make_competition

    out = work / "competition"
    print(f"[smoke] synthetic competition: {n_series} train + {n_test} held-out series -> {out}", flush=True)
    make_competition(out, n_series=n_series, seed=seed, n_test=n_test, image_size=SMOKE_IMAGE_SIZE,
                     n_slices=SMOKE_SLICES)
    return out


def train_tiny(work: Path, data_dir: Path, config: str) -> Path:
    cache, run = work / "cache", work / "run"
    _cli(["preprocess", "--data-dir", str(data_dir), "--out", str(cache), "--config", config, "--no-progress"],
         "preprocess")
    _cli(["train", "--cache", str(cache), "--config", config, "--out", str(run), "--fold", "all", "--no-progress",
          *SMOKE_TRAIN_OVERRIDES], "train")
    return run


def validate_submission(path: Path, expected_ids: list[str]) -> list[str]:
    """Problems that would fail scoring: columns, row count, ids, dtype, NaN, range. Empty list = valid."""
    if not path.is_file():
        return [f"{path} was not written"]
    sub = pl.read_parquet(path)
    problems = []
    if sub.columns != [ID_COL, *LABEL_COLS]:
        problems.append(f"columns are {sub.columns}, expected {[ID_COL, *LABEL_COLS]}")
        return problems
    ids = sub[ID_COL].to_list()
    if len(ids) != len(expected_ids) or set(ids) != set(expected_ids):
        problems.append(f"{len(ids)} rows for {len(expected_ids)} expected series (ids differ: "
                        f"{sorted(set(expected_ids) ^ set(ids))[:5]})")
    values = sub.select(LABEL_COLS).to_numpy().astype(np.float64)
    if not all(dtype == pl.Float64 for dtype in sub.select(LABEL_COLS).dtypes):
        problems.append(f"label columns are not all Float64: {sub.select(LABEL_COLS).dtypes}")
    if np.isnan(values).any():
        problems.append(f"{int(np.isnan(values).sum())} NaN value(s)")
    if values.size and (values.min() < 0 or values.max() > 1):
        problems.append(f"values outside [0, 1]: min {values.min()}, max {values.max()}")
    return problems


def score_submission(submission: Path, labels_csv: Path) -> tuple[float | None, str]:
    """The competition score; with a tiny test set some columns hold a single class, so those are left out."""
    from kaggle_utils.metric import MetricError, competition_score, score_over_scorable_columns

    sub = pl.read_parquet(submission)
    sol = pl.read_csv(labels_csv).filter(pl.col(ID_COL).is_in(sub[ID_COL].to_list())).select(ID_COL, *LABEL_COLS)
    try:
        return competition_score(sol, sub), "all 14 columns"
    except MetricError as exc:
        reason = str(exc)
    joined = sol.join(sub, on=ID_COL, suffix="_pred")
    scored = score_over_scorable_columns(joined.select(LABEL_COLS).to_numpy(),
                                         joined.select([f"{c}_pred" for c in LABEL_COLS]).to_numpy())
    if scored["score"] is None:
        return None, f"no column has both classes ({reason})"
    return scored["score"], f"{scored['n_columns']}/14 columns with both classes (official scorer: {reason})"


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process and of its finished children (Linux reports KiB)."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / (1024 * 1024)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    out = {"peak_rss_mb": own, "peak_children_rss_mb": children}
    try:
        import psutil

        out["current_rss_mb"] = psutil.Process().memory_info().rss / 2**20
    except ImportError:  # psutil is in the requirements; the peak figures above do not need it
        pass
    return out


def report_lines(
    summary: dict, problems: list[str], score: tuple[float | None, str] | None, wall_s: float
) -> list[str]:
    """The smoke test's printed report."""
    lines = ["", "=== submission smoke test ==="]
    lines.append("submission.parquet: " + ("VALID" if not problems else "INVALID: " + "; ".join(problems)))
    median, p95 = summary.get("latency_median_s"), summary.get("latency_p95_s")
    if median is not None:
        lines.append(f"series served: {summary['series']}; latency median {median:.3f} s, p95 {p95:.3f} s "
                     f"(model load {summary['model_load_s']:.1f} s, first call)")
        mean = float(np.mean([median, p95]))  # between median and p95: a deliberately cautious per-series figure
        projected_h = (summary["model_load_s"] + EXPECTED_TEST_SERIES * mean) / 3600
        verdict = "fits" if projected_h <= KAGGLE_BUDGET_HOURS else "DOES NOT FIT"
        lines.append(f"projected runtime for {EXPECTED_TEST_SERIES} series: {projected_h:.2f} h vs the "
                     f"{KAGGLE_BUDGET_HOURS:.0f} h budget -> {verdict} (on this machine)")
        budget = summary.get("budget") or {}
        if budget.get("projected_total_s") is not None:
            lines.append(f"budget guard: projected {budget['projected_total_s'] / 3600:.2f} h at {budget['level']} "
                         f"(budget {budget['budget_s'] / 3600:.2f} h)")
    mem = peak_memory_mb()
    lines.append("peak memory: " + ", ".join(f"{k} {v:.0f} MB" for k, v in mem.items()))
    lines.append(f"fallbacks: {summary.get('fallbacks', 0)} {summary.get('fallback_reasons', {}) or ''}".rstrip())
    if score is not None:
        value, how = score
        lines.append(f"competition score: {'n/a' if value is None else f'{value:.4f}'} ({how})")
    else:
        lines.append("competition score: n/a (no test_labels.csv)")
    lines.append(f"smoke wall time: {wall_s:.1f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    if not args.models and not Path(args.config).is_file():
        raise SmokeError(f"training config {args.config} does not exist (pass --config or --models RUN)")
    from kaggle_utils import gateway, infer

    with contextlib.ExitStack() as stack:
        if args.work_dir:
            work = Path(args.work_dir).expanduser()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(tempfile.mkdtemp(prefix="kaggle_utils_smoke_"))
            if not args.keep:
                stack.callback(shutil.rmtree, work, True)
        data_dir = Path(args.data_dir) if args.data_dir else build_competition(work, args.n_series, args.n_test,
                                                                               args.seed)
        runs = [Path(r) for r in args.models] if args.models else [train_tiny(work, data_dir, args.config)]
        share = work / "shared"
        if share.exists() and any(share.iterdir()):
            raise SmokeError(f"share directory {share} is not empty (left from an earlier smoke run?); empty it first")
        predictor = infer.configure(runs, share_dir=share, device=args.device,
                                    infer={"expected_series": EXPECTED_TEST_SERIES})
        test_csv, series_dir = gateway.resolve_test_data(data_dir)
        expected = list(dict.fromkeys(pl.read_csv(test_csv, infer_schema_length=0)[ID_COL].to_list()))
        if args.limit:  # a shorter test csv, so either gateway serves only these
            expected = expected[: args.limit]
            test_csv = work / "test_limited.csv"
            pl.DataFrame({ID_COL: expected}).write_csv(test_csv)
        evaluation = None if args.local else paths.kaggle_evaluation_dir(args.evaluation_dir)
        served_by = f"the competition's gateway from {evaluation}" if evaluation else "the kit's local gateway"
        print(f"[smoke] serving {len(expected)} series from {test_csv} with {len(runs)} run(s) through {served_by}",
              flush=True)
        result = gateway.serve(infer.predict, test_csv=test_csv, series_dir=series_dir, share_dir=share, out_dir=work,
                               evaluation_dir=args.evaluation_dir, local=args.local, seed=args.seed)
        # the competition's gateway writes submission.parquet in the current folder
        submission = result.submission if result is not None else Path.cwd() / gateway.SUBMISSION_NAME
        problems = validate_submission(submission, expected)
        labels = data_dir / "test_labels.csv"
        score = score_submission(submission, labels) if labels.is_file() and not problems else None
        summary = predictor.summary()
        infer.report()
        for line in report_lines(summary, problems, score, time.perf_counter() - started):
            print(line)
        for line in gateway.limit_lines([r.total_s for r in predictor.records]):  # limits.py: 30 min a series
            print(line)
        print(f"submission file: {submission.resolve()}")  # the competition's gateway writes it in the current folder
        if args.keep or args.work_dir:
            print(f"outputs kept in {work}")
        return 0 if not problems else 1
