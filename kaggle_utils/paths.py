"""Every input and output location of the kit, resolved in one place: explicit argument > environment variable >
Kaggle default (when running on Kaggle) > a clear error. Nothing else in the kit hard-codes a path.

Environment variables:
  KAGGLE_UTILS_DATA_DIR      competition data (train.csv, series/, ...); Kaggle: /kaggle/input/<slug>
  KAGGLE_UTILS_WORK_DIR      where outputs go; Kaggle: /kaggle/working, elsewhere the current folder
  KAGGLE_UTILS_CACHE_DIR     preprocessed cache
  KAGGLE_UTILS_RUNS          trained run folders, separated by os.pathsep
  KAGGLE_UTILS_SHARE_DIR     the gateway's share directory that predict() must empty; Kaggle: /kaggle/shared
  KAGGLE_EVALUATION_DIR      folder that contains the competition's kaggle_evaluation/ package
  KAGGLE_UTILS_DICOM_REAL    real scanner DICOM corpus for tests; default: ../shared/dicom_real beside the repo
  KAGGLE_UTILS_SETTINGS      the Kaggle settings file (kaggle.yaml); default: kaggle.yaml at the repo root
  KAGGLE_UTILS_WHEELS_DIR    offline wheels for Kaggle; default: <work dir>/wheels
  KAGGLE_UTILS_PRETRAINED_DIR  local folder of pretrained weights to upload as a Kaggle dataset
"""

from __future__ import annotations

import os
from pathlib import Path

from kaggle_utils.errors import KitError
from kaggle_utils.schema import COMPETITION_SLUG

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
KAGGLE_SHARED = Path("/kaggle/shared")
REPO_ROOT = Path(__file__).resolve().parent.parent


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


def data_dir(arg: str | os.PathLike | None = None, must_exist: bool = True) -> Path:
    """The competition data folder (holds train.csv and series/)."""
    how = "pass --data-dir or set KAGGLE_UTILS_DATA_DIR"
    path = _pick(arg, "KAGGLE_UTILS_DATA_DIR")
    if path is None:
        kaggle_default = KAGGLE_INPUT / COMPETITION_SLUG
        if kaggle_default.exists():
            path = kaggle_default
        else:
            raise PathError(f"no competition data folder given ({how}; on Kaggle it is {kaggle_default})")
    return _must_exist(path, "competition data folder", how) if must_exist else path


def work_dir(arg: str | os.PathLike | None = None) -> Path:
    """Where outputs go by default: argument, KAGGLE_UTILS_WORK_DIR, /kaggle/working on Kaggle, else the cwd."""
    path = _pick(arg, "KAGGLE_UTILS_WORK_DIR")
    if path is None:
        path = KAGGLE_WORKING if on_kaggle() else Path.cwd()
    return path


def cache_dir(arg: str | os.PathLike | None = None, must_exist: bool = True) -> Path:
    how = "pass --cache or set KAGGLE_UTILS_CACHE_DIR"
    path = _pick(arg, "KAGGLE_UTILS_CACHE_DIR")
    if path is None:
        raise PathError(f"no preprocessed cache folder given ({how})")
    return _must_exist(path, "cache folder", how) if must_exist else path


def run_dirs(args: list[str | os.PathLike] | None = None) -> list[Path]:
    """Trained run folders: arguments, else KAGGLE_UTILS_RUNS (separated by os.pathsep)."""
    how = "pass --models/--runs or set KAGGLE_UTILS_RUNS (folders separated by os.pathsep)"
    if args:
        paths = [Path(a).expanduser() for a in args]
    else:
        raw = os.environ.get("KAGGLE_UTILS_RUNS", "")
        paths = [Path(p).expanduser() for p in raw.split(os.pathsep) if p]
    if not paths:
        raise PathError(f"no run folders given ({how})")
    for p in paths:
        _must_exist(p, "run folder", how)
    return paths


def share_dir(arg: str | os.PathLike | None = None) -> Path:
    """The gateway's share directory (predict() must empty it before returning)."""
    path = _pick(arg, "KAGGLE_UTILS_SHARE_DIR")
    return path if path is not None else KAGGLE_SHARED


def kaggle_evaluation_dir(arg: str | os.PathLike | None = None) -> Path | None:
    """Folder that contains the competition's ``kaggle_evaluation/`` package, or None when it is not available."""
    candidates = [_pick(arg, "KAGGLE_EVALUATION_DIR"), KAGGLE_INPUT / COMPETITION_SLUG]
    for path in candidates:
        # The server module, not just the folder: the synthetic layout has a plain kaggle_evaluation/ data folder.
        if path is not None and (path / "kaggle_evaluation" / "rsna_inference_server.py").is_file():
            return path
    return None


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
