"""``localizers.read_localizers``: the one reader of ``train_localizers.csv`` (fixed dtypes, clear errors), and every
caller that used to read the file its own way (cache, EDA, viewer, learned-locator training) goes through it."""

from __future__ import annotations

import polars as pl
import pytest

from kaggle_utils import cache, localizers, locator_learned
from kaggle_utils.localizers import LOCALIZER_SCHEMA, LocalizerError, parse_coordinates, read_localizers
from kaggle_utils.report import eda, viewer
from kaggle_utils.schema import ID_COL, SOP_COL

# Written by hand in the competition's format. The UIDs look like numbers on purpose: "1.10" read as a float would
# become 1.1 and collide with the other series; "0012" would lose its zeros.
CSV = '''SeriesInstanceUID,SOPInstanceUID,coordinates,location
1.10,0012,"{'x': 258.36, 'y': 261.36}",Anterior Communicating Artery
1.1,2.5,"{'x': 10, 'y': 20.5, 'f': 7}",Basilar Tip
1.10,0013,"{'y': 1.0, 'x': -3.25}",Left Middle Cerebral Artery
'''


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "train_localizers.csv").write_text(CSV)
    return tmp_path


def test_reads_fixed_dtypes_and_parses_the_coordinates(folder):
    loc = read_localizers(folder)
    assert loc.schema == pl.Schema(LOCALIZER_SCHEMA)
    assert loc[ID_COL].to_list() == ["1.10", "1.1", "1.10"]
    assert loc[SOP_COL].to_list() == ["0012", "2.5", "0013"]
    assert loc["x"].to_list() == [258.36, 10.0, -3.25] and loc["y"].to_list() == [261.36, 20.5, 1.0]
    assert loc["frame"].to_list() == [None, 7, None]
    assert loc["coordinates"][1] == "{'x': 10, 'y': 20.5, 'f': 7}"
    assert read_localizers(folder / "train_localizers.csv").equals(loc)  # the file itself works too


def test_a_missing_file_is_empty_or_an_error(tmp_path):
    empty = read_localizers(tmp_path)
    assert empty.height == 0 and empty.schema == pl.Schema(LOCALIZER_SCHEMA)
    with pytest.raises(LocalizerError, match="train_localizers.csv does not exist"):
        read_localizers(tmp_path, missing_ok=False)


def test_missing_columns_name_the_file_and_the_columns(tmp_path):
    (tmp_path / "train_localizers.csv").write_text("SeriesInstanceUID,coordinates\n1.2,\"{'x': 1, 'y': 2}\"\n")
    lacks = r"train_localizers.csv lacks column\(s\) \['SOPInstanceUID', 'location'\]"
    with pytest.raises(LocalizerError, match=lacks):
        read_localizers(tmp_path)


@pytest.mark.parametrize("text", ["{'x': 1}", "__import__('os')", "{'x': 'a', 'y': 2}", "[1, 2]", ""])
def test_coordinates_that_do_not_parse_name_the_file_and_line(tmp_path, text):
    (tmp_path / "train_localizers.csv").write_text(CSV + f'1.3,5,"{text}",Basilar Tip\n')
    with pytest.raises(LocalizerError, match=r"train_localizers.csv line 5 \(series 1.3\)"):
        read_localizers(tmp_path)


def test_parse_coordinates():
    assert parse_coordinates("{'x': 258.36, 'y': 261.36}") == (258.36, 261.36, None)
    assert parse_coordinates("{'x': 1, 'y': 2, 'f': 0}") == (1.0, 2.0, 0)
    assert parse_coordinates("{'x': 1, 'y': 2, 'f': 7}") == (1.0, 2.0, 7)
    with pytest.raises(ValueError, match="lack"):
        parse_coordinates("{'x': 1}")
    with pytest.raises(ValueError, match="not a Python dict"):
        parse_coordinates("__import__('os')")


def test_every_reader_of_the_file_uses_it(folder):
    grouped = localizers.by_series(read_localizers(folder))
    assert list(grouped) == ["1.10", "1.1"] and [r[SOP_COL] for r in grouped["1.10"]] == ["0012", "0013"]
    assert cache.read_localizers is read_localizers and cache.by_series is localizers.by_series
    assert eda.read_localizers(folder).equals(read_localizers(folder))
    assert eda.read_localizers(folder / "missing") is None
    assert viewer.series_localizers(folder, "1.1") == [
        {"sop": "2.5", "x": 10.0, "y": 20.5, "frame": 7, "location": "Basilar Tip"}]
    assert viewer.series_localizers(folder, "1.10")[1]["sop"] == "0013"
    targets = locator_learned.competition_targets(folder)
    assert [t[0].name for t in targets] == ["1.10", "1.1"] and {t[1] for t in targets} == {"localizer-offset"}
