"""Learned CoW locator vs the heuristic on synthetic held-out series: error (mm) of the box centre by modality.

Two learned locators train in the same run on the same series: one on the generator's true CoW centre, one on the
centre a real competition would give it (``cowseg_cow_centre`` of each series' vessel label map), so the cost of
the label-map targets is measured, not assumed.

    PYTHONPATH=. python bench/bench_learned_locator.py --train 32 --test 16 --steps 300
"""

import argparse
import tempfile
import time

import numpy as np

from kaggle_utils.config import DataConfig
from kaggle_utils.dicom import load_series
from kaggle_utils.locator_learned import (
    cowseg_cow_centre,
    make_sample,
    predict_centre,
    synth_cow_centre_lps,
    train_locator,
)
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
            t = make_series(d, modality=mod, image_size=args.image_size, n_slices=args.slices, seed=(i, 12),
                            segmentation_dir=d)
            from_labels, _ = cowseg_cow_centre(f"{d}/{t['series_uid']}_cowseg.nii")
            vols.append((mod, load_series(t["path"]), synth_cow_centre_lps(t["pose"]), from_labels))
    train, test = vols[: args.train], vols[args.train :]
    label_err = [np.linalg.norm(lab - c) for _, _, c, lab in train if lab is not None]
    print(f"label-map CoW centre vs truth over {len(label_err)} training series: median {np.median(label_err):.1f}, "
          f"max {np.max(label_err):.1f} mm")
    models = {}
    for name, pick in (("truth", lambda c, lab: c), ("label map", lambda c, lab: lab)):
        t0 = time.perf_counter()
        samples = [make_sample(v, pick(c, lab)) for _, v, c, lab in train if pick(c, lab) is not None]
        models[name], losses = train_locator(samples, steps=args.steps, width=12)
        print(f"{name} targets: {len(samples)} series, {args.steps} steps in {time.perf_counter() - t0:.0f} s; loss "
              f"first/last 10: {np.mean(losses[:10]):.1f} / {np.mean(losses[-10:]):.1f} mm")
    heur = get_locator("heuristic")
    rows = {}
    for mod, v, c, _ in test:
        sp = np.asarray(v.spacing)
        truth = v.lps_to_voxel(c)[0]
        row = []
        for model in models.values():
            t1 = time.perf_counter()
            pred, _ = predict_centre(model, v)
            row += [np.linalg.norm((pred - truth) * sp), time.perf_counter() - t1]
        # the CoW the heuristic's box implies: its centre less the configured box offset from the CoW
        hbox = np.asarray(heur.locate(v, cfg).centre) - np.asarray(cfg.roi_offset_from_cow_mm) / sp
        rows.setdefault(mod, []).append([*row, np.linalg.norm((hbox - truth) * sp)])
    print("| modality | n | learned, true targets: error mm (median / max) | learned, label-map targets | "
          "heuristic | learned s/series |")
    print("|---|---|---|---|---|---|")
    for mod in MODALITIES:
        r = np.array(rows.get(mod, []))
        if len(r):
            cells = " | ".join(f"{np.median(r[:, k]):.1f} / {r[:, k].max():.1f}" for k in (0, 2, 4))
            print(f"| {mod} | {len(r)} | {cells} | {r[:, 1].mean():.2f} |")

if __name__ == "__main__":
    main()
