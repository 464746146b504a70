"""The synthetic competition through load_series: every series loads, and every localizer's voxel_of lands within
one voxel of the generator's true aneurysm centre."""

from __future__ import annotations

import ast
import csv
import json

import numpy as np
import pytest

from kaggle_utils.dicom import load_series

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def truth_of(competition) -> dict:
    return json.loads((competition / "synth_truth.json").read_text())["series"]


def grid_affine(geometry: dict) -> np.ndarray:
    """The generator's acquisition grid (k, r, c, 1) -> LPS, from its truth record."""
    row_dir, col_dir = np.array(geometry["row_dir"]), np.array(geometry["col_dir"])
    affine = np.eye(4)
    affine[:3, 0] = np.cross(row_dir, col_dir) * geometry["slice_step"]
    affine[:3, 1] = col_dir * geometry["pixel_spacing"][0]
    affine[:3, 2] = row_dir * geometry["pixel_spacing"][1]
    affine[:3, 3] = geometry["origin_lps"]
    return affine


def expected_voxel(volume, series: dict, centre_lps) -> np.ndarray:
    """Where the true centre must land. A multi-frame file without geometry ("bare") is loaded with the documented
    fallback geometry, so its true grid position (not its LPS point) is what must be matched."""
    if series.get("multiframe_layout") == "bare":
        k, r, c = np.linalg.solve(grid_affine(series["geometry"]), np.array([*centre_lps, 1.0]))[:3]
        return np.array([k, r, c])  # the fallback is axial with frame 0 inferior: canonical == acquisition order
    return volume.lps_to_voxel(centre_lps)[0]


@pytest.fixture(scope="module")
def loaded(tiny_competition):
    truth = truth_of(tiny_competition)
    return {uid: load_series(tiny_competition / s["folder"]) for uid, s in truth.items()}


def test_every_synthetic_series_loads_with_its_shape_and_spacing(tiny_competition, loaded):
    for uid, series in truth_of(tiny_competition).items():
        volume = loaded[uid]
        assert volume.series_uid == uid
        assert sorted(volume.shape) == sorted(series["shape"])
        assert volume.modality == series["dicom_modality"]
        if series.get("multiframe_layout") != "bare":
            g = series["geometry"]
            assert sorted(volume.spacing) == pytest.approx(sorted([abs(g["slice_step"]), *g["pixel_spacing"]]))
        if "scout" in series["quirks"]:
            assert any("another geometry" in n for n in volume.notes)
            assert series["scout_sop_uid"] not in {sop for sop, _ in volume.slice_sources}


def test_localizers_land_within_one_voxel_of_the_truth(tiny_competition, loaded):
    truth = truth_of(tiny_competition)
    with open(tiny_competition / "train_localizers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, "the synthetic competition has no localizers"
    checked = 0
    for row in rows:
        series = truth[row["SeriesInstanceUID"]]
        coords = ast.literal_eval(row["coordinates"])
        matches = [a for a in series["aneurysms"] if a["location"] == row["location"]]
        volume = loaded[row["SeriesInstanceUID"]]
        got = np.array(volume.voxel_of(row["SOPInstanceUID"], coords["x"], coords["y"], coords.get("f")))
        distances = [np.max(np.abs(got - expected_voxel(volume, series, a["centre_lps"]))) for a in matches]
        assert min(distances) <= 1.0, (row, got, distances)
        checked += 1
    # The held-out part has no localizer CSV; check its truth records through the same path.
    for uid, series in truth.items():
        for a in series["aneurysms"]:
            volume = loaded[uid]
            got = np.array(volume.voxel_of(a["sop_uid"], a["x"], a["y"], a["frame"]))
            assert np.max(np.abs(got - expected_voxel(volume, series, a["centre_lps"]))) <= 1.0
            checked += 1
    assert checked >= len(rows)


@pytest.mark.parametrize("kwargs", [
    dict(modality="MRA", multiframe="bare", n_slices=40),  # no geometry at all: the documented fallback
    dict(modality="MRI T2", multiframe="perframe", plane="coronal", n_slices=24),
    dict(modality="CTA", plane="sagittal", descending=True, transfer_syntax="rle", n_slices=24),
], ids=["bare_multiframe", "coronal_perframe", "sagittal_descending_rle"])
def test_generator_series_with_an_aneurysm(tmp_path, kwargs):
    from kaggle_utils.synth.series import make_series

    series = make_series(tmp_path, image_size=64, seed=7, aneurysms=["Basilar Tip"], **kwargs)
    volume = load_series(series["path"])
    (aneurysm,) = series["aneurysms"]
    got = np.array(volume.voxel_of(aneurysm["sop_uid"], aneurysm["x"], aneurysm["y"], aneurysm["frame"]))
    assert np.max(np.abs(got - expected_voxel(volume, series, aneurysm["centre_lps"]))) <= 1.0
    if kwargs.get("multiframe") == "bare":
        assert any("no PixelSpacing" in n for n in volume.notes)
