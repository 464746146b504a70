"""The synthetic test split is written with only the competition's test-set tags (COMPETITION.md), and
``make_competition`` refuses to write one that carries any other tag."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from kaggle_utils.synth import competition, dicom_write
from kaggle_utils.synth.competition import SynthError, make_competition


def test_disallowed_tags_sees_nested_tags():
    ds = Dataset()
    ds.Rows, ds.PatientAge = 8, "045Y"
    item = Dataset()
    item.SliceLocation = "1.5"
    ds.PerFrameFunctionalGroupsSequence = Sequence([item])
    assert sorted(dicom_write.disallowed_tags(ds)) == ["PatientAge", "SliceLocation"]


def test_written_test_split_carries_only_allowed_tags(tmp_path):
    root = make_competition(tmp_path / "comp", n_series=1, n_test=6, seed=5, image_size=32, n_slices=8)
    series = sorted((root / "kaggle_evaluation" / "series").iterdir())
    assert len(series) == 6
    first = pydicom.dcmread(next(series[0].iterdir()), stop_before_pixels=True)
    assert first.SeriesInstanceUID == series[0].name and "Modality" in first
    for s in series:
        assert dicom_write.series_disallowed_tags(s) == {}


def test_a_disallowed_tag_in_a_test_series_is_refused(tmp_path, monkeypatch):
    original = dicom_write._series_tags

    def with_age(ds, *args):
        original(ds, *args)
        ds.PatientAge = "045Y"  # train.csv has it, the test files must not

    monkeypatch.setattr(dicom_write, "_series_tags", with_age)
    with pytest.raises(SynthError, match=r"test series .*PatientAge"):
        make_competition(tmp_path / "comp", n_series=1, n_test=1, seed=5, image_size=32, n_slices=8, workers=1)
    assert not (tmp_path / "comp").exists()  # nothing half-written
    assert competition.series_disallowed_tags is dicom_write.series_disallowed_tags
