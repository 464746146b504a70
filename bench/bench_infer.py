"""Per-series inference latency by stage (load, preprocess, model, cleanup) for realistic-size series.

Writes a CTA (512 x 512, 300 slices by default) and an MR series with the kit's synthetic generator, a run folder with
``--folds`` untrained models of ``--config`` (weights do not change the cost), and times ``Predictor.predict_probs``
exactly as the gateway calls it. Baseline in the same run: one fold without the flip; the ratio says what the full
ensemble costs on top. Also prints the projection for 2,500 series against the 12-hour budget.

    python bench/bench_infer.py                              # CPU, default ensemble (configs/default.yaml, 5 folds)
    python bench/bench_infer.py --device cuda --repeats 3   # GPU (bench/gpu_infer.sh)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kaggle_utils import infer  # noqa: E402
from kaggle_utils.config import InferConfig, load_config, save_config, to_dict  # noqa: E402

BUDGET_H, N_TEST = 12.0, 2500


def write_run(run: Path, config: str, overrides: list[str], folds: int) -> None:
    """A run folder in the training layout with untrained weights."""
    import torch

    from kaggle_utils.schema import LABEL_COLS
    from kaggle_utils.train.models import build_model
    from kaggle_utils.train.runs import save_state_dict, write_json

    cfg = load_config(config, [*overrides, "model.pretrained_file="])
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    write_json(run / "cache_info.json", {"cache_version": 0, "config_hash": "bench", "data": to_dict(cfg.data)})
    write_json(run / "priors.json", dict.fromkeys(LABEL_COLS, 0.1))
    for k in range(folds):
        torch.manual_seed(k)
        (run / f"fold{k}").mkdir()
        save_state_dict(build_model(cfg), run / f"fold{k}" / "model.pt")


def make_series_dirs(root: Path, size: int, cta_slices: int, mr_slices: int, syntax: str) -> dict[str, Path]:
    from kaggle_utils.synth.series import make_series

    out = {}
    for seed, (name, modality, n) in enumerate((("CTA", "CTA", cta_slices), ("MRA", "MRA", mr_slices))):
        t = time.perf_counter()
        info = make_series(root, modality=modality, image_size=size, n_slices=n, seed=seed, transfer_syntax=syntax,
                           instance_order="shuffled")
        print(f"wrote {name} {info['shape']} ({syntax}) in {time.perf_counter() - t:.1f} s", flush=True)
        out[name] = Path(info["path"])
    return out


def time_series(predictor: infer.Predictor, series: Path, repeats: int) -> dict:
    """Median stage times over ``repeats`` calls (after one warm-up call that also loads the models)."""
    predictor.predict_probs(str(series))
    recs = []
    for _ in range(repeats):
        _, rec = predictor.predict_probs(str(series))
        if rec.fallback:
            raise RuntimeError(f"{series}: fell back ({rec.fallback}: {rec.message})")
        recs.append(rec)
    stages = {k: statistics.median(r.stages[k] for r in recs) for k in recs[0].stages}
    return {"stages": stages, "total": statistics.median(r.total_s for r in recs), "passes": recs[0].passes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cta-slices", type=int, default=300)
    parser.add_argument("--mr-slices", type=int, default=160)
    parser.add_argument("--syntax", default="explicit", help="transfer syntax: explicit, rle, jpegls, jpeg2000")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.image_size=96")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}; torch {torch.__version__}; threads {torch.get_num_threads()}; cpus {os.cpu_count()}")
    if args.device.startswith("cuda"):
        print(f"gpu: {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        root = Path(tmp)
        (root / "series_root").mkdir()
        series = make_series_dirs(root / "series_root", args.size, args.cta_slices, args.mr_slices, args.syntax)
        write_run(root / "run", args.config, args.overrides, args.folds)
        # a budget nobody reaches: the bench times fixed ensembles, the guard must not degrade them
        base_cfg = dataclasses.replace(infer.run_infer_config(root / "run"), budget_hours=1e6)
        full = infer.Predictor([root / "run"], None, base_cfg, device=args.device)
        single = infer.Predictor([root / "run"], None, dataclasses.replace(base_cfg, max_folds=1, lr_flip_tta=False),
                                 device=args.device)
        print(f"\nconfig {Path(args.config).name} {args.overrides}: {args.folds} folds + flip vs baseline 1 fold, "
              f"no flip; median of {args.repeats}")
        print(f"{'series':6} {'ensemble':18} {'load':>7} {'prep':>7} {'model':>8} {'clean':>7} {'total':>8}  passes")
        totals = {}
        for name, path in series.items():
            results = {}
            for label, predictor in (("baseline 1 fold", single), (f"{args.folds} folds + flip", full)):
                r = time_series(predictor, path, args.repeats)
                s = r["stages"]
                print(f"{name:6} {label:18} {s['load']:7.3f} {s['preprocess']:7.3f} {s['model']:8.3f} "
                      f"{s['cleanup']:7.4f} {r['total']:8.3f}  {r['passes']}", flush=True)
                results[label] = r
            b, f = results["baseline 1 fold"], results[f"{args.folds} folds + flip"]
            print(f"{name:6} ratio full/baseline: total x{f['total'] / b['total']:.2f}, "
                  f"model x{f['stages']['model'] / b['stages']['model']:.2f}")
            totals[name] = f["total"]
        mean = statistics.fmean(totals.values())
        hours = mean * N_TEST / 3600
        print(f"\nfull ensemble, mean over {list(totals)}: {mean:.2f} s/series -> {hours:.2f} h for {N_TEST} series "
              f"vs {BUDGET_H:.0f} h budget ("
              + ("fits" if hours <= InferConfig.budget_hours else "OVER BUDGET: the guard would drop flip/folds")
              + "); T4 target: <= 5 s/series")
    import resource

    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
