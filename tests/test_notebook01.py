"""Notebook 01 runs headless on the tiny synthetic competition and leaves a readable cache."""

from __future__ import annotations

import nbformat
import numpy as np
from nbclient import NotebookClient

from kaggle_utils.cache import load_cache_entry, read_manifest
from kaggle_utils.paths import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "01_preprocess.ipynb"


def test_notebook_is_thin_and_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(nb.cells) <= 10
    assert all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_builds_a_cache(tiny_competition, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_UTILS_DATA_DIR", str(tiny_competition))
    monkeypatch.setenv("KAGGLE_UTILS_WORK_DIR", str(tmp_path))
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(tmp_path / "input"))  # no Kaggle datasets attached
    monkeypatch.setenv("KAGGLE_UTILS_WORKERS", "2")  # the process-pool path
    monkeypatch.setenv("KAGGLE_UTILS_LIMIT", "3")
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "projected cache size" in text and "3 processed" in text
    manifest = read_manifest(tmp_path / "cache")
    assert manifest.height == 3 and manifest["status"].to_list() == ["ok"] * 3
    for uid in manifest["SeriesInstanceUID"]:
        assert load_cache_entry(tmp_path / "cache", uid)["image"].dtype == np.uint8


