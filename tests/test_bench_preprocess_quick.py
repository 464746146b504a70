"""Smoke check of the preprocessing benchmark: its quick mode (one small series per syntax) runs end to end and
prints a README table that parses, with every method timed and every syntax present."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import bench_preprocess  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROW = re.compile(r"^\| (?P<label>[^|]+) \| (?P<floor>[\d.]+) \| (?P<sitk>[\d.]+) \((?P<sitk_x>[\d.]+)x\) \| "
                 r"(?P<load>[\d.]+) \((?P<load_x>[\d.]+)x\) \| (?P<full>[\d.]+) \((?P<full_x>[\d.]+)x\) \| "
                 r"(?P<pool>[\d.]+) \((?P<eff>[\d.]+x; \d+%|pool skipped)\) \|$")


def test_quick_benchmark_runs_and_its_readme_table_parses(tmp_path, capsys):
    assert bench_preprocess.main(["--quick", "--workers", "2", "--repeat", "1", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = out.split("README table:", 1)[1]
    assert re.search(r"Measured \d{4}-\d\d-\d\d \d\d:\d\d UTC on \d+ cores, load average [\d.]+", table)
    rows = [ROW.match(line) for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert all(rows), [line for line in table.splitlines() if line.startswith("|")]
    labels = [m["label"] for m in rows]
    assert len(labels) == len(bench_preprocess.QUICK_CASES) == 6
    for syntax in ("uncompressed", "RLE", "JPEG-LS", "JPEG 2000", "JPEG baseline"):
        assert any(syntax in label for label in labels), (syntax, labels)
    for m in rows:
        floor = float(m["floor"])
        assert floor > 0 and float(m["load"]) > 0
        # the printed ratio is the time over the floor, up to print rounding: times to 0.001 s, ratios to 0.01
        # (quick-mode times are a few ms, so the bound comes from the rounding, not a fixed tolerance)
        load, half_ms = float(m["load"]), 0.0005
        low, high = (load - half_ms) / (floor + half_ms), (load + half_ms) / max(floor - half_ms, 1e-9)
        assert low - 0.005 <= float(m["load_x"]) <= high + 0.005, (m["label"], m["load_x"], load, floor)
        assert float(m["full"]) >= float(m["load"]) * 0.5  # the full path includes a load
        assert (m["eff"] == "pool skipped") == ("uncompressed" in m["label"] or "RLE" in m["label"])
