"""Every notebook is thin (it only calls the package), committed without outputs, and starts with the same bootstrap
cell; notebook 00 runs headless as on Kaggle (nested input layout, offline wheel install for this Python)."""

import json
import sys

import pytest
from notebook_runner import execute_notebook

from kaggle_utils.kaggle_env import python_tag
from kaggle_utils.paths import COMPETITION_SLUG, REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def code_cells(path):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


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
    assert "subprocess" not in source and "pip" not in source  # installs happen in kaggle_env.bootstrap
    # No notebook reads its own settings: the KAGGLE_UTILS_* variables are read by the package (the bootstrap cell
    # reads only the input root, to find the code before it can be imported).
    assert source.count("os.environ") == 1 and source.count("KAGGLE_UTILS_") == 1


def test_every_notebook_starts_with_the_same_bootstrap_cell():
    first = {p.name: code_cells(p)[0] for p in NOTEBOOKS}
    assert len(set(first.values())) == 1, "the bootstrap cell differs between notebooks"
    cell = first["00_eda.ipynb"]
    assert "from kaggle_utils.kaggle_env import bootstrap" in cell and "env = bootstrap()" in cell
    assert "/datasets/*/*/" in cell  # the nested dataset layout is searched for the code, not only /<slug>
    for path in NOTEBOOKS:
        assert all("bootstrap(" not in c for c in code_cells(path)[1:]), path.name


def test_notebook00_runs_headless_as_on_kaggle(tiny_competition, tmp_path, monkeypatch):
    """Today's Kaggle layout: competition under competitions/<slug>, datasets under datasets/<owner>/<slug>; the
    bootstrap finds the code, installs the wheel set of this Python (a pip dry run: every pin is already here) and
    the notebook finds the competition by its files."""
    inputs = tmp_path / "input"
    (inputs / "competitions").mkdir(parents=True)
    (inputs / "competitions" / COMPETITION_SLUG).symlink_to(tiny_competition, target_is_directory=True)
    (inputs / "datasets" / "alice").mkdir(parents=True)
    (inputs / "datasets" / "alice" / "rsna-iad-kit-code").symlink_to(REPO_ROOT, target_is_directory=True)
    wheels = inputs / "datasets" / "alice" / "rsna-iad-kit-wheels"
    (wheels / python_tag()).mkdir(parents=True)
    (wheels / "kaggle_wheels.txt").write_text((REPO_ROOT / "kaggle_wheels.txt").read_text())
    (wheels / python_tag() / "pydicom-3.0.2-py3-none-any.whl").write_text("never read: the pin is satisfied")
    work = tmp_path / "work"
    work.mkdir()
    for name in ("KAGGLE_UTILS_DATA_DIR", "KAGGLE_URL_BASE", "KAGGLE_IS_COMPETITION_RERUN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")  # as on Kaggle: the bootstrap installs the wheels
    monkeypatch.setenv("PIP_DRY_RUN", "1")  # belt and braces: the test never changes the interpreter's packages
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(inputs))
    monkeypatch.setenv("KAGGLE_UTILS_WORK_DIR", str(work))
    nb, text = execute_notebook("00_eda.ipynb", work, timeout=240)
    boot = nb.cells[1].outputs
    shown = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in boot)
    assert f"--find-links {wheels / python_tag()}" in shown
    assert f"python {sys.version_info.major}.{sys.version_info.minor}" in shown
    assert f"competitions/{COMPETITION_SLUG} (competition)" in shown
    assert (work / "eda" / "eda.html").is_file() and (work / "eda" / "example_series.png").is_file()
