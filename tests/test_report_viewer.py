"""The series viewer and the mistakes gallery on the synthetic competition: marks land on the aneurysm."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from kaggle_utils.cli import main
from kaggle_utils.config import DataConfig
from kaggle_utils.dicom import load_series
from kaggle_utils.preprocess import prepare_series
from kaggle_utils.report.viewer import SLICE_SCORES_FILE, render_gallery, render_series
from kaggle_utils.schema import ID_COL, LABEL_COLS, PRESENT_COL

BRIGHT_VESSEL_MODALITIES = ("CTA", "MRA", "MRI T1post")  # T2 shows vessels dark (flow voids)


def _truth(folder) -> dict:
    return json.loads((folder / "synth_truth.json").read_text())["series"]


def _bright_positive_series(folder) -> list[dict]:
    return [t for t in _truth(folder).values()
            if t["split"] == "train" and t["aneurysms"] and t["modality"] in BRIGHT_VESSEL_MODALITIES]


def _vessel_bright(volume, voxel) -> bool:
    """The brightest voxel within one voxel of ``voxel`` has contrast-filled vessel intensity."""
    z, y, x = (int(round(v)) for v in voxel)
    patch = volume.array[max(z - 1, 0): z + 2, max(y - 1, 0): y + 2, max(x - 1, 0): x + 2]
    if volume.modality == "CT":
        return float(patch.max()) >= 200.0  # synthetic contrast 300-480 HU, brain about 36 HU
    head = volume.array[volume.array > 0.1 * np.percentile(volume.array, 99)]
    return float(patch.max()) >= 1.4 * float(np.median(head))


def test_localizer_marks_land_on_the_aneurysm(tiny_competition, tmp_path):
    cases = _bright_positive_series(tiny_competition)
    assert cases, "the tiny competition should hold a positive CTA/MRA/T1post series"
    for truth in cases:
        uid = truth["series_uid"]
        out = tmp_path / f"{uid[-6:]}.png"
        result = render_series(tiny_competition, uid, out)
        assert out.read_bytes()[:4] == b"\x89PNG"
        volume = load_series(tiny_competition / "series" / uid)
        assert len(result.markers) == len(truth["aneurysms"])
        for marker, aneurysm in zip(result.markers, truth["aneurysms"]):
            assert marker.label == aneurysm["location"]
            centre = np.linalg.inv(volume.affine) @ np.array([*aneurysm["centre_lps"], 1.0])
            # the localizer sits on the nearest acquired slice: at most half a slice off along one axis, exact in-plane
            error = np.abs(np.array(marker.voxel) - centre[:3])
            assert error.max() <= 0.51 and np.sort(error)[1] <= 0.05, (uid, marker.voxel, centre)
            assert _vessel_bright(volume, marker.voxel), (uid, truth["modality"], marker.voxel)
        # the axial slice goes through the first localizer, and its mark sits at that (row, column) = (y, x)
        first = result.markers[0].voxel
        assert result.slice_index == int(round(first[0]))
        assert result.panel_points["axial slice"][0] == pytest.approx((first[1], first[2]))
        assert result.panel_points["coronal MIP"][0] == pytest.approx((first[0], first[2]))
        assert result.panel_points["sagittal MIP"][0] == pytest.approx((first[0], first[1]))
        # the drawn ROI box is preprocess's box
        expected_box = prepare_series(volume, DataConfig()).roi_box
        assert np.allclose(result.roi_box, expected_box)


def test_view_cli_point_and_errors(tiny_competition, tmp_path, capsys):
    uid = _bright_positive_series(tiny_competition)[0]["series_uid"]
    out = tmp_path / "view.png"
    assert main(["view", "--data-dir", str(tiny_competition), "--series", uid, "--out", str(out),
                 "--point", "3,40,50", "--no-roi"]) == 0
    assert out.is_file() and "axial slice 3" in capsys.readouterr().out
    assert main(["view", "--data-dir", str(tiny_competition), "--series", uid, "--out", str(out),
                 "--point", "9999,1,1"]) == 2
    assert "outside" in capsys.readouterr().err
    assert main(["view", "--data-dir", str(tiny_competition), "--series", "1.2.3.nope", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_gallery_shows_worst_mistakes_and_peak_slice(tiny_competition, tmp_path):
    labels = pl.read_csv(tiny_competition / "train.csv")
    truth = labels[PRESENT_COL].to_numpy()
    # negatives get high probabilities ordered by row, positives low ones: the worst of each kind is known
    prob = np.where(truth == 1, 0.05 + 0.01 * np.arange(labels.height), 0.95 - 0.01 * np.arange(labels.height))
    run = tmp_path / "run"
    run.mkdir()
    pl.DataFrame({ID_COL: labels[ID_COL], "fold": np.arange(labels.height) % 2,
                  **{c: prob for c in LABEL_COLS}}).write_parquet(run / "oof.parquet")
    worst_fp = labels[ID_COL][int(np.flatnonzero(truth == 0)[0])]
    worst_fn = labels[ID_COL][int(np.flatnonzero(truth == 1)[0])]

    shown = render_gallery(run, tiny_competition / "train.csv", tiny_competition, tmp_path / "g.png", n=1)
    kinds = {t["kind"]: t for t in shown["tiles"]}
    assert kinds["false positive"][ID_COL] == worst_fp and kinds["false negative"][ID_COL] == worst_fn
    assert "no per-slice scores" in kinds["false negative"]["slice_from"]
    assert kinds["false negative"]["markers"] >= 1
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"

    # with per-slice scores, the shown slice is the peak ROI slice mapped back to the source volume
    pl.DataFrame({ID_COL: [worst_fn] * 3, "roi_z": [2, 20, 9], "score": [0.1, 0.9, 0.3]}).write_parquet(
        run / SLICE_SCORES_FILE)
    shown = render_gallery(run, tiny_competition / "train.csv", tiny_competition, tmp_path / "g2.png", n=1)
    tile = {t["kind"]: t for t in shown["tiles"]}["false negative"]
    assert "peak per-slice score" in tile["slice_from"]
    volume = load_series(tiny_competition / "series" / worst_fn)
    prepared = prepare_series(volume, DataConfig())
    peak_lps_z = (prepared.affine @ np.array([20, 0, 0, 1.0]))[2]  # LPS z (superior) of ROI slice 20
    shown_lps_z = (volume.affine @ np.array([tile["slice"], 0, 0, 1.0]))[2]
    assert abs(peak_lps_z - shown_lps_z) <= 0.51 * float(volume.spacing[0]) + 1e-6
