"""Fraction of synthetic aneurysm centres inside the ROI box, per locator, modality and location, and the error of the
CoW centre each box implies (box centre minus ``roi_offset_from_cow_mm``) against the generator's truth, in one run.

    PYTHONPATH=. python bench/bench_synth_coverage.py [--locators heuristic,anatomy] [--seeds 4] [--size 96]

Each seed makes one series per modality with an aneurysm at every one of the 13 locations (the generator's sites
follow the real landmark envelope, tests/test_synth_anatomy.py), so a location's row is seeds x 4 points.
"""

import argparse
import collections
import tempfile
import time

import numpy as np

from kaggle_utils.config import DataConfig
from kaggle_utils.dicom import load_series
from kaggle_utils.locator_learned import synth_cow_centre_lps
from kaggle_utils.roi import get_locator
from kaggle_utils.schema import LOCATION_COLS
from kaggle_utils.synth.series import make_series

MODALITIES = ("CTA", "MRA", "MRI T2", "MRI T1post")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--locators", default="heuristic,anatomy")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--size", type=int, default=96, help="in-plane pixels of the synthetic series")
    args = ap.parse_args()
    names = args.locators.split(",")
    cfg = DataConfig()
    inside = {n: collections.Counter() for n in names}
    total = collections.Counter()
    seconds = collections.defaultdict(list)
    errors = collections.defaultdict(list)  # (locator, modality) -> CoW error mm
    with tempfile.TemporaryDirectory() as d:
        for seed in range(args.seeds):
            for mi, mod in enumerate(MODALITIES):
                t = make_series(d, modality=mod, image_size=args.size, n_slices=72, seed=(seed, mi),
                                aneurysms=list(LOCATION_COLS))
                v = load_series(t["path"])
                points = [(a["location"], v.lps_to_voxel(a["centre_lps"])[0]) for a in t["aneurysms"]]
                spacing = np.asarray(v.spacing, dtype=np.float64)
                cow_true = v.lps_to_voxel(synth_cow_centre_lps(t["pose"]))[0]
                for loc, _ in points:
                    total[(mod, loc)] += 1
                for name in names:
                    t0 = time.perf_counter()
                    box = get_locator(name).locate(v, cfg)
                    seconds[name].append(time.perf_counter() - t0)
                    lo, hi = box.index_bounds(tuple(float(s) for s in v.spacing))
                    cow_box = np.asarray(box.centre) - np.asarray(cfg.roi_offset_from_cow_mm) / spacing
                    errors[(name, mod)].append(float(np.linalg.norm((cow_box - cow_true) * spacing)))
                    for loc, p in points:
                        inside[name][(mod, loc)] += bool(np.all(p >= lo) and np.all(p <= hi))
    print(f"box {cfg.roi_size_mm} mm on {cfg.out_shape} voxels; {args.seeds} seeds x {len(MODALITIES)} modalities")
    print("| row | n | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))

    def row(label: str, keys: list) -> None:
        n = sum(total[k] for k in keys)
        cells = [f"{sum(inside[name][k] for k in keys) / max(n, 1):.3f}" for name in names]
        print(f"| {label} | {n} | " + " | ".join(cells) + " |")

    for mod in MODALITIES:
        row(mod, [k for k in total if k[0] == mod])
    for col in LOCATION_COLS:
        row(col, [k for k in total if k[1] == col])
    row("all", list(total))
    for mod in MODALITIES:
        cells = [f"{np.median(errors[(n, mod)]):.1f} / {np.max(errors[(n, mod)]):.1f}" for n in names]
        print(f"| CoW error mm (median / max), {mod} | {len(errors[(names[0], mod)])} | " + " | ".join(cells) + " |")
    print("| seconds per series (median) | | " + " | ".join(f"{np.median(seconds[n]):.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()
