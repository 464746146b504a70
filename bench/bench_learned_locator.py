"""Learned CoW locator vs the heuristic on synthetic held-out series: error (mm) of the box centre by modality.

    PYTHONPATH=. python bench/bench_learned_locator.py --train 32 --test 16 --steps 300
"""

import argparse
import tempfile
import time

import numpy as np

from kaggle_utils.config import DataConfig
from kaggle_utils.dicom import load_series
from kaggle_utils.locator_learned import make_sample, predict_centre, synth_cow_centre_lps, train_locator
from kaggle_utils.roi import get_locator
from kaggle_utils.synth.series import make_series

MODALITIES = ("CTA", "MRA", "MRI T2", "MRI T1post")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=32)
    ap.add_argument("--test", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--slices", type=int, default=48)
    args = ap.parse_args()
    cfg = DataConfig()
    with tempfile.TemporaryDirectory() as d:
        vols = []
        for i in range(args.train + args.test):
            mod = MODALITIES[i % 4]
            t = make_series(d, modality=mod, image_size=args.image_size, n_slices=args.slices, seed=(i, 12))
            vols.append((mod, load_series(t["path"]), synth_cow_centre_lps(t["pose"])))
    train, test = vols[: args.train], vols[args.train :]
    t0 = time.perf_counter()
    model, losses = train_locator([make_sample(v, c) for _, v, c in train], steps=args.steps, width=12)
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s; loss first/last 10: "
          f"{np.mean(losses[:10]):.1f} / {np.mean(losses[-10:]):.1f} mm")
    heur = get_locator("heuristic")
    rows = {}
    for mod, v, c in test:
        sp = np.asarray(v.spacing)
        truth = v.lps_to_voxel(c)[0]
        t1 = time.perf_counter()
        pred, mass = predict_centre(model, v)
        dt = time.perf_counter() - t1
        hbox = np.asarray(heur.locate(v, cfg).centre)
        rows.setdefault(mod, []).append((np.linalg.norm((pred - truth) * sp), np.linalg.norm((hbox - truth) * sp), dt))
    print("| modality | n | learned error mm (median / max) | heuristic error mm (median / max) | learned s/series |")
    print("|---|---|---|---|---|")
    for mod in MODALITIES:
        r = np.array(rows.get(mod, []))
        if len(r):
            print(f"| {mod} | {len(r)} | {np.median(r[:, 0]):.1f} / {r[:, 0].max():.1f} | "
                  f"{np.median(r[:, 1]):.1f} / {r[:, 1].max():.1f} | {r[:, 2].mean():.2f} |")


if __name__ == "__main__":
    main()
