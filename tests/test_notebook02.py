"""Notebook 02 runs headless on the tiny synthetic cache and leaves a loadable run folder."""

from __future__ import annotations

import shutil

from notebook_runner import execute_notebook

from kaggle_utils.train.runs import load_run

TINY = ("model.backbone=lcnet_035 model.image_size=32 model.seq_hidden=16 model.head_dim=8 model.slice_stride=4 "
        "train.crop_slices=8 train.batch_size=2 train.num_workers=0 train.n_folds=2 train.epochs=1 "
        "train.max_train_minutes=0 train.epoch_repeats=1")


def test_notebook_trains_a_run(tiny_cache, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)  # the run writes its fold file into the cache folder
    monkeypatch.setenv("KAGGLE_UTILS_CACHE_DIR", str(cache))
    monkeypatch.setenv("KAGGLE_UTILS_WORK_DIR", str(tmp_path))
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(tmp_path / "input"))  # no Kaggle datasets attached
    monkeypatch.setenv("KAGGLE_UTILS_CONFIG", "configs/cpu_tiny.yaml")
    monkeypatch.setenv("KAGGLE_UTILS_FOLD", "0")
    monkeypatch.setenv("KAGGLE_UTILS_TRAIN_OVERRIDES", TINY)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    _, text = execute_notebook("02_train.ipynb", tmp_path)
    assert "GPUs: 0" in text and '"oof"' in text
    run = tmp_path / "runs" / "baseline"
    loaded = load_run(run)
    assert [f for f, _ in loaded.models] == [0] and loaded.cfg.model.backbone == "lcnet_035"
    assert (run / "curves.png").is_file() and (run / "oof.parquet").is_file()
