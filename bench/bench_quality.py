"""Quality benchmark: ``default`` (configs/cpu_tiny.yaml) vs ``seed_baseline`` on held-out synthetic series.

Builds (or reuses) a synthetic competition with >= 600 training and >= 300 held-out series, preprocesses both parts
with the kit's one preprocessing path, trains each config as a full fit (fold -1) on the training part with the same
CPU-time budget (``train.max_train_minutes`` counted on the ``cpu`` clock, so other load on the machine does not
favour either), and scores both on the held-out part with the competition metric, in one run.

    python bench/bench_quality.py --work /tmp/kaggle_bench [--budget-minutes 20] [--n-train 600 --n-test 300]

Target (issue 4): default >= 0.90 and >= 0.15 ahead of seed_baseline. Prints a table and writes WORK/quality.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the kit

from kaggle_utils import paths  # noqa: E402
from kaggle_utils.cache import build_cache  # noqa: E402
from kaggle_utils.config import load_config  # noqa: E402
from kaggle_utils.metric import roc_auc  # noqa: E402
from kaggle_utils.schema import ID_COL, LABEL_COLS  # noqa: E402
from kaggle_utils.train.dataset import load_image, open_training_cache  # noqa: E402
from kaggle_utils.train.loop import partial_score, train  # noqa: E402
from kaggle_utils.train.models import predict_probs  # noqa: E402
from kaggle_utils.train.runs import load_run  # noqa: E402


def ensure_competition(work: Path, n_train: int, n_test: int, seed: int) -> Path:
    """The synthetic competition folder (generated once; reused when it has the requested sizes)."""
    from kaggle_utils.synth import make_competition

    comp = work / "competition"
    if (comp / "train.csv").is_file() and (comp / "test_labels.csv").is_file():
        n_tr = pl.read_csv(comp / "train.csv").height
        n_te = pl.read_csv(comp / "test_labels.csv").height
        if n_tr >= n_train and n_te >= n_test:
            print(f"reusing {comp}: {n_tr} train / {n_te} held-out series")
            return comp
    t0 = time.perf_counter()
    make_competition(comp, n_series=n_train, n_test=n_test, seed=seed, workers=2, progress=True, overwrite=True)
    print(f"generated {comp} in {time.perf_counter() - t0:.0f} s")
    return comp


def heldout_view(comp: Path, work: Path) -> Path:
    """A competition-shaped folder for the held-out part: its labels as train.csv, its series folder linked."""
    view = work / "heldout"
    view.mkdir(exist_ok=True)
    link = view / "series"
    if not link.exists():
        link.symlink_to((comp / "kaggle_evaluation" / "series").resolve(), target_is_directory=True)
    labels = pl.read_csv(comp / "test_labels.csv", schema_overrides={ID_COL: pl.Utf8})
    labels.write_csv(view / "train.csv")
    return view


def heldout_predictions(run: Path, cache: Path, tta: bool) -> pl.DataFrame:
    """Probabilities for every cached held-out series from the run's models (mean over folds, optional flip TTA)."""
    loaded = load_run(run)
    tc = open_training_cache(cache, loaded.cfg)
    rows = []
    for start in range(0, len(tc.uids), 8):
        images = torch.from_numpy(np.stack([load_image(f) for f in tc.files[start : start + 8]]))
        probs = []
        for _, model in loaded.models:
            probs.append(predict_probs(model, images, loaded.cfg))
            if tta:
                probs.append(predict_probs(model, images, loaded.cfg, lr_flip=True))
        rows.append(np.mean(probs, axis=0))
    probs = np.concatenate(rows)
    return pl.DataFrame({ID_COL: tc.uids, **{c: probs[:, j] for j, c in enumerate(LABEL_COLS)}})


def heldout_scores(truth: pl.DataFrame, preds: pl.DataFrame) -> dict:
    """Competition metric on the held-out series; a location with no positive there is left out (and named). With a
    ``Modality`` column in ``truth``, also the Aneurysm Present AUC within each modality (where it has both classes)."""
    joined = truth.join(preds, on=ID_COL, how="inner", suffix="__pred")
    y_true = joined.select(list(LABEL_COLS)).to_numpy()
    y_prob = joined.select([f"{c}__pred" for c in LABEL_COLS]).to_numpy()
    single = [c for j, c in enumerate(LABEL_COLS) if y_true[:, j].min() == y_true[:, j].max()]
    scores = partial_score(y_true, y_prob)
    by_modality = {}
    if "Modality" in joined.columns:
        modality = joined["Modality"].to_numpy()
        for name in sorted(set(modality)):
            rows = modality == name
            if 0 < y_true[rows, -1].sum() < rows.sum():
                by_modality[name] = {"present_auc": roc_auc(y_true[rows, -1], y_prob[rows, -1]),
                                     "n": int(rows.sum()), "n_positive": int(y_true[rows, -1].sum())}
    column_auc = {c: roc_auc(y_true[:, j], y_prob[:, j]) for j, c in enumerate(LABEL_COLS) if c not in single}
    return {**scores, "columns_left_out": single, "n_scored": joined.height, "column_auc": column_auc,
            "present_auc_by_modality": by_modality}


