"""Training throughput on CPU: data-loader samples/s (augmented series from a cache) and training samples/s per model.

    python bench/bench_train.py --cache CACHE [--steps 6] [--threads 2]

The cache can be any preprocessed cache (e.g. the quality benchmark's WORK/cache_train). Ratios printed against the
baselines measured in the same run: the loader with 2 workers vs 0, and each model vs seed_baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the kit

from kaggle_utils.config import load_config  # noqa: E402
from kaggle_utils.train.dataset import (  # noqa: E402
    SeriesDataset,
    cache_data_config,
    epoch_batches,
    make_loader,
    open_training_cache,
    read_cache_info,
)
from kaggle_utils.train.models import build_model, param_groups  # noqa: E402


def loader_rate(cache, cfg, n_samples: int, workers: int, preload: bool = False) -> float:
    """Augmented training samples per second through the DataLoader (volumes read from disk, or preloaded)."""
    dataset = SeriesDataset(cache, list(range(len(cache.uids))), cfg, train=True)
    if preload:
        dataset.rows = dataset.rows[:n_samples]
        dataset.preload()  # not timed: done once per run
    order = torch.arange(len(cache.uids))[:n_samples].numpy()
    batches = epoch_batches(order, cfg.train.batch_size, cfg.seed, 0)
    loader = make_loader(dataset, batches, workers)
    t0 = time.perf_counter()
    seen = sum(len(b["row"]) for b in loader)
    return seen / (time.perf_counter() - t0)


def train_rate(cfg, cache, steps: int) -> float:
    """Training samples per second (forward + backward + AdamW step) on real augmented batches (loading excluded)."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4)
    dataset = SeriesDataset(cache, list(range(len(cache.uids))), cfg, train=True)
    order = torch.arange(len(cache.uids)).numpy()
    batches = epoch_batches(order, cfg.train.batch_size, cfg.seed, 0)[: steps + 1]
    loaded = list(make_loader(dataset, batches, 0))
    elapsed, seen = 0.0, 0
    for i, batch in enumerate(loaded):
        t0 = time.perf_counter()
        out = model(batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i > 0:  # the first step warms up allocators
            elapsed += time.perf_counter() - t0
            seen += len(batch["row"])
    return seen / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loader-samples", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_cfg = cache_data_config(read_cache_info(args.cache))

    def cfg_for(name: str, *overrides: str):
        cfg = load_config(REPO / "configs" / f"{name}.yaml", ["model.pretrained_file=", *overrides])
        return dataclasses.replace(cfg, data=data_cfg)

    tiny = cfg_for("cpu_tiny")
    cache = open_training_cache(Path(args.cache), tiny)
    print(f"cache {args.cache}: {len(cache.uids)} series of shape {cache.shape}; torch threads {args.threads}")
    rate0 = loader_rate(cache, tiny, args.loader_samples, 0)
    rate2 = loader_rate(cache, tiny, args.loader_samples, 2)
    rate_mem = loader_rate(cache, tiny, args.loader_samples, 0, preload=True)
    print(f"data loader (cpu_tiny, crop {tiny.train.crop_slices} slices x {tiny.train.crop_inplane} px, live aug): "
          f"{rate0:.1f} samples/s with 0 workers, {rate2:.1f} with 2 workers (x{rate2 / rate0:.2f}), {rate_mem:.1f} "
          f"preloaded with 0 workers (x{rate_mem / rate0:.2f})")
    rates = {}
    for name in ("seed_baseline", "cpu_tiny", "default", "default_3d"):
        cfg = cfg_for(name, "train.batch_size=4")
        rates[name] = train_rate(cfg, cache, args.steps)
        ratio = rates[name] / rates["seed_baseline"]
        print(f"training {name:14s} ({cfg.model.name}, {cfg.model.backbone if cfg.model.name != 'cnn3d' else 'cnn3d'}"
              f"): {rates[name]:.2f} samples/s (x{ratio:.2f} vs seed_baseline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
