"""Every notebook is thin (it only calls the package) and committed without outputs."""

import json

import pytest

from kaggle_utils.paths import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_the_four_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["00_eda.ipynb", "01_preprocess.ipynb", "02_train.ipynb",
                                           "03_inference.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_clean(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert len(cells) < 10
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    source = "\n".join("".join(c["source"]) for c in code)
    assert "import kaggle_utils" in source or "from kaggle_utils" in source
    assert "def " not in source and "class " not in source  # logic lives in the package
