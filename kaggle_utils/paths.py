"""Every input and output location of the kit, resolved in one place: explicit argument > environment variable >
what is found under the Kaggle input root (by marker files) > a clear error. Nothing else in the kit hard-codes a path.
Standard library only: the notebook bootstrap (``kaggle_env``) imports this before any wheel is installed.

Kaggle mounts attached inputs in several layouts (all searched): ``<input>/<slug>``,
``<input>/datasets/<owner>/<slug>`` and ``<input>/competitions/<slug>``. An input is recognised by its files, not its
slug: competition data ``train.csv`` + ``series/`` (or the ``kaggle_evaluation`` server), the kit's code
``kaggle_utils/``, the wheels ``kaggle_wheels.txt`` + wheels, a run ``config.yaml`` + ``fold*/``, a cache
``manifest.parquet``.

Environment variables (locations):
  KAGGLE_UTILS_INPUT_DIR     where attached inputs are mounted; default /kaggle/input
  KAGGLE_UTILS_DATA_DIR      competition data (train.csv, series/, ...); default: found under the input root
  KAGGLE_UTILS_WORK_DIR      where outputs go; Kaggle: /kaggle/working, elsewhere the current folder
  KAGGLE_UTILS_CACHE_DIR     preprocessed cache; default: found under the input root
  KAGGLE_UTILS_RUNS          trained run folders, separated by os.pathsep; default: found under the input root
  KAGGLE_UTILS_SHARE_DIR     the gateway's share directory that predict() must empty; Kaggle: /kaggle/shared
  KAGGLE_EVALUATION_DIR      folder that contains the competition's kaggle_evaluation/ package
  KAGGLE_UTILS_DICOM_REAL    real scanner DICOM corpus for tests; default: ../shared/dicom_real beside the repo
  KAGGLE_UTILS_SETTINGS      the Kaggle settings file (kaggle.yaml); default: kaggle.yaml at the repo root
  KAGGLE_UTILS_WHEELS_DIR    offline wheels for Kaggle; default: <work dir>/wheels
  KAGGLE_UTILS_PRETRAINED_DIR  local folder of pretrained weights to upload as a Kaggle dataset
Notebook settings (read by ``kaggle_utils.kaggle_env``; the notebooks set none of their own):
  KAGGLE_UTILS_WORKERS, KAGGLE_UTILS_SHARD, KAGGLE_UTILS_LIMIT (preprocess), KAGGLE_UTILS_CONFIG (an experiment
  config, relative to the kit's folder), KAGGLE_UTILS_RUN_NAME, KAGGLE_UTILS_FOLD, KAGGLE_UTILS_TRAIN_OVERRIDES (train)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from kaggle_utils.errors import KitError

COMPETITION_SLUG = "rsna-intracranial-aneurysm-detection"  # same as schema.COMPETITION_SLUG (schema needs numpy)
KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
KAGGLE_SHARED = Path("/kaggle/shared")
REPO_ROOT = Path(__file__).resolve().parent.parent
INPUT_ENV = "KAGGLE_UTILS_INPUT_DIR"
WHEELS_LIST = "kaggle_wheels.txt"
# Below a mount point, inputs may sit a level or two deeper (a notebook's output saved as a dataset keeps its cache/
# or runs/<name>/ folder); folders that are data, not inputs, are never entered (series/ holds thousands of folders).
SEARCH_DEPTH = 2
NOT_SEARCHED = {"series", "segmentations", "kaggle_evaluation", "kaggle_utils", "__pycache__", "configs"}


class PathError(KitError, FileNotFoundError):
    """A location that could not be resolved or does not exist; the message says how to provide it."""


def on_kaggle() -> bool:
    """True inside a Kaggle notebook (interactive, batch or competition rerun)."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or "KAGGLE_URL_BASE" in os.environ


def is_competition_rerun() -> bool:
    return bool(os.environ.get("KAGGLE_IS_COMPETITION_RERUN"))


def _pick(arg: str | os.PathLike | None, env: str) -> Path | None:
    if arg not in (None, ""):
        return Path(arg).expanduser()
    value = os.environ.get(env, "")
    return Path(value).expanduser() if value else None


def _must_exist(path: Path, what: str, how: str) -> Path:
    if not path.exists():
        raise PathError(f"{what} {path} does not exist ({how})")
    return path


# --------------------------------------------------------------------------------------------------------------------
# Attached inputs, found by their marker files.


def _is_competition(p: Path) -> bool:
    return ((p / "train.csv").is_file() and (p / "series").is_dir()) or _has_evaluation_server(p)


def _has_evaluation_server(p: Path) -> bool:
    # The server module, not just the folder: the synthetic layout has a plain kaggle_evaluation/ data folder.
    return (p / "kaggle_evaluation" / "rsna_inference_server.py").is_file()


