"""The notebook bootstrap: the wheel set for the running Python is installed offline (each of 3.11 / 3.12 picks its
own), a Python without a set stops with an error naming it, the sets found and the rebuild command, the kit's folder
goes on sys.path and the notebook settings come from the package, not the notebooks."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from kaggle_utils import kaggle_env, paths

FAKE_PIP = """#!{python}
import sys
with open(sys.argv[0] + ".log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
sys.exit({exit_code})
"""


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def wheels_dataset(folder: Path, tags=("cp311", "cp312")) -> Path:
    touch(folder / "kaggle_wheels.txt", "pydicom==3.0.2\n")
    for tag in tags:
        touch(folder / tag / f"python_gdcm-3.2.6-{tag}-{tag}-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl")
        touch(folder / tag / "pydicom-3.0.2-py3-none-any.whl")
    return folder


@pytest.fixture()
def fake_pip(tmp_path, monkeypatch):
    def make(exit_code: int = 0) -> Path:
        pip = touch(tmp_path / "bin" / "pip", FAKE_PIP.format(python=sys.executable, exit_code=exit_code))
        pip.chmod(0o755)
        monkeypatch.setattr(kaggle_env, "PIP_COMMAND", (str(pip),))
        return Path(str(pip) + ".log")

    return make


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE", "KAGGLE_UTILS_INPUT_DIR", "KAGGLE_UTILS_DATA_DIR",
                 "KAGGLE_UTILS_WORKERS", "KAGGLE_UTILS_SHARD", "KAGGLE_UTILS_LIMIT", "KAGGLE_UTILS_CONFIG",
                 "KAGGLE_UTILS_RUN_NAME", "KAGGLE_UTILS_FOLD", "KAGGLE_UTILS_TRAIN_OVERRIDES"):
        monkeypatch.delenv(name, raising=False)


def test_python_tags():
    assert kaggle_env.python_tag("3.11") == "cp311" and kaggle_env.python_tag((3, 12)) == "cp312"
    assert kaggle_env.python_tag() == f"cp{sys.version_info.major}{sys.version_info.minor}"
    with pytest.raises(ValueError, match="must look like 3.12"):
        kaggle_env.python_tag("py3")


@pytest.mark.parametrize("running", [(3, 11, 13), (3, 12, 11)])
def test_on_kaggle_each_python_installs_its_own_set(tmp_path, monkeypatch, fake_pip, running):
    root = tmp_path / "input"
    wheels = wheels_dataset(root / "datasets" / "alice" / "rsna-iad-kit-wheels")
    log = fake_pip()
    monkeypatch.setattr(kaggle_env, "running_python", lambda: running)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(root))
    env = kaggle_env.bootstrap()
    tag = f"cp{running[0]}{running[1]}"
    assert log.read_text().splitlines() == [
        f"install --no-index --find-links {wheels / tag} -r {wheels / 'kaggle_wheels.txt'}"]
    assert env.wheels_dir == wheels / tag and env.on_kaggle and env.python == ".".join(map(str, running))
    assert str(kaggle_env.Path(kaggle_env.__file__).resolve().parent.parent) in sys.path


def test_a_python_without_wheels_stops_with_what_to_do(tmp_path, monkeypatch, fake_pip):
    root = tmp_path / "input"
    wheels_dataset(root / "rsna-iad-kit-wheels", tags=("cp311",))  # built before Kaggle moved to 3.12
    log = fake_pip()
    monkeypatch.setattr(kaggle_env, "running_python", lambda: (3, 12, 11))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(root))
    with pytest.raises(kaggle_env.BootstrapError) as err:
        kaggle_env.bootstrap()
    msg = str(err.value)
    assert "no wheels for Python 3.12.11 (cp312)" in msg
    assert "wheel sets found: cp311 (2 wheels)" in msg
    assert 'List "3.12" in wheels.python_versions of kaggle.yaml' in msg
    assert "python submit.py wheels && python submit.py push wheels" in msg
    assert not log.exists()  # nothing was installed


def test_a_failed_install_and_a_missing_wheels_dataset_are_clear(tmp_path, monkeypatch, fake_pip):
    root = tmp_path / "input"
    touch(root / "competitions" / paths.COMPETITION_SLUG / "train.csv")
    (root / "competitions" / paths.COMPETITION_SLUG / "series").mkdir()
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(root))
    with pytest.raises(paths.PathError, match=r"no offline wheels .* found \(attach the wheels dataset") as err:
        kaggle_env.bootstrap()
    assert f"competitions/{paths.COMPETITION_SLUG} (competition)" in str(err.value)
    wheels_dataset(root / "rsna-iad-kit-wheels", tags=(kaggle_env.python_tag(),))
    fake_pip(exit_code=1)
    with pytest.raises(kaggle_env.BootstrapError, match="offline install of .* failed \\(exit 1\\)"):
        kaggle_env.bootstrap()


def test_off_kaggle_nothing_is_installed_and_settings_come_from_the_package(tmp_path, monkeypatch, fake_pip):
    log = fake_pip()
    monkeypatch.setenv("KAGGLE_UTILS_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("KAGGLE_UTILS_WORKERS", "3")
    monkeypatch.setenv("KAGGLE_UTILS_SHARD", "1/2")
    monkeypatch.setenv("KAGGLE_UTILS_LIMIT", "5")
    monkeypatch.setenv("KAGGLE_UTILS_CONFIG", "configs/cpu_tiny.yaml")
    monkeypatch.setenv("KAGGLE_UTILS_RUN_NAME", "exp2")
    monkeypatch.setenv("KAGGLE_UTILS_FOLD", "0")
    monkeypatch.setenv("KAGGLE_UTILS_TRAIN_OVERRIDES", "train.epochs=3 'model.backbone=lcnet_035'")
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", "/elsewhere")  # replaced by the argument (and restored afterwards)
    env = kaggle_env.bootstrap(input_dir=tmp_path / "input")
    assert paths.input_root() == tmp_path / "input"  # the package's later look-ups search the same root
    assert not log.exists() and env.wheels_dir is None and not env.on_kaggle
    assert (env.workers, env.shard, env.limit, env.run_name, env.fold) == (3, "1/2", 5, "exp2", "0")
    assert env.train_overrides == ["train.epochs=3", "model.backbone=lcnet_035"]
    assert env.config_path() == paths.REPO_ROOT / "configs" / "cpu_tiny.yaml"
    assert env.work_dir == tmp_path / "work" and env.input_dir == tmp_path / "input"
    with pytest.raises(paths.PathError, match="no competition data"):  # resolved on use, with what was found
        env.data_dir
    monkeypatch.delenv("KAGGLE_UTILS_CONFIG")
    monkeypatch.setenv("KAGGLE_UTILS_LIMIT", "many")
    with pytest.raises(kaggle_env.BootstrapError, match="KAGGLE_UTILS_LIMIT='many' must be a whole number"):
        kaggle_env.bootstrap()
    monkeypatch.delenv("KAGGLE_UTILS_LIMIT")
    env = kaggle_env.bootstrap()
    assert env.config_path() is None and env.limit is None
    assert env.config_path(default="configs/kaggle_t4.yaml") == paths.REPO_ROOT / "configs" / "kaggle_t4.yaml"
    assert "python " in repr(env) and "inputs" in repr(env)


def test_kaggle_env_imports_only_the_standard_library_at_module_level():
    """It runs before the wheels it installs: a module-level third-party import would fail on a bare image."""
    tree = ast.parse(Path(kaggle_env.__file__).read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    modules = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert top <= set(sys.stdlib_module_names), top
    assert {m.split(".")[0] for m in modules} - {"__future__", "kaggle_utils"} <= set(sys.stdlib_module_names)
    assert {m for m in modules if m.startswith("kaggle_utils")} <= {"kaggle_utils", "kaggle_utils.errors"}


def test_requirements_install_the_kit_and_its_console_script():
    """`pip install -r requirements.txt` installs the kit itself (editable: it reads configs/ beside the package),
    with the `kaggle-utils` console script on the CLI's entry point."""
    import tomllib

    from kaggle_utils import cli

    lines = [ln.strip() for ln in (paths.REPO_ROOT / "requirements.txt").read_text().splitlines()]
    assert "-e ." in lines
    project = tomllib.loads((paths.REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "kaggle_utils" and project["scripts"] == {"kaggle-utils": "kaggle_utils.cli:main"}
    assert callable(cli.main)
    pinned = {ln.split("==")[0].lower() for ln in lines if "==" in ln}
    assert {d.lower() for d in project["dependencies"]} <= pinned  # every declared dependency has its tested pin
