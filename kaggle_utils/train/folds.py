"""Multilabel-stratified K-fold split, written once to a file and reused by every run on the same cache.

Stratified on Aneurysm Present, the 13 locations and the four-way modality (one-hot) with iterative stratification:
the rarest label is placed first, each series going to the fold that most lacks it (ties broken by the fold with the
most remaining room, then at random).

CLI: ``python -m kaggle_utils folds --cache CACHE [--n-folds 5] [--seed 42] [--out FILE] [--overwrite]``
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import polars as pl

from kaggle_utils.errors import KitError
from kaggle_utils.io import atomic_path
from kaggle_utils.schema import ID_COL, LABEL_COLS, MODALITIES

FOLD_COL = "fold"
DEFAULT_FOLDS_NAME = "folds.csv"


class FoldError(KitError):
    """A fold file that is missing, malformed or does not match the cache / config."""


def stratification_matrix(labels: pl.DataFrame) -> np.ndarray:
    """(n_series, 14 + n_modalities) 0/1 matrix: label columns, then the modality one-hot (when known)."""
    mat = labels.select(list(LABEL_COLS)).to_numpy().astype(np.int64)
    if "Modality" in labels.columns:
        mods = labels["Modality"].to_list()
        onehot = np.array([[int(m == name) for name in MODALITIES] for m in mods], dtype=np.int64)
        onehot = onehot.reshape(len(mods), -1)
        mat = np.concatenate([mat, onehot], axis=1)
    return mat


def iterative_stratification(y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index per row of the 0/1 matrix ``y`` (n, L) such that every label is spread evenly over the folds."""
    n = y.shape[0]
    rng = np.random.default_rng(seed)
    fold_of = np.full(n, -1, dtype=np.int64)
    room = np.full(n_folds, n / n_folds)  # desired remaining size per fold
    want = np.outer(np.full(n_folds, 1.0 / n_folds), y.sum(axis=0))  # (folds, labels) desired remaining positives
    unassigned = np.ones(n, dtype=bool)
    while unassigned.any():
        remaining = y[unassigned].sum(axis=0)
        if remaining.sum() == 0:  # rows with no positive label left: fill by room
            for i in rng.permutation(np.flatnonzero(unassigned)):
                best = np.flatnonzero(room == room.max())
                fold_of[i] = rng.choice(best)
                room[fold_of[i]] -= 1
            break
        label = int(np.argmin(np.where(remaining > 0, remaining, np.inf)))
        rows = np.flatnonzero(unassigned & (y[:, label] == 1))
        for i in rng.permutation(rows):
            candidates = np.flatnonzero(want[:, label] == want[:, label].max())
            if candidates.size > 1:
                candidates = candidates[room[candidates] == room[candidates].max()]
            f = int(rng.choice(candidates))
            fold_of[i] = f
            unassigned[i] = False
            room[f] -= 1
            want[f] -= y[i]
    return fold_of


def make_folds(labels: pl.DataFrame, n_folds: int, seed: int) -> pl.DataFrame:
    """SeriesInstanceUID -> fold (0..n_folds-1), multilabel-stratified; rows in ``labels`` order."""
    if n_folds < 2:
        raise FoldError(f"n_folds must be at least 2, got {n_folds}")
    if labels.height < n_folds:
        raise FoldError(f"cannot split {labels.height} series into {n_folds} folds")
    folds = iterative_stratification(stratification_matrix(labels), n_folds, seed)
    return pl.DataFrame({ID_COL: labels[ID_COL], FOLD_COL: folds.astype(np.int64)})


def write_folds(folds: pl.DataFrame, path: Path) -> Path:
    """Write the fold table atomically as CSV."""
    with atomic_path(path) as tmp:
        folds.write_csv(tmp)
    return path


def read_folds(path: Path, n_folds: int | None = None) -> pl.DataFrame:
    """Read a fold file; a missing file or a fold count different from ``n_folds`` is a FoldError."""
    path = Path(path)
    if not path.is_file():
        raise FoldError(f"fold file {path} does not exist (write it with `python -m kaggle_utils folds --cache CACHE`)")
    folds = pl.read_csv(path, schema_overrides={ID_COL: pl.Utf8, FOLD_COL: pl.Int64})
    missing = [c for c in (ID_COL, FOLD_COL) if c not in folds.columns]
    if missing:
        raise FoldError(f"fold file {path} lacks column(s) {missing}")
    found = sorted(set(folds[FOLD_COL].to_list()))
    if n_folds is not None and found != list(range(n_folds)):
        raise FoldError(f"fold file {path} holds folds {found}, but the config asks for train.n_folds={n_folds}")
    return folds


def ensure_folds(cache: Path, labels: pl.DataFrame, n_folds: int, seed: int, path: Path | None = None) -> Path:
    """The fold file for a run: ``path`` must exist when given; the cache's default file is written once if absent."""
    if path is not None:
        read_folds(path, n_folds)
        return Path(path)
    default = Path(cache) / DEFAULT_FOLDS_NAME
    if not default.is_file() and not os.access(cache, os.W_OK):
        # A cache attached as a Kaggle dataset is read-only: keep the folds beside the outputs instead, once.
        from kaggle_utils import paths

        default = paths.work_dir() / DEFAULT_FOLDS_NAME
        print(f"cache {cache} is read-only and has no {DEFAULT_FOLDS_NAME}; using {default}")
    if not default.is_file():
        write_folds(make_folds(labels, n_folds, seed), default)
    read_folds(default, n_folds)
    return default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", help="preprocessed cache folder (default: $KAGGLE_UTILS_CACHE_DIR)")
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", help=f"fold file to write (default: CACHE/{DEFAULT_FOLDS_NAME})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing fold file")


def run(args: argparse.Namespace) -> int:
    from kaggle_utils import paths
    from kaggle_utils.train.dataset import read_cache_labels

    cache = paths.cache_dir(args.cache)
    out = Path(args.out) if args.out else cache / DEFAULT_FOLDS_NAME
    if out.exists() and not args.overwrite:
        raise FoldError(f"fold file {out} already exists; folds are written once (pass --overwrite to replace it)")
    paths.ensure_parent(out)
    labels = read_cache_labels(cache)
    folds = make_folds(labels, args.n_folds, args.seed)
    write_folds(folds, out)
    sizes = folds.group_by(FOLD_COL).len().sort(FOLD_COL)["len"].to_list()
    print(f"wrote {out}: {folds.height} series in {args.n_folds} folds, sizes {sizes}")
    return 0