def _is_code(p: Path) -> bool:
    return (p / "kaggle_utils" / "__init__.py").is_file()


def _is_wheels(p: Path) -> bool:
    # The code dataset ships kaggle_wheels.txt too; the wheels dataset is the one that also holds wheels.
    return (p / WHEELS_LIST).is_file() and (any(p.glob("*.whl")) or any(p.glob("cp*/*.whl")))


def _is_run(p: Path) -> bool:
    return (p / "config.yaml").is_file() and any(d.is_dir() for d in p.glob("fold*"))


def _is_cache(p: Path) -> bool:
    return (p / "manifest.parquet").is_file()


INPUT_KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "competition": ("competition data (train.csv + series/, or kaggle_evaluation/)", _is_competition),
    "code": ("kit code (kaggle_utils/)", _is_code),
    "wheels": (f"offline wheels ({WHEELS_LIST} + *.whl)", _is_wheels),
    "run": ("trained run (config.yaml + fold*/)", _is_run),
    "cache": ("preprocessed cache (manifest.parquet)", _is_cache),
}


def input_root(arg: str | os.PathLike | None = None) -> Path:
    """Where Kaggle mounts the attached inputs: argument, KAGGLE_UTILS_INPUT_DIR, else /kaggle/input."""
    return _pick(arg, INPUT_ENV) or KAGGLE_INPUT


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:  # unreadable or vanished mount: nothing attached there
        return []


def mount_points(root: Path) -> list[Path]:
    """Every folder that can be one attached input: ``root/<slug>``, ``root/competitions/<slug>``,
    ``root/datasets/<owner>/<slug>``."""
    mounts: list[Path] = []
    for top in _subdirs(root):
        if top.name == "competitions":
            mounts.extend(_subdirs(top))
        elif top.name == "datasets":
            mounts.extend(slug for owner in _subdirs(top) for slug in _subdirs(owner))
        else:
            mounts.append(top)
    return mounts


def _kinds_of(p: Path) -> list[str]:
    return [kind for kind, (_, test) in INPUT_KINDS.items() if test(p)]


def scan_inputs(root: str | os.PathLike | None = None) -> dict[Path, list[str]]:
    """Every folder under the input root that is an input, with its kinds (depth-limited below each mount point)."""
    found: dict[Path, list[str]] = {}

    def visit(folder: Path, depth: int) -> None:
        kinds = _kinds_of(folder)
        if kinds:  # an input is not searched further (a code dataset holds configs, a run its folds)
            found[folder] = kinds
            return
        if depth < SEARCH_DEPTH:
            for sub in _subdirs(folder):
                if sub.name not in NOT_SEARCHED and not sub.name.startswith("fold"):
                    visit(sub, depth + 1)

    for mount in mount_points(input_root(root)):
        visit(mount, 0)
    return found


