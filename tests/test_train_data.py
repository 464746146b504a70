"""Training data: L/R flip label swap, augmentation geometry, z-crops, folds, samplers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from kaggle_utils.config import AugConfig, TrainConfig
from kaggle_utils.schema import ID_COL, LABEL_COLS, LOCATION_COLS, MODALITIES, PRESENT_COL
from kaggle_utils.train.dataset import (
    augment,
    epoch_batches,
    epoch_order,
    inplane_affine,
    inplane_crop,
    lr_flip,
    z_crop,
)
from kaggle_utils.train.folds import FoldError, make_folds, read_folds, stratification_matrix, write_folds

PAIRS = [(c, "Right " + c[5:]) for c in LABEL_COLS if c.startswith("Left ")]
MIDLINE = [c for c in LABEL_COLS if not c.startswith(("Left ", "Right "))]


def test_lr_flip_swaps_exactly_the_paired_labels_and_points():
    target = np.arange(len(LABEL_COLS), dtype=np.float32)  # every column distinguishable
    image = np.zeros((2, 4, 8, 10), dtype=np.uint8)
    image[:, 1, 2, 1] = 200  # a bright voxel on the patient's right side (low x)
    loc = LOCATION_COLS.index("Left Middle Cerebral Artery")
    points = np.array([[loc, 1.0, 2.0, 1.0]], dtype=np.float32)
    flipped, fpoints, ftarget = lr_flip(image, points, target)
    assert len(PAIRS) == 5 and len(MIDLINE) == 4  # 5 L/R pairs; ACom, basilar, other posterior, present
    for left, right in PAIRS:
        assert ftarget[LABEL_COLS.index(left)] == target[LABEL_COLS.index(right)]
        assert ftarget[LABEL_COLS.index(right)] == target[LABEL_COLS.index(left)]
    for col in MIDLINE:
        assert ftarget[LABEL_COLS.index(col)] == target[LABEL_COLS.index(col)]
    assert flipped[0, 1, 2, 8] == 200 and flipped[0, 1, 2, 1] == 0
    assert fpoints[0, 0] == LOCATION_COLS.index("Right Middle Cerebral Artery")
    assert fpoints[0, 3] == 8.0  # x mirrored: 10 - 1 - 1
    back_image, back_points, back_target = lr_flip(flipped, fpoints, ftarget)
    assert np.array_equal(back_image, image) and np.array_equal(back_points, points)
    assert np.array_equal(back_target, target)


def test_rotation_and_zoom_move_points_with_the_image():
    image = np.zeros((1, 3, 48, 48), dtype=np.uint8)
    image[0, 1, 9:12, 29:32] = 255  # a small bright blob centred at (y=10, x=30)
    points = np.array([[0, 1.0, 10.0, 30.0]], dtype=np.float32)
    out, moved = inplane_affine(image, points, angle_deg=25.0, zoom=1.15)
    y, x = np.unravel_index(np.argmax(out[0, 1]), out.shape[-2:])
    assert abs(y - moved[0, 2]) <= 1.5 and abs(x - moved[0, 3]) <= 1.5
    assert abs(moved[0, 2] - 10.0) + abs(moved[0, 3] - 30.0) > 3  # it did move


def test_augment_with_flip_always_swaps_labels():
    aug = AugConfig(lr_flip_p=1.0, rotate_deg=0.0, scale=0.0, intensity_jitter=0.0)
    target = np.zeros(len(LABEL_COLS), dtype=np.float32)
    target[LABEL_COLS.index("Left Supraclinoid Internal Carotid Artery")] = 1
    target[LABEL_COLS.index(PRESENT_COL)] = 1
    image = np.random.default_rng(0).integers(0, 255, (2, 4, 8, 8), dtype=np.uint8)
    _, _, out = augment(image, np.zeros((0, 4), np.float32), target, aug, np.random.default_rng(1))
    assert out[LABEL_COLS.index("Right Supraclinoid Internal Carotid Artery")] == 1
    assert out[LABEL_COLS.index("Left Supraclinoid Internal Carotid Artery")] == 0


def basilar_tip_sample(shape: tuple[int, ...], point_zyx: tuple[float, float, float]):
    """A blank uint8 volume with one Basilar Tip aneurysm point: (image, points, target, location index)."""
    target = np.zeros(len(LABEL_COLS), dtype=np.float32)
    loc = LOCATION_COLS.index("Basilar Tip")
    target[[loc, LABEL_COLS.index(PRESENT_COL)]] = 1
    return np.zeros(shape, dtype=np.uint8), np.array([[loc, *point_zyx]], dtype=np.float32), target, loc


def test_z_crop_keeps_positive_in_crop_and_relabels_outside():
    image, points, target, loc = basilar_tip_sample((1, 20, 4, 4), (15.0, 2.0, 2.0))
    crop, cpts, ctarget = z_crop(image, points, target, 6, pos_crop_p=1.0, rng=np.random.default_rng(0))
    assert crop.shape == (1, 6, 4, 4) and ctarget[loc] == 1 and 0 <= cpts[0, 1] < 6
    misses = 0
    for seed in range(30):  # never centred on the point: the label follows whether the point is inside
        crop, cpts, ctarget = z_crop(image, points, target, 6, pos_crop_p=0.0, rng=np.random.default_rng(seed))
        assert ctarget[loc] == float(len(cpts) == 1) == ctarget[LABEL_COLS.index(PRESENT_COL)]
        misses += len(cpts) == 0
    assert misses > 0
    # crops of other series are centred on the given localizer depths (the anatomy positives show)
    for seed in range(10):
        crop, _, _ = z_crop(np.arange(20, dtype=np.uint8).reshape(1, 20, 1, 1).repeat(4, 2).repeat(4, 3),
                            np.zeros((0, 4), np.float32), target, 6, 1.0, np.random.default_rng(seed),
                            other_z=np.array([15.0]))
        assert 15 in crop[0, :, 0, 0]


def test_inplane_crop_holds_the_point_shifts_it_and_reports_its_origin():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (2, 3, 40, 50), dtype=np.uint8)
    target = np.zeros(len(LABEL_COLS), dtype=np.float32)
    loc = LOCATION_COLS.index("Anterior Communicating Artery")
    target[[loc, LABEL_COLS.index(PRESENT_COL)]] = 1
    points = np.array([[loc, 1.0, 30.0, 8.0]], dtype=np.float32)
    for seed in range(20):
        crop, cpts, ctarget, (y0, x0) = inplane_crop(image, points, target, 16, 1.0, np.random.default_rng(seed))
        assert crop.shape == (2, 3, 16, 16)
        assert np.array_equal(crop, image[:, :, y0 : y0 + 16, x0 : x0 + 16])  # the origin names the crop exactly
        assert ctarget[loc] == 1 and np.allclose(cpts[0, 2:], [30.0 - y0, 8.0 - x0])
        assert 0 <= cpts[0, 2] < 16 and 0 <= cpts[0, 3] < 16


def test_inplane_crop_elsewhere_relabels_and_centres_on_other_sites():
    image, points, target, loc = basilar_tip_sample((1, 2, 64, 64), (0.0, 5.0, 5.0))
    # never centred on its own point and a site far from it: the point falls outside, the sample becomes negative
    crop, cpts, ctarget, (y0, x0) = inplane_crop(image, points, target, 16, 0.0, np.random.default_rng(3),
                                                 other_yx=np.array([[48.0, 40.0]]))
    assert len(cpts) == 0 and ctarget[loc] == 0 and ctarget[LABEL_COLS.index(PRESENT_COL)] == 0
    assert y0 <= 48 < y0 + 16 and x0 <= 40 < x0 + 16  # the other site lies in the crop (jitter <= a quarter)
    # size 0 or the whole slice: unchanged, origin 0
    same, _, same_t, origin = inplane_crop(image, points, target, 0, 1.0, np.random.default_rng(0))
    assert same is image and origin == (0, 0) and np.array_equal(same_t, target)


def _labels(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    locs = (rng.random((n, len(LOCATION_COLS))) < 0.08).astype(np.int64)
    present = locs.max(axis=1)
    return pl.DataFrame({ID_COL: [f"1.2.{i}" for i in range(n)], "Modality": rng.choice(MODALITIES, n).tolist(),
                         **{c: locs[:, j] for j, c in enumerate(LOCATION_COLS)}, PRESENT_COL: present})


def test_folds_are_stratified_deterministic_and_roundtrip(tmp_path):
    labels = _labels(400)
    folds = make_folds(labels, 5, seed=3)
    assert folds[ID_COL].to_list() == labels[ID_COL].to_list()
    assert sorted(set(folds["fold"].to_list())) == [0, 1, 2, 3, 4]
    y = stratification_matrix(labels)
    f = folds["fold"].to_numpy()
    per_fold = np.stack([y[f == k].sum(axis=0) for k in range(5)])
    spread = per_fold.max(axis=0) - per_fold.min(axis=0)
    assert (spread <= np.maximum(2, 0.15 * y.sum(axis=0) / 5)).all()  # every label (and modality) spread evenly
    assert (spread[: len(LOCATION_COLS)] <= 2).all()  # the rare locations almost exactly
    assert np.bincount(f).max() - np.bincount(f).min() <= 2
    assert make_folds(labels, 5, seed=3).equals(folds)
    path = write_folds(folds, tmp_path / "folds.csv")
    assert read_folds(path, 5).equals(folds)
    with pytest.raises(FoldError, match="train.n_folds=4"):
        read_folds(path, 4)
    with pytest.raises(FoldError, match="does not exist"):
        read_folds(tmp_path / "missing.csv", 5)


def test_subset_sampler_and_hard_negatives():
    labels = _labels(300, seed=1)
    targets = labels.select(list(LABEL_COLS)).to_numpy().astype(np.float32)
    mods = labels["Modality"].to_list()
    present = targets[:, -1] > 0
    cfg = TrainConfig(subset_pos_rate=0.8)
    order = epoch_order(len(targets), targets, mods, cfg, seed=0, epoch=0)
    assert set(np.flatnonzero(present)) <= set(order.tolist())  # all positives
    assert abs(present[order].mean() - 0.8) < 0.02
    assert not np.array_equal(order, epoch_order(len(targets), targets, mods, cfg, seed=0, epoch=1))
    assert np.array_equal(order, epoch_order(len(targets), targets, mods, cfg, seed=0, epoch=0))
    hard = np.zeros(len(targets), np.float32)
    hardest = np.flatnonzero(~present)[:5]
    hard[hardest] = 10.0
    cfg = TrainConfig(hard_negative_factor=20.0)
    order = epoch_order(len(targets), targets, mods, cfg, seed=0, epoch=0, hard_scores=hard)
    counts = np.bincount(order, minlength=len(targets))
    assert counts[hardest].mean() > 3 * counts[np.flatnonzero(~present)[5:]].mean()
    # epoch_repeats: every series visited exactly that many times per epoch
    order = epoch_order(len(targets), targets, mods, TrainConfig(epoch_repeats=3), seed=0, epoch=0)
    assert len(order) == 3 * len(targets) and (np.bincount(order, minlength=len(targets)) == 3).all()
    batches = epoch_batches(np.arange(10), 4, seed=0, epoch=0, rank=1, world=2)
    assert [p for b in batches for p, _ in b] == [1, 3, 5, 7]  # rank 1's share, ragged batch dropped


def test_folds_of_a_read_only_cache_go_to_the_work_dir_once(tmp_path, monkeypatch):
    from kaggle_utils.train import folds as folds_module

    cache, work = tmp_path / "cache", tmp_path / "work"
    cache.mkdir()
    work.mkdir()
    monkeypatch.setenv("KAGGLE_UTILS_WORK_DIR", str(work))
    real_access = folds_module.os.access
    monkeypatch.setattr(folds_module.os, "access",
                        lambda p, mode: False if Path(p) == cache else real_access(p, mode))  # a Kaggle input mount
    labels = _labels(60)
    path = folds_module.ensure_folds(cache, labels, 3, seed=1)
    assert path == work / "folds.csv" and not (cache / "folds.csv").exists()
    first = path.read_bytes()
    assert folds_module.ensure_folds(cache, _labels(60, seed=9), 3, seed=2) == path  # reused, not rewritten
    assert path.read_bytes() == first


def test_preloaded_dataset_gives_the_same_samples_with_the_crop_origin(tiny_cache):
    from kaggle_utils.config import load_config
    from kaggle_utils.train.dataset import SeriesDataset, open_training_cache

    cfg = load_config(None, ["data.roi_locator=heuristic", "train.crop_slices=8", "train.crop_inplane=48"])
    cache = open_training_cache(tiny_cache, cfg)
    rows = list(range(len(cache.uids)))
    from_disk = SeriesDataset(cache, rows, cfg, train=True)
    in_memory = SeriesDataset(cache, rows, cfg, train=True)
    in_memory.preload()
    assert len(in_memory.images) == len(rows)
    for pos in rows:
        a, b = from_disk[(pos, 100 + pos)], in_memory[(pos, 100 + pos)]
        assert a["image"].shape == (2, 8, 48, 48)
        for key in ("image", "target", "points", "origin"):
            assert torch.equal(a[key], b[key])
        z0, y0, x0 = (int(v) for v in a["origin"])
        full_z, full_y, full_x = cfg.data.out_shape
        assert 0 <= z0 <= full_z - 8 and 0 <= y0 <= full_y - 48 and 0 <= x0 <= full_x - 48
    assert from_disk[(0, None)]["origin"].tolist() == [0.0, 0.0, 0.0]  # validation: the whole ROI
