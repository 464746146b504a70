"""Fraction of synthetic localizer points inside the default heuristic ROI box, per modality and location.

    PYTHONPATH=. python bench/bench_synth_coverage.py [roi_centre_below_top_mm or ""] [n_seeds]
"""
import collections
import sys
import tempfile

import numpy as np

from kaggle_utils.config import DataConfig
from kaggle_utils.dicom import load_series
from kaggle_utils.roi import get_locator
from kaggle_utils.schema import LOCATION_COLS
from kaggle_utils.synth.series import make_series

below = float(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] else None
cfg = DataConfig() if below is None else DataConfig(roi_centre_below_top_mm=below)
loc = get_locator("heuristic")
inside = collections.Counter()
total = collections.Counter()
dz = []
with tempfile.TemporaryDirectory() as d:
    for seed in range(int(sys.argv[2]) if len(sys.argv) > 2 else 4):
        for mi, mod in enumerate(("CTA", "MRA", "MRI T2", "MRI T1post")):
            t = make_series(d, modality=mod, image_size=96, n_slices=72, seed=(seed, mi), aneurysms=list(LOCATION_COLS))
            v = load_series(t["path"])
            box = loc.locate(v, cfg)
            b = box.index_bounds(tuple(float(s) for s in v.spacing))
            for a in t["aneurysms"]:
                p = v.lps_to_voxel(a["centre_lps"])[0]
                ok = bool(np.all(p >= b[0]) and np.all(p <= b[1]))
                inside[(mod, a["location"])] += ok
                total[(mod, a["location"])] += 1
print("roi_centre_below_top_mm", cfg.roi_centre_below_top_mm, "box", cfg.roi_size_mm)
for mod in ("CTA", "MRA", "MRI T2", "MRI T1post"):
    i = sum(inside[k] for k in total if k[0] == mod)
    n = sum(total[k] for k in total if k[0] == mod)
    print(f"{mod:11s} {i}/{n} = {i / max(n, 1):.3f}")
for col in LOCATION_COLS:
    i = sum(inside[k] for k in total if k[1] == col)
    n = sum(total[k] for k in total if k[1] == col)
    print(f"  {col:45s} {i}/{n} = {i / max(n, 1):.3f}")
n_in = sum(inside.values())
N = sum(total.values())
print(f"ALL {n_in}/{N} = {n_in / N:.3f}")
