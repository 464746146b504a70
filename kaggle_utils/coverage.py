"""Coverage of the ROI box: per location, the fraction of localizer points inside the box and the median distance
(mm) from a point to the nearest box face (positive inside, negative outside). Computed from cache manifest rows
(``points`` in cache voxels, ``shape`` (C, Z, Y, X), ``spacing`` (z, y, x) mm), so preprocess, the manifest and the
evaluate report can all show it; ``warnings`` names each location under ``min_fraction`` and a few of its series.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

MIN_FRACTION = 0.98
COVERAGE_NAME = "coverage.json"  # written into the cache folder beside manifest.parquet


def face_distance_mm(point_zyx: np.ndarray, grid_shape: tuple[int, int, int], spacing: tuple[float, float, float]
                     ) -> float:
    """Signed distance (mm) from a cache-voxel point to the nearest face of the grid (faces at -0.5 and n - 0.5)."""
    p = np.asarray(point_zyx, dtype=np.float64)
    n = np.asarray(grid_shape, dtype=np.float64)
    sp = np.asarray(spacing, dtype=np.float64)
    return float(np.min(np.minimum(p + 0.5, n - 0.5 - p) * sp))


def coverage_table(rows: list[dict[str, Any]], id_key: str = "SeriesInstanceUID") -> list[dict[str, Any]]:
    """One dict per location: ``location``, ``points``, ``inside_fraction``, ``median_face_mm``, ``outside_series``."""
    dists: dict[str, list[float]] = defaultdict(list)
    outside: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if row.get("status", "ok") != "ok" or not row.get("points"):
            continue
        grid = tuple(int(v) for v in row["shape"][-3:])
        for pt in row["points"]:
            d = face_distance_mm(np.array([pt["z"], pt["y"], pt["x"]]), grid, tuple(row["spacing"]))
            dists[pt["location"]].append(d)
            if d < 0:
                outside[pt["location"]].append(str(row.get(id_key, "?")))
    return [{"location": loc, "points": len(d), "inside_fraction": float(np.mean(np.asarray(d) >= 0)),
             "median_face_mm": float(np.median(d)), "outside_series": sorted(set(outside[loc]))}
            for loc, d in sorted(dists.items())]


def coverage_warnings(table: list[dict[str, Any]], min_fraction: float = MIN_FRACTION, n_series: int = 3) -> list[str]:
    """A warning per location whose inside fraction is under ``min_fraction``, naming a few series outside."""
    return [f"ROI coverage: {t['location']}: only {t['inside_fraction']:.1%} of {t['points']} localizer points inside "
            f"the box (median {t['median_face_mm']:.1f} mm to the nearest face); e.g. series "
            f"{', '.join(t['outside_series'][:n_series])}"
            for t in table if t["inside_fraction"] < min_fraction]


def format_coverage(table: list[dict[str, Any]]) -> str:
    lines = [f"{'location':<45} {'points':>6} {'inside':>7} {'median face mm':>14}"]
    lines += [f"{t['location']:<45} {t['points']:>6} {t['inside_fraction']:>7.1%} {t['median_face_mm']:>14.1f}"
              for t in table]
    return "\n".join(lines)


def write_coverage(cache_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Compute the coverage table of manifest rows and keep it as ``CACHE/coverage.json``; returns the table."""
    from kaggle_utils.io import atomic_write_text

    table = coverage_table(rows)
    atomic_write_text(Path(cache_dir) / COVERAGE_NAME, json.dumps({"min_fraction": MIN_FRACTION, "locations": table,
                                                                   "warnings": coverage_warnings(table)}, indent=1))
    return table


def read_coverage(cache_dir: Path) -> dict[str, Any] | None:
    """The coverage a cache kept (``None`` for a cache without localizer points or made before it existed)."""
    path = Path(cache_dir) / COVERAGE_NAME
    return json.loads(path.read_text()) if path.is_file() else None