def train_in_parallel(args: argparse.Namespace, work: Path) -> dict:
    """Run this script once per model (``--only``), both at once, and collect their results (same CPU budget each:
    the budget clock is per-process CPU time)."""
    import subprocess

    procs = {}
    for name in ("default", "seed_baseline"):
        cmd = [sys.executable, __file__, "--work", str(work), "--n-train", str(args.n_train), "--n-test",
               str(args.n_test), "--seed", str(args.seed), "--budget-minutes", str(args.budget_minutes), "--threads",
               str(args.threads), "--default-config", args.default_config, "--seed-config", args.seed_config,
               "--tag", args.tag, "--only", name, *args.overrides]
        log = open(work / f"quality_{name}{args.tag}.log", "w")  # noqa: SIM115 - closed when the process ends
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        print(f"{name}: training in process {procs[name][0].pid}, log {log.name}")
    results = {}
    for name, (proc, log) in procs.items():
        rc = proc.wait()
        log.close()
        if rc != 0:
            raise SystemExit(f"{name}: training process failed with exit code {rc}; see {log.name}")
        part = json.loads((work / f"quality_{name}{args.tag}.json").read_text())
        results[name] = part[name]
        print(f"{name}: held-out score {part[name]['score']:.4f}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="work folder (default: WORK_DIR/bench_quality)")
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--budget-minutes", type=float, default=20.0,
                        help="CPU minutes of training per model (10 wall minutes on 2 busy cores = 20)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training")
    parser.add_argument("--default-config", default=str(REPO / "configs" / "cpu_tiny.yaml"))
    parser.add_argument("--seed-config", default=str(REPO / "configs" / "seed_baseline.yaml"))
    parser.add_argument("--tag", default="", help="suffix of the run folders (keeps runs of other settings apart)")
    parser.add_argument("--only", choices=["default", "seed_baseline"], help="train/score only one of the two")
    parser.add_argument("--parallel", action="store_true",
                        help="train the two models at the same time in two processes (one core each)")
    parser.add_argument("--score-only", action="store_true",
                        help="score the finished runs of this --tag on the held-out series again (no training)")
    parser.add_argument("overrides", nargs="*", help="overrides for the default config, e.g. train.lr=1e-3")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else paths.work_dir() / "bench_quality"
    work.mkdir(parents=True, exist_ok=True)
    comp = ensure_competition(work, args.n_train, args.n_test, args.seed)
    budget = [f"train.max_train_minutes={args.budget_minutes}", "train.budget_clock=cpu", "train.num_workers=0"]
    configs = {
        "default": load_config(args.default_config, [*budget, *args.overrides]),
        "seed_baseline": load_config(args.seed_config, [*budget, "train.amp=false"]),
    }
    data_cfg = configs["default"].data
    configs = {k: dataclasses.replace(c, data=data_cfg) for k, c in configs.items()}
    t0 = time.perf_counter()
    train_cache, test_cache = work / "cache_train", work / "cache_heldout"
    build_cache(comp, train_cache, data_cfg, workers=2, progress=False)
    build_cache(heldout_view(comp, work), test_cache, data_cfg, workers=2, progress=False)
    print(f"caches ready in {time.perf_counter() - t0:.0f} s")
    truth = pl.read_csv(test_cache / "train.csv", schema_overrides={ID_COL: pl.Utf8}).select(ID_COL, "Modality",
                                                                                              *LABEL_COLS)

    if args.parallel and not args.only and not args.score_only:
        results = train_in_parallel(args, work)
    else:
        results = {}
    for name, cfg in configs.items():
        if name in results:
            continue
        if args.only and name != args.only:
            continue
        run = work / f"run_{name}{args.tag}"
        if args.score_only and not (run / "foldfull" / "metrics.json").is_file():
            raise SystemExit(f"--score-only: {run} holds no finished full-fit run; train it first")
        t1, c1 = time.perf_counter(), time.process_time()
        summary = {"scored_only": True} if args.score_only else train(train_cache, cfg, run, fold=-1, progress=True)
        train_wall, train_cpu = time.perf_counter() - t1, time.process_time() - c1
        preds = heldout_predictions(run, test_cache, tta=cfg.infer.lr_flip_tta and cfg.aug.lr_flip_p > 0)
        preds.write_parquet(work / f"heldout_predictions_{name}{args.tag}.parquet")  # per-column figures later
        scores = heldout_scores(truth, preds)
        fold_metrics = json.loads((run / "foldfull" / "metrics.json").read_text())
        timing = {} if args.score_only else {"train_wall_s": train_wall, "train_cpu_s": train_cpu}
        results[name] = {**scores, **timing,
                         "train_budget_clock_s": fold_metrics["train_seconds"],
                         "epochs_done": len(fold_metrics["history"]), "stopped_by_budget":
                         fold_metrics["stopped_by_budget"], "n_heldout": truth.height, "summary": summary}
        print(f"{name}: held-out score {scores['score']:.4f} (present AUC {scores['present_auc']:.4f}, mean location "
              f"AUC {scores['location_auc_mean']:.4f}; {scores['n_columns']}/14 columns, left out "
              f"{scores['columns_left_out']}); trained {len(fold_metrics['history'])} epochs, "
              f"{fold_metrics['train_seconds']:.0f} s on the budget clock")
    if len(results) == 2:
        gap = results["default"]["score"] - results["seed_baseline"]["score"]
        ok = results["default"]["score"] >= 0.90 and gap >= 0.15
        results["gap"] = gap
        results["target_met"] = ok
        print(f"default - seed_baseline = {gap:+.4f}; target (default >= 0.90 and gap >= 0.15): "
              f"{'MET' if ok else 'NOT MET'}")
    results["budget_cpu_minutes"] = args.budget_minutes
    results["cpu_count"] = os.cpu_count()
    # a re-score never overwrites the results written by the run that trained the models
    name = f"quality{'_' + args.only if args.only else ''}{args.tag}{'_rescored' if args.score_only else ''}.json"
    (work / name).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
