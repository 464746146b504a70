"""Notebook 01 runs headless on the tiny synthetic competition and leaves a readable cache."""

from __future__ import annotations

import numpy as np
from notebook_runner import execute_notebook

from kaggle_utils.cache import load_cache_entry, read_manifest


def test_notebook_builds_a_cache(tiny_competition, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_UTILS_DATA_DIR", str(tiny_competition))
    monkeypatch.setenv("KAGGLE_UTILS_WORK_DIR", str(tmp_path))
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(tmp_path / "input"))  # no Kaggle datasets attached
    monkeypatch.setenv("KAGGLE_UTILS_WORKERS", "2")  # the process-pool path
    monkeypatch.setenv("KAGGLE_UTILS_LIMIT", "3")
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    _, text = execute_notebook("01_preprocess.ipynb", tmp_path)
    assert "projected cache size" in text and "3 processed" in text
    manifest = read_manifest(tmp_path / "cache")
    assert manifest.height == 3 and manifest["status"].to_list() == ["ok"] * 3
    for uid in manifest["SeriesInstanceUID"]:
        assert load_cache_entry(tmp_path / "cache", uid)["image"].dtype == np.uint8


