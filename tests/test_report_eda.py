"""EDA counts against the competition CSVs and the file tree; the page is self-contained."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import polars as pl
import pytest
from dicom_series_writer import SeriesSpec, write_series
from pydicom.uid import generate_uid

from kaggle_utils.cli import main
from kaggle_utils.report.eda import sample_evenly, series_header_stats
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
        # the loader drops scouts, so their series report the true spacing too; a bare multi-frame file has no
        # spacing tags at all and reports the loader's assumed spacing, flagged
        assert h["geometry_assumed"] == (t["multiframe_layout"] == "bare")
        if t["multiframe_layout"] != "bare":
            assert h["pixel_spacing_mm"] == pytest.approx(np.mean(t["geometry"]["pixel_spacing"]), abs=1e-3)
            assert h["slice_spacing_mm"] == pytest.approx(abs(t["geometry"]["slice_step"]), rel=1e-3)
            spacing_checked += 1
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


def _loader_says(folder):
    from kaggle_utils.dicom import load_series

    volume = load_series(folder)
    return volume, series_header_stats(folder)


def test_eda_reports_the_geometry_the_loader_uses_despite_a_scout(tmp_path):
    """A coronal scout with another matrix and spacing sorts first in the folder; a header reader of its own took the
    first file's orientation and spacing (issue 14). EDA must give what ``load_series`` uses: the axial majority."""
    folder = tmp_path / "series"
    uid = generate_uid()
    axial = np.zeros((12, 32, 32), np.int16)
    write_series(SeriesSpec(axial, pixel_spacing=(0.5, 0.5), slice_spacing=0.8, series_uid=uid, name_prefix="b"),
                 folder)
    write_series(SeriesSpec(np.zeros((3, 40, 40), np.int16), orientation=(1, 0, 0, 0, 0, -1),
                            pixel_spacing=(1.5, 1.5), slice_spacing=4.0, series_uid=uid, name_prefix="a"), folder)
    assert sorted(folder.iterdir())[0].name.startswith("a")
    volume, h = _loader_says(folder)
    assert volume.array.shape == (12, 32, 32)
    assert h["plane"] == "axial" and h["matrix"] == "32x32" and h["kept_slices"] == 12 and h["slices"] == 15
    assert h["pixel_spacing_mm"] == pytest.approx(0.5) and h["slice_spacing_mm"] == pytest.approx(0.8)
    assert h["volume_spacing_mm"] == pytest.approx(list(volume.spacing)) and not h["geometry_assumed"]


def test_eda_reports_the_loaders_fallback_spacing_for_a_file_without_geometry(tmp_path):
    """A multi-frame file without spacing, orientation or positions: EDA shows the spacing the loader assumes
    (and says it is assumed) rather than none."""
    folder = tmp_path / "series"
    write_series(SeriesSpec(np.zeros((20, 64, 64), np.uint16), modality="MR", multiframe=True,
                            write_geometry=False), folder)
    volume, h = _loader_says(folder)
    assert h["geometry_assumed"] and h["slices"] == h["kept_slices"] == 20
    assert h["volume_spacing_mm"] == pytest.approx(list(volume.spacing))
    assert h["pixel_spacing_mm"] == pytest.approx(max(0.5, 220 / 64))
    assert h["slice_spacing_mm"] == pytest.approx(5.0)  # the loader's fallback for a short (<= 80 frames) stack


def test_a_series_the_loader_cannot_read_is_an_error_entry(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"not dicom")
    h = series_header_stats(folder)
    assert h["files"] == 1 and h["slice_spacing_mm"] is None and "no usable image" in h["error"]
