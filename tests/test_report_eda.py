"""EDA counts against the competition CSVs and the file tree; the page is self-contained."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import polars as pl
import pytest

from kaggle_utils.cli import main
from kaggle_utils.report.eda import sample_evenly
from kaggle_utils.schema import ID_COL, LOCATION_COLS, PRESENT_COL


@pytest.fixture(scope="module")
def eda(tiny_competition, tmp_path_factory):
    out = tmp_path_factory.mktemp("eda") / "eda"
    assert main(["eda", "--data-dir", str(tiny_competition), "--out", str(out), "--max-series", "6"]) == 0
    return out, json.loads((out / "eda.json").read_text())


def test_label_counts_match_train_csv(tiny_competition, eda):
    _, numbers = eda
    train = pl.read_csv(tiny_competition / "train.csv")
    assert numbers["n_series"] == train.height
    assert numbers["n_present"] == int(train[PRESENT_COL].sum())
    assert numbers["location_positives"] == {c: int(train[c].sum()) for c in LOCATION_COLS}
    loc = train.select(LOCATION_COLS).to_numpy()
    i, j = LOCATION_COLS.index("Left Middle Cerebral Artery"), LOCATION_COLS.index("Right Middle Cerebral Artery")
    assert numbers["cooccurrence"][i][j] == int(np.sum((loc[:, i] == 1) & (loc[:, j] == 1)))
    assert np.array_equal(np.diag(numbers["cooccurrence"]), loc.sum(axis=0))
    counts = train.group_by("Modality").len()
    assert numbers["modality_counts"] == dict(zip(counts["Modality"], counts["len"]))
    assert sum(numbers["sex_counts"].values()) == train.height
    assert numbers["sex_counts"].get("Female", 0) == int((train["PatientSex"] == "Female").sum())


def test_file_and_header_counts_match_the_tree(tiny_competition, eda):
    _, numbers = eda
    truth = json.loads((tiny_competition / "synth_truth.json").read_text())["series"]
    for uid, n_files in numbers["files_per_series"].items():
        assert n_files == len(list((tiny_competition / "series" / uid).glob("*.dcm"))) == truth[uid]["n_files"]
    headers = numbers["headers"]
    assert len(headers) == 6  # --max-series
    spacing_checked = 0
    for uid, h in headers.items():
        t = truth[uid]
        # every slice (frame) of the series, plus a one-frame scout file where the generator wrote one
        assert h["slices"] == t["shape"][0] + (1 if t["scout_sop_uid"] else 0)
        assert h["dicom_modality"] == t["dicom_modality"]
        # a bare multi-frame file has no spacing tags at all; a scout's position is not a slice step
        if t["multiframe_layout"] != "bare" and not t["scout_sop_uid"]:
            assert h["pixel_spacing_mm"] == pytest.approx(np.mean(t["geometry"]["pixel_spacing"]), abs=1e-3)
            assert h["slice_spacing_mm"] == pytest.approx(abs(t["geometry"]["slice_step"]), rel=1e-3)
            spacing_checked += 1
        else:
            assert h["pixel_spacing_mm"] is None or t["scout_sop_uid"]
    assert spacing_checked >= 3


def test_eda_page_is_self_contained_with_every_figure(eda):
    out, numbers = eda
    page = (out / "eda.html").read_text()
    assert not re.search(r"""(href|src)=['"](?!data:)""", page)
    embedded = [base64.b64decode(s) for s in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]
    assert set(numbers["figures"]) == {"prevalence.png", "cooccurrence.png", "demographics.png", "geometry.png"}
    for name in numbers["figures"]:
        assert (out / name).read_bytes() in embedded
        assert f"]({name})" in (out / "eda.md").read_text()


def test_sample_evenly_covers_the_range():
    items = [f"{i:03d}" for i in range(100)]
    picked = sample_evenly(items, 5)
    assert picked == ["000", "025", "050", "074", "099"]
    assert sample_evenly(items, 0) == items and sample_evenly(items[:3], 10) == items[:3]


def test_missing_train_csv_is_a_one_line_error(tmp_path, capsys):
    assert main(["eda", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "train.csv does not exist" in capsys.readouterr().err


def test_ids_are_the_train_csv_ids(tiny_competition, eda):
    _, numbers = eda
    assert sorted(numbers["files_per_series"]) == sorted(pl.read_csv(tiny_competition / "train.csv")[ID_COL])


def test_eda_notebook_is_thin_without_outputs_and_runs(tiny_competition, tmp_path, monkeypatch):
    """The notebook's code cells run in this process (a kernel start would cost seconds the suite does not have)."""
    import nbformat

    from kaggle_utils.paths import REPO_ROOT

    nb = nbformat.read(REPO_ROOT / "notebooks" / "00_eda.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(nb.cells) < 10
    assert all(not c.outputs and c.execution_count is None for c in code)  # committed without outputs
    monkeypatch.setenv("KAGGLE_UTILS_DATA_DIR", str(tiny_competition))
    monkeypatch.setenv("KAGGLE_UTILS_WORK_DIR", str(tmp_path))
    namespace: dict = {}
    for cell in code:
        exec(compile(cell.source, "00_eda.ipynb", "exec"), namespace)  # noqa: S102 - our own notebook
    assert namespace["numbers"]["n_series"] == pl.read_csv(tiny_competition / "train.csv").height
    assert (tmp_path / "eda" / "eda.html").is_file() and (tmp_path / "eda" / "example_series.png").is_file()
