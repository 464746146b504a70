"""ROI coverage per location from manifest rows, against hand-computed answers."""

from __future__ import annotations

import numpy as np

from kaggle_utils.coverage import coverage_table, coverage_warnings, face_distance_mm, format_coverage


def test_face_distance_is_signed_and_in_mm():
    # grid 10 x 10 x 10 of 2 mm voxels: faces at -0.5 and 9.5
    assert np.isclose(face_distance_mm(np.array([4.5, 4.5, 4.5]), (10, 10, 10), (2.0, 2.0, 2.0)), 10.0)
    assert np.isclose(face_distance_mm(np.array([4.5, 0.5, 4.5]), (10, 10, 10), (2.0, 1.0, 2.0)), 1.0)
    assert np.isclose(face_distance_mm(np.array([-2.5, 4.5, 4.5]), (10, 10, 10), (2.0, 2.0, 2.0)), -4.0)


def test_table_and_warning_name_the_location_and_series():
    def row(uid, pts):
        return {"SeriesInstanceUID": uid, "status": "ok", "shape": [2, 10, 10, 10], "spacing": [1.0, 1.0, 1.0],
                "points": [{"location": loc, "z": z, "y": 5.0, "x": 5.0} for loc, z in pts]}

    rows = [row("s1", [("MCA", 5.0), ("ACom", 4.5)]), row("s2", [("MCA", 12.0)]), row("s3", [("MCA", 3.0)]),
            {"SeriesInstanceUID": "bad", "status": "error", "points": []}]
    table = {t["location"]: t for t in coverage_table(rows)}
    assert table["MCA"]["points"] == 3 and np.isclose(table["MCA"]["inside_fraction"], 2 / 3)
    assert np.isclose(table["MCA"]["median_face_mm"], 3.5)  # distances 4.5, -2.5, 3.5
    assert table["ACom"]["inside_fraction"] == 1.0
    warnings = coverage_warnings(list(table.values()))
    assert len(warnings) == 1 and "MCA" in warnings[0] and "s2" in warnings[0]
    assert "MCA" in format_coverage(list(table.values()))


def test_old_cache_version_is_refused_with_how_to_rebuild(tmp_path):
    import json

    import pytest

    from kaggle_utils.cache import CACHE_VERSION, CacheError, ensure_cache_info, read_cache_info
    from kaggle_utils.config import DataConfig

    ensure_cache_info(tmp_path, DataConfig())
    info = json.loads((tmp_path / "cache_info.json").read_text())
    info["cache_version"] = CACHE_VERSION - 1
    (tmp_path / "cache_info.json").write_text(json.dumps(info))
    assert read_cache_info(tmp_path)["cache_version"] == CACHE_VERSION - 1
    with pytest.raises(CacheError, match="cache_version"):  # the training side refuses it (train.loop)
        from kaggle_utils.cache import check_same_cache

        check_same_cache(read_cache_info(tmp_path), {**info, "cache_version": CACHE_VERSION}, "old", "new")


def test_built_cache_keeps_coverage_and_roi_method(tiny_cache):
    from kaggle_utils.cache import read_manifest
    from kaggle_utils.coverage import read_coverage

    kept = read_coverage(tiny_cache)
    assert kept is not None and kept["locations"], "the tiny cache has localizer points"
    assert all(0.0 <= t["inside_fraction"] <= 1.0 and t["points"] > 0 for t in kept["locations"])
    ok = read_manifest(tiny_cache, ok_only=True)
    assert ok["roi_method"].null_count() == 0 and set(ok["roi_method"]) == {"heuristic"}  # cpu_tiny's locator
