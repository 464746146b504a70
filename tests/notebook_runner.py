"""Shared by the notebook tests: execute a notebook headless in a fresh kernel."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from kaggle_utils.paths import REPO_ROOT


def execute_notebook(name: str, cwd, timeout: int = 300):
    """Run ``notebooks/<name>`` headless in a fresh kernel (cwd = ``cwd``); returns the executed notebook and the
    text of all its outputs."""
    nb = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    return nb, text
