"""``python -m kaggle_utils demo``: the whole kit end to end on a built-in synthetic competition.

synth -> preprocess (cache) -> train (configs/cpu_tiny.yaml) -> serve the held-out series through the gateway ->
score -> out-of-fold report. Every step is one of the kit's own commands, run in-process; each one resumes or is
skipped when its output already exists, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from kaggle_utils import paths
from kaggle_utils.errors import KitError

DEMO_CONFIG = paths.REPO_ROOT / "configs" / "cpu_tiny.yaml"


class DemoError(KitError):
    """A demo step failed; the message names the step and the command to rerun it alone."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo", help="demo folder (default ./demo); rerunning resumes it")
    parser.add_argument("--n-series", type=int, default=600, help="synthetic training series (default 600)")
    parser.add_argument("--n-test", type=int, default=200, help="synthetic held-out series served (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="training config (default configs/cpu_tiny.yaml)")
    parser.add_argument("--fold", default="0", help="fold to train: an index, 'all' or -1 (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="processes for synthesis and preprocessing")
    parser.add_argument("overrides", nargs="*", help="training config overrides key=value, e.g. train.epochs=3")


def _step(name: str, argv: list[str]) -> None:
    from kaggle_utils.cli import main as cli_main

    print(f"\n[demo] {name}: python -m kaggle_utils {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    code = cli_main(argv)
    if code != 0:
        raise DemoError(f"step {name!r} failed (exit {code}); rerun it alone: python -m kaggle_utils {' '.join(argv)}")
    print(f"[demo] {name} done in {time.perf_counter() - started:.0f} s", flush=True)


def run(args: argparse.Namespace) -> int:
    from kaggle_utils import smoke

    out = paths.ensure_parent(Path(args.out).expanduser().resolve())
    out.mkdir(exist_ok=True)
    competition, cache, run_dir = out / "competition", out / "cache", out / "run"
    started = time.perf_counter()
    if not (competition / "train.csv").is_file():
        _step("synth", ["synth", "--out", str(competition), "--n-series", str(args.n_series), "--n-test",
                        str(args.n_test), "--seed", str(args.seed), "--workers", str(args.workers)])
    else:
        print(f"[demo] synth: reusing {competition}")
    _step("preprocess", ["preprocess", "--data-dir", str(competition), "--out", str(cache), "--workers",
                         str(args.workers), "--config", args.config])
    _step("train", ["train", "--cache", str(cache), "--config", args.config, "--out", str(run_dir), "--fold",
                    args.fold, *args.overrides])
    _step("evaluate", ["evaluate", "--runs", str(run_dir), "--labels", str(cache / "train.csv"), "--out",
                       str(out / "report")])
    serve_dir = out / "serve"
    shutil.rmtree(serve_dir, ignore_errors=True)  # a fresh share directory and submission every time
    print("\n[demo] serve the held-out series through the gateway and score them", flush=True)
    code = smoke.main(["--data-dir", str(competition), "--models", str(run_dir), "--work-dir", str(serve_dir),
                       "--seed", str(args.seed)])
    print(f"\n[demo] finished in {(time.perf_counter() - started) / 60:.1f} min; out-of-fold report: "
          f"{out / 'report' / 'report.html'}; submission: {serve_dir / 'submission.parquet'}")
    return code
