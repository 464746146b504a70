"""The learned CoW locator learns on a few synthetic series and falls back when unsure."""

import logging

import numpy as np
import pytest

from kaggle_utils.config import DataConfig
from kaggle_utils.dicom import load_series
from kaggle_utils.locator_learned import (
    LearnedLocator,
    load_locator,
    make_sample,
    predict_centre,
    save_locator,
    synth_cow_centre_lps,
    train_locator,
)
from kaggle_utils.roi import get_locator
from kaggle_utils.synth.series import make_series


@pytest.fixture(scope="module")
def synth_volumes(tmp_path_factory):
    d = tmp_path_factory.mktemp("loc")
    out = []
    for i, mod in enumerate(("CTA", "MRI T2", "CTA", "MRI T1post")):
        t = make_series(d, modality=mod, image_size=64, n_slices=40, seed=(i, 7))
        out.append((load_series(t["path"]), synth_cow_centre_lps(t["pose"])))
    return out


def test_learns_below_predict_the_mean_baseline(synth_volumes, tmp_path):
    samples = [make_sample(v, c) for v, c in synth_volumes]
    model, losses = train_locator(samples, steps=60, lr=5e-3, batch_size=4, device="cpu", width=8)
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    # Error on the training series below the trivial "predict the mean target" baseline.
    targets = np.stack([s.target_unit for s in samples])
    half = np.stack([s.half_extent_mm for s in samples])
    baseline = np.mean(np.abs(targets - targets.mean(0)) * half)
    path = tmp_path / "loc.pt"
    save_locator(model, path)
    reloaded = load_locator(path)
    errs = []
    for (v, c), s in zip(synth_volumes, samples, strict=True):
        vox, _ = predict_centre(reloaded, v)
        errs.append(np.mean(np.abs((vox - v.lps_to_voxel(c)[0]) * np.asarray(v.spacing))))
    assert np.mean(errs) < baseline


def test_falls_back_with_a_note_when_unsure(synth_volumes, caplog):
    v, _ = synth_volumes[0]
    cfg = DataConfig()
    with caplog.at_level(logging.INFO, logger="kaggle_utils.locator_learned"):
        box = LearnedLocator().locate(v, cfg)  # no weights configured
    assert box.locator == get_locator("heuristic").locate(v, cfg).locator
    assert any("fell back to 'heuristic'" in n for n in box.notes)
    assert "fell back" in caplog.text
    # An untrained model has a flat heatmap: its peak mass is below the threshold, so it also falls back.
    model, _ = train_locator([make_sample(v, np.zeros(3))], steps=0, device="cpu", width=8)
    box = LearnedLocator(model).locate(v, cfg)
    assert box.locator != "learned" and "peak mass" in box.notes[-1]