def find_inputs(kind: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Every attached input of ``kind`` (see ``INPUT_KINDS``), sorted."""
    if kind not in INPUT_KINDS:
        raise ValueError(f"unknown input kind {kind!r}; known: {list(INPUT_KINDS)}")
    return sorted(p for p, kinds in scan_inputs(root).items() if kind in kinds)


def describe_inputs(root: str | os.PathLike | None = None) -> str:
    """What is under the input root, for error messages: each mount point and the kinds of input found in it."""
    base = input_root(root)
    if not base.is_dir():
        return f"{base} does not exist"
    found = scan_inputs(base)
    mounts = mount_points(base)
    if not mounts:
        return f"{base} holds no attached input"
    lines = []
    for mount in mounts:
        inside = [f"{p.relative_to(base)} ({', '.join(kinds)})" for p, kinds in found.items()
                  if p == mount or mount in p.parents]
        lines.append(f"{mount.relative_to(base)}: " + ("; ".join(inside) if inside else "nothing the kit recognises"))
    return f"under {base}: " + " | ".join(lines)


def find_input(kind: str, root: str | os.PathLike | None = None, how: str = "") -> Path:
    """The one attached input of ``kind``; none or several is a PathError that lists what was found."""
    matches = find_inputs(kind, root)
    if len(matches) == 1:
        return matches[0]
    what = INPUT_KINDS[kind][0]
    hint = f" ({how})" if how else ""
    if not matches:
        raise PathError(f"no {what} found{hint}; {describe_inputs(root)}")
    raise PathError(f"{len(matches)} folders hold {what}: {[str(m) for m in matches]}{hint}; pick one")


def data_dir(arg: str | os.PathLike | None = None, must_exist: bool = True) -> Path:
    """The competition data folder (holds train.csv and series/): argument, KAGGLE_UTILS_DATA_DIR, else the
    competition found under the input root."""
    how = "pass --data-dir or set KAGGLE_UTILS_DATA_DIR"
    path = _pick(arg, "KAGGLE_UTILS_DATA_DIR")
    if path is None:
        return find_input("competition", how=how)
    return _must_exist(path, "competition data folder", how) if must_exist else path


def work_dir(arg: str | os.PathLike | None = None) -> Path:
    """Where outputs go by default: argument, KAGGLE_UTILS_WORK_DIR, /kaggle/working on Kaggle, else the cwd."""
    path = _pick(arg, "KAGGLE_UTILS_WORK_DIR")
    if path is None:
        path = KAGGLE_WORKING if on_kaggle() else Path.cwd()
    return path


def cache_dir(arg: str | os.PathLike | None = None, must_exist: bool = True) -> Path:
    """The preprocessed cache: argument, KAGGLE_UTILS_CACHE_DIR, else the one cache found under the input root."""
    how = "pass --cache or set KAGGLE_UTILS_CACHE_DIR"
    path = _pick(arg, "KAGGLE_UTILS_CACHE_DIR")
    if path is None:
        if not must_exist:  # an output folder: never guessed from the inputs
            raise PathError(f"no preprocessed cache folder given ({how})")
        return find_input("cache", how=how)
    return _must_exist(path, "cache folder", how) if must_exist else path


def run_dirs(args: list[str | os.PathLike] | None = None) -> list[Path]:
    """Trained run folders: arguments, else KAGGLE_UTILS_RUNS (separated by os.pathsep), else every run found under
    the input root."""
    how = "pass --models/--runs or set KAGGLE_UTILS_RUNS (folders separated by os.pathsep)"
    if args:
        paths = [Path(a).expanduser() for a in args]
    else:
        raw = os.environ.get("KAGGLE_UTILS_RUNS", "")
        paths = [Path(p).expanduser() for p in raw.split(os.pathsep) if p]
    if not paths:
        paths = find_inputs("run")
        if not paths:
            raise PathError(f"no run folders given ({how}) and none attached; {describe_inputs()}")
    for p in paths:
        _must_exist(p, "run folder", how)
    return paths


def share_dir(arg: str | os.PathLike | None = None) -> Path:
    """The gateway's share directory (predict() must empty it before returning)."""
    path = _pick(arg, "KAGGLE_UTILS_SHARE_DIR")
    return path if path is not None else KAGGLE_SHARED


def serving_share_dir(out_dir: str | os.PathLike | None = None) -> Path:
    """Where a gateway run shares series: Kaggle's share directory on Kaggle or when KAGGLE_UTILS_SHARE_DIR is set,
    elsewhere a ``shared/`` folder in the work directory (``/kaggle/shared`` is not writable off Kaggle)."""
    if on_kaggle() or os.environ.get("KAGGLE_UTILS_SHARE_DIR"):
        return share_dir()
    return work_dir(out_dir) / "shared"


def kaggle_evaluation_dir(arg: str | os.PathLike | None = None) -> Path | None:
    """Folder that contains the competition's ``kaggle_evaluation/`` package, or None when it is not available:
    argument / KAGGLE_EVALUATION_DIR, else the attached competition that holds it."""
    given = _pick(arg, "KAGGLE_EVALUATION_DIR")
    if given is not None and _has_evaluation_server(given):
        return given
    return next((p for p in find_inputs("competition") if _has_evaluation_server(p)), None)


def dicom_real_dir() -> Path | None:
    """The real scanner DICOM corpus used by loader tests, or None when absent."""
    path = _pick(None, "KAGGLE_UTILS_DICOM_REAL") or (REPO_ROOT.parent / "shared" / "dicom_real")
    return path if path.is_dir() else None


def kaggle_settings(arg: str | os.PathLike | None = None) -> Path:
    """The Kaggle settings file: argument, KAGGLE_UTILS_SETTINGS, else kaggle.yaml at the repo root."""
    path = _pick(arg, "KAGGLE_UTILS_SETTINGS") or (REPO_ROOT / "kaggle.yaml")
    return _must_exist(path, "Kaggle settings file", "pass --settings or set KAGGLE_UTILS_SETTINGS")


def wheels_dir(arg: str | os.PathLike | None = None) -> Path:
    """Offline wheels for Kaggle: argument, KAGGLE_UTILS_WHEELS_DIR, else <work dir>/wheels (may not exist)."""
    return _pick(arg, "KAGGLE_UTILS_WHEELS_DIR") or (work_dir() / "wheels")


def pretrained_dir(arg: str | os.PathLike | None = None) -> Path | None:
    """Local folder of pretrained weights to upload: argument, KAGGLE_UTILS_PRETRAINED_DIR, else None."""
    return _pick(arg, "KAGGLE_UTILS_PRETRAINED_DIR")


def ensure_parent(path: str | os.PathLike) -> Path:
    """Check that an output's parent folder exists (we never create deep trees silently)."""
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise PathError(f"cannot write {path}: its parent folder {path.parent} does not exist")
    return path
