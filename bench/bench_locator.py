"""ROI locator benchmark on the real heads of ../shared/real_anatomy: CoW error (mm), envelope margin (mm, negative =
the landmark envelope sticks out of the box), method and seconds per series, the new default (``anatomy`` with the
new box, registration at 6 mm) beside the old heuristic at its old defaults and beside the same locator registering at
4 mm (the setting before 2026-12-07), in the same run.

    python bench/bench_locator.py            # KAGGLE_UTILS_REAL_ANATOMY overrides the corpus folder
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "tests")]

from test_locator_real import (  # noqa: E402
    REAL,
    TOF_MIP_COW,
    VS_SEG_COW,
    NiftiVolume,
    envelope_margin,
    tof_volume,
)

from kaggle_utils.config import DataConfig  # noqa: E402
from kaggle_utils.dicom import load_series  # noqa: E402
from kaggle_utils.locator import load_template  # noqa: E402
from kaggle_utils.roi import get_locator  # noqa: E402

OLD = DataConfig(roi_locator="heuristic", roi_size_mm=(96.0, 96.0, 96.0), out_shape=(48, 96, 96),
                 roi_centre_below_top_mm=80.0, roi_centre_fraction_yx=(0.47, 0.5))
NEW = DataConfig()
REG_4MM = DataConfig(locator_coarse_mm=4.0)  # the registration before 2026-12-07, for the same-run comparison


def cases():
    tpl = load_template()
    arr = np.concatenate([np.zeros((10, *tpl.image.shape[1:]), np.float32), tpl.image], axis=0)
    yield "MNI152 4 mm + 40 mm empty neck", NiftiVolume(arr, (4.0,) * 3, np.eye(4)), \
        tpl.local_mm(tpl.cow_lps) / 4.0 + [10, 0, 0]
    yield "vs_seg_001 T1post (vessel mark)", load_series(REAL / "vs_seg_001_t1post"), VS_SEG_COW
    yield "vs_seg_001 T1post (README mark)", load_series(REAL / "vs_seg_001_t1post"), np.array([41.0, 250.0, 256.0])
    tof = tof_volume()
    yield "TOF-MRA slab (README mark +-10)", tof, (np.array([6.1, -29.3, 1.1]) - tof.affine[:3, 3]) / np.asarray(
        tof.spacing)
    yield "TOF-MRA slab (MIP mark +-5)", tof, TOF_MIP_COW
    yield "GE head CT, gantry tilt (no mark)", load_series(REAL / "ge_head_ct_gantry_tilt"), None


def main() -> int:
    print("| scan | locator | method | CoW error mm (z, y, x) | envelope margin mm | s |")
    print("|---|---|---|---|---|---|")
    for name, vol, cow in cases():
        for label, cfg in (("old heuristic, 96 mm cube", OLD), ("anatomy, 4 mm registration", REG_4MM),
                           ("anatomy (default, 6 mm)", NEW)):
            t0 = time.perf_counter()
            box = get_locator(cfg.roi_locator).locate(vol, cfg)
            dt = time.perf_counter() - t0
            sp = np.asarray(vol.spacing)
            if cow is None:
                err, margin = "-", "-"
            else:
                # the CoW the box implies: its centre less the configured offset (old heuristic: the centre itself)
                offset = np.zeros(3) if cfg is OLD else np.asarray(cfg.roi_offset_from_cow_mm)
                est = np.asarray(box.centre) * sp - offset
                err = "(" + ", ".join(f"{v:+.1f}" for v in est - cow * sp) + ")"
                margin = f"{envelope_margin(box, cow, vol.spacing):+.1f}"
            print(f"| {name} | {label} | {box.method} | {err} | {margin} | {dt:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
