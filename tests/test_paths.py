"""Input discovery: the competition, the code, the wheels, runs and caches are found by their files under every
layout Kaggle mounts inputs in (``<input>/<slug>``, ``<input>/datasets/<owner>/<slug>``,
``<input>/competitions/<slug>``), in fake input trees; a missing input is an error listing what was found."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaggle_utils import paths

COMP = paths.COMPETITION_SLUG


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def competition(folder: Path) -> Path:
    touch(folder / "train.csv", "SeriesInstanceUID\n1.2.3\n")
    (folder / "series" / "1.2.3").mkdir(parents=True)
    touch(folder / "series" / "1.2.3" / "a.dcm")
    return folder


def code(folder: Path) -> Path:
    touch(folder / "kaggle_utils" / "__init__.py", "")
    touch(folder / "configs" / "default.yaml")
    touch(folder / "kaggle_wheels.txt", "pydicom==3.0.2\n")  # the code dataset lists the wheels too
    return folder


def wheels(folder: Path, tags: tuple[str, ...] = ("cp311", "cp312")) -> Path:
    touch(folder / "kaggle_wheels.txt", "pydicom==3.0.2\n")
    for tag in tags:
        touch(folder / tag / "pydicom-3.0.2-py3-none-any.whl")
    return folder


def run(folder: Path) -> Path:
    touch(folder / "config.yaml", "name: x\n")
    touch(folder / "fold0" / "model.pt")
    return folder


def cache(folder: Path) -> Path:
    touch(folder / "manifest.parquet")
    return folder


LAYOUTS = {
    # Classic: every input at /kaggle/input/<slug>.
    "flat": {"competition": COMP, "code": "rsna-iad-kit-code", "wheels": "rsna-iad-kit-wheels",
             "run": "rsna-iad-run-baseline", "cache": "rsna-iad-kit-cache"},
    # Newer sessions: datasets under datasets/<owner>/<slug>, the competition under competitions/<slug>.
    "nested": {"competition": f"competitions/{COMP}", "code": "datasets/alice/rsna-iad-kit-code",
               "wheels": "datasets/alice/rsna-iad-kit-wheels", "run": "datasets/alice/rsna-iad-run-baseline",
               "cache": "datasets/alice/rsna-iad-kit-cache"},
    # Mixed: the competition still flat, datasets nested, and a notebook output kept as a dataset (cache/ inside).
    "mixed": {"competition": COMP, "code": "datasets/alice/rsna-iad-kit-code", "wheels": "rsna-iad-kit-wheels",
              "run": "datasets/bob/my-runs/runs/baseline", "cache": "datasets/alice/rsna-iad-kit-cache/cache"},
}
MAKERS = {"competition": competition, "code": code, "wheels": wheels, "run": run, "cache": cache}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for name in ("KAGGLE_UTILS_INPUT_DIR", "KAGGLE_UTILS_DATA_DIR", "KAGGLE_UTILS_CACHE_DIR", "KAGGLE_UTILS_RUNS",
                 "KAGGLE_EVALUATION_DIR", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE", "KAGGLE_UTILS_SHARE_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_input_is_found_by_its_files_in_each_layout(tmp_path, monkeypatch, layout):
    root = tmp_path / "input"
    made = {kind: MAKERS[kind](root / rel) for kind, rel in LAYOUTS[layout].items()}
    touch(root / "datasets" / "carol" / "unrelated" / "notes.txt")  # an attachment the kit does not know
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(root))
    for kind, folder in made.items():
        assert paths.find_inputs(kind) == [folder], kind
    # The public resolvers use the discovery when no argument or variable is given.
    assert paths.data_dir() == made["competition"]
    assert paths.cache_dir() == made["cache"]
    assert paths.run_dirs() == [made["run"]]
    # An explicit root argument gives the same answer without the variable.
    monkeypatch.delenv("KAGGLE_UTILS_INPUT_DIR")
    assert paths.find_input("wheels", root) == made["wheels"]


def test_slug_alone_is_not_enough_and_markers_decide(tmp_path):
    root = tmp_path / "input"
    (root / COMP).mkdir(parents=True)  # the competition's slug, but no train.csv / series/
    touch(root / "rsna-iad-kit-wheels" / "kaggle_wheels.txt")  # a wheels list without any wheel
    code(root / "renamed-code-dataset")  # any slug: found by kaggle_utils/
    assert paths.find_inputs("competition", root) == []
    assert paths.find_inputs("wheels", root) == []  # neither the empty one nor the code dataset's list
    assert paths.find_inputs("code", root) == [root / "renamed-code-dataset"]


def test_missing_input_lists_what_was_found(tmp_path, monkeypatch):
    root = tmp_path / "input"
    code(root / "datasets" / "alice" / "rsna-iad-kit-code")
    run(root / "rsna-iad-run-baseline")
    touch(root / "other-thing" / "readme.md")
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(root))
    with pytest.raises(paths.PathError) as err:
        paths.data_dir()
    msg = str(err.value)
    assert "no competition data" in msg and "KAGGLE_UTILS_DATA_DIR" in msg
    assert "datasets/alice/rsna-iad-kit-code (code)" in msg
    assert "rsna-iad-run-baseline (run)" in msg
    assert "other-thing: nothing the kit recognises" in msg
    with pytest.raises(paths.PathError, match=r"no preprocessed cache \(manifest.parquet\) found"):
        paths.cache_dir()
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(tmp_path / "absent"))
    with pytest.raises(paths.PathError, match="absent does not exist"):
        paths.data_dir()


def test_two_caches_are_ambiguous_and_named(tmp_path, monkeypatch):
    root = tmp_path / "input"
    cache(root / "cache-a")
    cache(root / "datasets" / "alice" / "cache-b")
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(root))
    with pytest.raises(paths.PathError, match="2 folders hold preprocessed cache") as err:
        paths.cache_dir()
    assert "cache-a" in str(err.value) and "cache-b" in str(err.value)
    monkeypatch.setenv("KAGGLE_UTILS_CACHE_DIR", str(root / "cache-a"))  # the variable settles it
    assert paths.cache_dir() == root / "cache-a"


def test_several_runs_are_all_served_and_arguments_win(tmp_path, monkeypatch):
    root = tmp_path / "input"
    a, b = run(root / "rsna-iad-run-a"), run(root / "datasets" / "alice" / "rsna-iad-run-b")
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(root))
    assert paths.run_dirs() == sorted([a, b])
    monkeypatch.setenv("KAGGLE_UTILS_RUNS", str(a))
    assert paths.run_dirs() == [a]
    assert paths.run_dirs([b]) == [b]


def test_series_folders_are_never_walked(tmp_path, monkeypatch):
    """A competition mount is recognised at its top; its series/ (thousands of folders on Kaggle) is not entered."""
    root = tmp_path / "input"
    comp = competition(root / "competitions" / COMP)
    run(comp / "series" / "1.2.3" / "looks-like-a-run")  # would be found if series/ were searched
    visited = []
    real = paths._subdirs
    monkeypatch.setattr(paths, "_subdirs", lambda folder: visited.append(folder) or real(folder))
    assert paths.find_inputs("run", root) == []
    assert not [v for v in visited if "series" in v.parts]


def test_kaggle_evaluation_is_found_in_the_attached_competition(tmp_path, monkeypatch):
    root = tmp_path / "input"
    comp = root / "competitions" / COMP
    touch(comp / "kaggle_evaluation" / "rsna_inference_server.py", "")
    monkeypatch.setenv("KAGGLE_UTILS_INPUT_DIR", str(root))
    assert paths.find_inputs("competition") == [comp]
    assert paths.kaggle_evaluation_dir() == comp
    assert paths.kaggle_evaluation_dir(tmp_path / "elsewhere") == comp  # a wrong folder falls back to the attached


def test_serving_share_dir_follows_kaggle(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_UTILS_WORK_DIR", str(tmp_path))
    assert paths.serving_share_dir() == tmp_path / "shared"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    assert paths.serving_share_dir() == paths.KAGGLE_SHARED
    monkeypatch.setenv("KAGGLE_UTILS_SHARE_DIR", str(tmp_path / "s"))
    assert paths.serving_share_dir() == tmp_path / "s"


def test_paths_is_standard_library_only():
    """The bootstrap imports paths before the wheels are installed: no third-party import at module level."""
    import ast
    import sys

    tree = ast.parse(Path(paths.__file__).read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert top - {"__future__", "kaggle_utils"} <= set(sys.stdlib_module_names), top
    from_kit = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("kaggle")}
    assert from_kit == {"kaggle_utils.errors"}
