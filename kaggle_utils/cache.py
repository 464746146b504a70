"""``python -m kaggle_utils preprocess``: each series -> ``prepare_series`` -> one compressed ``.npz``, plus a manifest.

Layout (docs/ARCHITECTURE.md, "Cache layout")::

    CACHE/cache_info.json      cache_version, config_hash, data (the DataConfig), kit_version
    CACHE/manifest.parquet     one row per series (merged from CACHE/parts/)
    CACHE/series/<uid>.npz     image uint8 (C, Z, Y, X), affine float64 (4, 4), cowseg uint8 (Z, Y, X) when present
    CACHE/parts/<uid>.json     the manifest row of one series (written last: its presence marks the series done)
    CACHE/train.csv            the labels of the series cached with status ok

Resumable and kill-safe: every file goes to a temporary name and is renamed into place, and a series counts as done
only once its part file exists, so a rerun after a kill at any moment redoes at most the series in flight. Memory is
bounded: workers write their own files and hand back one small row; the manifest is merged from the parts at the end.
``--shard I/N`` processes every N-th series; shards writing into one folder merge automatically, shards written into
separate folders (separate Kaggle notebook outputs) are merged by ``read_manifest([dir1, dir2, ...])`` or by
``preprocess --merge DIR... --out CACHE`` (a manifest that points into the shard folders).

Reader API for training: ``read_cache_info``, ``read_manifest``, ``load_cache_entry``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kaggle_utils import __version__, paths
from kaggle_utils.config import DataConfig, config_hash, from_dict, load_config, to_dict
from kaggle_utils.coverage import coverage_warnings, format_coverage, write_coverage
from kaggle_utils.errors import KitError
from kaggle_utils.io import atomic_path, atomic_write_text
from kaggle_utils.localizers import by_series, read_localizers
from kaggle_utils.schema import ID_COL, LOCATION_COLS, SOP_COL

# 2: 8-bit JPEG baseline series decode with pillow (= gdcm, pydicom's default, SimpleITK) instead of pylibjpeg,
# which differs by 1 stored unit on ~2% of pixels. 3: the anatomy ROI locator and anatomy-shaped box (issue 12); the
# manifest keeps roi_method / roi_confidence. 4: the anatomy locator registers the series at 6 mm instead of 4 mm
# (4x faster, same CoW error on real and synthetic heads), so its boxes move by a few mm.
CACHE_VERSION = 4
INFO_NAME = "cache_info.json"
MANIFEST_NAME = "manifest.parquet"
LABELS_NAME = "train.csv"
SERIES_DIR = "series"
PARTS_DIR = "parts"
FULL_DATASET_SERIES = 4348
KAGGLE_OUTPUT_LIMIT_BYTES = 19e9  # a notebook saves about 20 GB of output (second-hand); keep a margin

POINT_TYPE = pl.Struct(
    {"location": pl.Utf8, "sop": pl.Utf8, "z": pl.Float64, "y": pl.Float64, "x": pl.Float64, "inside": pl.Boolean}
)
MANIFEST_SCHEMA: dict[str, Any] = {
    ID_COL: pl.Utf8,
    "status": pl.Utf8,  # "ok" | "error"
    "error": pl.Utf8,
    "file": pl.Utf8,  # relative to the cache folder (absolute when several folders are read together)
    "shape": pl.List(pl.Int64),  # cached image (C, Z, Y, X)
    "spacing": pl.List(pl.Float64),  # cached grid spacing (z, y, x) mm
    "source_shape": pl.List(pl.Int64),
    "source_spacing": pl.List(pl.Float64),
    "modality": pl.Utf8,  # DICOM modality CT / MR
    "roi_box": pl.List(pl.Float64),  # box faces in source voxels: z0, y0, x0, z1, y1, x1
    "roi_method": pl.Utf8,  # how the locator placed the box (registration, vessels, heuristic, fallback:...)
    "roi_confidence": pl.Float64,
    "points": pl.List(POINT_TYPE),  # localizer points in cache voxels
    "points_missing": pl.Int64,  # localizer rows whose SOP / frame is not in the loaded volume
    "has_cowseg": pl.Boolean,
    "notes": pl.List(pl.Utf8),
    "nbytes": pl.Int64,
    "seconds": pl.Float64,
    "cache_version": pl.Int64,
    "config_hash": pl.Utf8,
}


class CacheError(KitError):
    """A cache that is missing, incomplete, or made with another cache version / data config."""


# --------------------------------------------------------------------------------------------------------------------
# cache_info.json


def cache_info(data_cfg: DataConfig) -> dict:
    return {
        "cache_version": CACHE_VERSION,
        "config_hash": config_hash(data_cfg),
        "data": to_dict(data_cfg),
        "kit_version": __version__,
    }


def read_cache_info(cache_dir: str | os.PathLike) -> dict:
    """``cache_info.json`` of a cache folder, with a clear error when it is not a cache."""
    path = Path(cache_dir) / INFO_NAME
    if not path.is_file():
        raise CacheError(f"{path} does not exist: {cache_dir} is not a preprocessed cache (run `python -m "
                         "kaggle_utils preprocess` first)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path} is not valid JSON: {exc}") from None
    missing = [k for k in ("cache_version", "config_hash", "data") if k not in info]
    if missing:
        raise CacheError(f"{path} lacks key(s) {missing}")
    return info


def _differing_fields(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def check_same_cache(info: dict, other: dict, where: str, other_where: str) -> None:
    """Refuse to mix caches of different cache_version or data config, naming both and the fields that differ."""
    if info["cache_version"] != other["cache_version"] or info["config_hash"] != other["config_hash"]:
        fields = _differing_fields(info.get("data", {}), other.get("data", {}))
        raise CacheError(
            f"cannot mix caches: {where} has cache_version {info['cache_version']} / config_hash "
            f"{info['config_hash']}, {other_where} has cache_version {other['cache_version']} / config_hash "
            f"{other['config_hash']}" + (f" (data fields differ: {fields})" if fields else "")
        )


def ensure_cache_info(out: Path, data_cfg: DataConfig) -> dict:
    """Write ``cache_info.json`` for a new cache, or check an existing one matches this run."""
    info = cache_info(data_cfg)
    path = out / INFO_NAME
    if path.exists():
        check_same_cache(read_cache_info(out), info, f"existing cache {out}", "this run's data config")
        return info
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")
    return info


# --------------------------------------------------------------------------------------------------------------------
# The work list


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N; None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise CacheError(f"--shard {text!r} must look like I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise CacheError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def list_series(data_dir: Path) -> list[str]:
    """Series ids, sorted: train.csv's when it exists (a missing folder then becomes an error row), else the folders."""
    labels = data_dir / "train.csv"
    if labels.is_file():
        ids = pl.read_csv(labels, columns=[ID_COL], schema_overrides={ID_COL: pl.Utf8})[ID_COL].to_list()
        return sorted(set(ids))
    series = data_dir / "series"
    if not series.is_dir():
        raise CacheError(f"{data_dir} holds neither train.csv nor a series/ folder: not a competition data folder")
    return sorted(p.name for p in series.iterdir() if p.is_dir())


def select_shard(uids: list[str], shard: tuple[int, int], limit: int | None) -> list[str]:
    """Every N-th series starting at I (deterministic, balanced), then the first ``limit`` of them."""
    i, n = shard
    chosen = uids[i::n]
    return chosen if limit is None else chosen[: max(0, limit)]


# --------------------------------------------------------------------------------------------------------------------
# One series (runs in a worker process)


@dataclass
class SeriesTask:
    uid: str
    series_dir: str
    cowseg: str | None
    localizers: list[dict]  # this series' rows of localizers.read_localizers
    data: dict
    out: str


def write_npz(path: Path, arrays: dict[str, np.ndarray], level: int = 0) -> int:
    """Write an ``.npz`` atomically (np.load reads it); returns its size in bytes. ``level`` 0: stored, no
    compression; 1-9: zlib (deflate) at that level.

    Stored by default, chosen by measurement (bench/bench_preprocess.py; a default-config ROI, 2x48x96x96 uint8):
    zlib level 1 wrote it in ~43 ms and read back in ~12 ms for 455 KB; stored writes in ~3 ms and reads in ~1.2 ms
    for 885 KB. Level 1 was a quarter of the whole per-series preprocessing time, and every training epoch pays
    the read; the cache is twice as large (about 0.9 MB per series, ~4 GB for the competition's training set).
    The arrays read back are identical either way.
    """
    import zipfile

    method = zipfile.ZIP_STORED if level == 0 else zipfile.ZIP_DEFLATED
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", method, compresslevel=level or None) as zf:
            for name, array in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)
    return path.stat().st_size


def part_path(out: Path, uid: str) -> Path:
    return out / PARTS_DIR / f"{uid}.json"


def _base_row(uid: str, info_hash: str) -> dict:
    row: dict[str, Any] = {k: None for k in MANIFEST_SCHEMA}
    row.update({ID_COL: uid, "cache_version": CACHE_VERSION, "config_hash": info_hash, "points": [], "notes": []})
    row.update({"points_missing": 0, "has_cowseg": False, "nbytes": 0})
    return row


def localizer_points(volume: Any, prepared: Any, rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Map a series' localizer rows (``localizers.read_localizers``) into cache voxels; rows whose SOP / frame the
    volume lacks become notes."""
    from kaggle_utils.preprocess import localizer_to_roi_voxel

    points, notes = [], []
    for row in rows:
        sop, location = row[SOP_COL], row["location"]
        if location not in LOCATION_COLS:
            notes.append(f"localizer {sop}: unknown location {location!r} skipped")
            continue
        try:
            z_, y_, x_ = (float(v) for v in localizer_to_roi_voxel(volume, prepared, sop, row["x"], row["y"],
                                                                     row["frame"]))
        except KeyError as exc:  # the loader's voxel_of: this SOP (or frame) did not become a voxel of the volume
            notes.append(f"localizer {sop}: not in the loaded volume ({exc})")
            continue
        inside = bool(prepared.contains(np.array([z_, y_, x_]))[0])
        points.append({"location": location, "sop": sop, "z": z_, "y": y_, "x": x_, "inside": inside})
    return points, notes


def _series_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this series is unusable" (recorded); anything else is a bug (recorded and flagged)."""
    from kaggle_utils.dicom import SeriesError

    return (SeriesError, ValueError, OSError)


def process_series(task: SeriesTask) -> dict:
    """Load, prepare and write one series; return its manifest row (also written as its part file)."""
    from kaggle_utils.dicom import load_series
    from kaggle_utils.preprocess import cowseg_to_roi, prepare_series

    t0 = time.perf_counter()
    out = Path(task.out)
    data_cfg = from_dict(DataConfig, task.data, "cache_info.data")
    row = _base_row(task.uid, config_hash(data_cfg))
    try:
        if not Path(task.series_dir).is_dir():
            raise FileNotFoundError(f"series folder {task.series_dir} does not exist")
        volume = load_series(task.series_dir)
        prepared = prepare_series(volume, data_cfg)
        points, point_notes = localizer_points(volume, prepared, task.localizers)
        arrays = {"image": prepared.image, "affine": prepared.affine}
        if task.cowseg:
            try:
                arrays["cowseg"] = cowseg_to_roi(task.cowseg, prepared, volume)
            except ValueError as exc:  # optional supervision: the image stays usable, the manifest says why
                point_notes.append(f"cowseg not cached: {exc}")
        del volume  # the full-resolution array is the big one: free it before compressing
        rel = f"{SERIES_DIR}/{task.uid}.npz"
        nbytes = write_npz(out / rel, arrays)
        row.update({
            "status": "ok", "file": rel, "shape": list(prepared.image.shape), "spacing": list(prepared.spacing),
            "source_shape": list(prepared.source_shape), "source_spacing": list(prepared.source_spacing),
            "modality": prepared.modality, "roi_box": [float(v) for v in prepared.roi_box.ravel()],
            "roi_method": prepared.roi.method, "roi_confidence": float(prepared.roi.confidence),
            "points": points, "points_missing": len(task.localizers) - len(points), "has_cowseg": "cowseg" in arrays,
            "notes": [str(n) for n in (*prepared.notes, *point_notes)], "nbytes": nbytes,
        })
    except _series_error_types() as exc:
        row.update({"status": "error", "error": f"{type(exc).__name__}: {exc}"})
    except Exception as exc:  # noqa: BLE001 - a bug on one series is recorded, flagged and makes the run exit non-zero
        row.update({"status": "error", "error": f"UNEXPECTED {type(exc).__name__}: {exc}"})
    row["seconds"] = round(time.perf_counter() - t0, 4)
    atomic_write_text(part_path(out, task.uid), json.dumps(row) + "\n")
    return row


# --------------------------------------------------------------------------------------------------------------------
# Merging and reading


def rows_to_frame(rows: list[dict]) -> pl.DataFrame:
    """Manifest rows (dicts) -> a frame with the fixed manifest schema (also when empty)."""
    return pl.DataFrame(rows, schema=MANIFEST_SCHEMA)


def part_files(cache_dir: Path) -> list[Path]:
    """Finished part files, sorted (pathlib's glob also matches the hidden temporary files of writes in flight)."""
    folder = cache_dir / PARTS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))


def read_parts(cache_dir: Path) -> pl.DataFrame:
    """All per-series part files of a cache folder as one manifest frame, sorted by series id."""
    rows = []
    for p in part_files(cache_dir):
        try:
            rows.append(json.loads(p.read_text()))
        except json.JSONDecodeError as exc:
            raise CacheError(f"{p} is not valid JSON ({exc}); delete it and rerun preprocess to redo that series")
    return rows_to_frame(rows).sort(ID_COL)


def merge_manifest(cache_dir: Path, data_dir: Path | None = None) -> pl.DataFrame:
    """Write ``manifest.parquet`` (and ``train.csv`` of the ok series when ``data_dir`` has labels) from the parts."""
    manifest = read_parts(cache_dir)
    with atomic_path(cache_dir / MANIFEST_NAME) as tmp:
        manifest.write_parquet(tmp)
    labels_src = data_dir / "train.csv" if data_dir is not None else None
    if labels_src is not None and labels_src.is_file():
        ok = set(manifest.filter(pl.col("status") == "ok")[ID_COL].to_list())
        labels = pl.read_csv(labels_src, schema_overrides={ID_COL: pl.Utf8})
        with atomic_path(cache_dir / LABELS_NAME) as tmp:
            labels.filter(pl.col(ID_COL).is_in(ok)).write_csv(tmp)
    return manifest


def _read_one_manifest(cache_dir: Path) -> pl.DataFrame:
    """A folder's manifest; parts newer than the manifest (a shard still adding to the folder) are merged in."""
    path = cache_dir / MANIFEST_NAME
    n_parts = len(part_files(cache_dir))
    if path.is_file():
        manifest = pl.read_parquet(path)
        if manifest.height >= n_parts:
            return manifest
    if n_parts == 0:
        raise CacheError(f"{path} does not exist and {cache_dir / PARTS_DIR} is empty: the cache holds no series")
    return read_parts(cache_dir)


def read_manifest(cache_dirs: str | os.PathLike | list, ok_only: bool = False) -> pl.DataFrame:
    """The manifest of one cache folder, or of several shard folders merged (their cache_info must agree).

    With several folders, ``file`` becomes an absolute path and a ``cache_dir`` column says where each row lives;
    a series present in two folders keeps its ok row. Rows whose cache_version / config_hash differ from the folder's
    cache_info are refused.
    """
    dirs = [Path(cache_dirs)] if isinstance(cache_dirs, (str, os.PathLike)) else [Path(d) for d in cache_dirs]
    if not dirs:
        raise CacheError("no cache folder given")
    infos = [read_cache_info(d) for d in dirs]
    for d, info in zip(dirs[1:], infos[1:]):
        check_same_cache(infos[0], info, f"cache {dirs[0]}", f"cache {d}")
    frames = []
    for d, info in zip(dirs, infos):
        m = _read_one_manifest(d)
        foreign = (pl.col("cache_version") != info["cache_version"]) | (pl.col("config_hash") != info["config_hash"])
        bad = m.filter(foreign)
        if bad.height:
            raise CacheError(f"cache {d}: {bad.height} manifest row(s) (e.g. {bad[ID_COL][0]}) were made with another "
                             f"cache_version/config_hash than its cache_info.json ({info['config_hash']})")
        if len(dirs) > 1:
            m = m.with_columns(
                (pl.lit(str(d.resolve()) + "/") + pl.col("file")).alias("file"),
                pl.lit(str(d)).alias("cache_dir"),
            )
        frames.append(m)
    manifest = pl.concat(frames, how="vertical_relaxed")
    if len(dirs) > 1:
        manifest = manifest.sort([ID_COL, pl.col("status") != "ok"]).unique(ID_COL, keep="first", maintain_order=True)
    if ok_only:
        manifest = manifest.filter(pl.col("status") == "ok")
    return manifest


def entry_path(cache_dir: str | os.PathLike, file: str | None, uid: str) -> Path:
    """Where a manifest row's array file lives: its ``file`` (absolute in a merged shard cache, else relative to the
    cache folder); a row without one (written before the column existed) is ``series/<uid>.npz``."""
    path = Path(file) if file else Path(SERIES_DIR) / f"{uid}.npz"
    return path if path.is_absolute() else Path(cache_dir) / path


def load_cache_entry(cache_dir: str | os.PathLike, uid: str,
                     manifest: pl.DataFrame | None = None) -> dict[str, np.ndarray]:
    """One cached series: ``image`` uint8 (C, Z, Y, X), ``affine`` (4, 4), and ``cowseg`` (Z, Y, X) when cached.

    The file is the one the manifest's ``file`` column names, so a merged shard cache (``preprocess --merge``) reads
    its arrays from the shard folders. Pass ``manifest`` (``read_manifest(cache_dir)``) to read many entries without
    re-reading it each time.
    """
    manifest = read_manifest(cache_dir) if manifest is None else manifest
    rows = manifest.filter(pl.col(ID_COL) == uid)
    if rows.height == 0:
        raise CacheError(f"cached series {uid} not found: it is not in the manifest of {cache_dir}")
    row = rows.row(0, named=True)
    if row["status"] != "ok":
        raise CacheError(f"cached series {uid} in {cache_dir} has status {row['status']!r}: {row['error']}")
    path = entry_path(cache_dir, row["file"], uid)
    if not path.is_file():
        raise CacheError(f"cached series {uid} not found: {path} (its manifest row's file) does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            entry = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise CacheError(f"cached series file {path} is unreadable: {exc}") from None
    if "image" not in entry or entry["image"].dtype != np.uint8 or entry["image"].ndim != 4:
        raise CacheError(f"cached series file {path} lacks a uint8 (C, Z, Y, X) image")
    return entry


def merge_shard_folders(shard_dirs: list[Path], out: Path) -> pl.DataFrame:
    """One cache folder whose manifest points into several shard folders (no array is copied)."""
    manifest = read_manifest(shard_dirs)
    info = read_cache_info(shard_dirs[0])
    out.mkdir(exist_ok=True)
    if (out / INFO_NAME).exists():
        check_same_cache(read_cache_info(out), info, f"existing cache {out}", f"cache {shard_dirs[0]}")
    else:
        atomic_write_text(out / INFO_NAME, json.dumps(info, indent=2) + "\n")
    with atomic_path(out / MANIFEST_NAME) as tmp:
        manifest.drop("cache_dir").write_parquet(tmp)
    label_frames = [pl.read_csv(d / LABELS_NAME, schema_overrides={ID_COL: pl.Utf8})
                    for d in shard_dirs if (d / LABELS_NAME).is_file()]
    if label_frames:
        labels = pl.concat(label_frames, how="vertical_relaxed").unique(ID_COL, keep="first", maintain_order=True)
        with atomic_path(out / LABELS_NAME) as tmp:
            labels.sort(ID_COL).write_csv(tmp)
    return manifest


# --------------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class CacheSummary:
    out: Path
    selected: int = 0
    skipped: int = 0
    done: int = 0
    status: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    seconds: float = 0.0
    mean_ok_bytes: float = 0.0
    coverage: list = field(default_factory=list)  # kaggle_utils.coverage.coverage_table of the ok series

    def projected_bytes(self, n_series: int = FULL_DATASET_SERIES) -> float:
        return self.mean_ok_bytes * n_series


def _stale_temp_files(out: Path, uids: set[str]) -> list[Path]:
    """Temporary files a killed run left for series of this run (another shard's in-flight files are not touched)."""
    stale = []
    for sub, suffix in ((SERIES_DIR, ".npz"), (PARTS_DIR, ".json")):
        for p in (out / sub).glob(".*.tmp*"):
            name = p.name[1:].split(suffix + ".", 1)[0]
            if name in uids:
                stale.append(p)
    return stale


def _worker_init() -> None:
    """One BLAS/OpenMP thread per worker: the workers already use every core, more threads only contend."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _pool(workers: int) -> cf.ProcessPoolExecutor:
    # spawn: the parent may hold threads (polars, tqdm) that make fork unsafe.
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_worker_init)


def _run_tasks(tasks: list[SeriesTask], workers: int, progress: bool, summary: CacheSummary) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), unit="series", disable=not progress, dynamic_ncols=True, desc="preprocess")

    def record(row: dict) -> None:
        summary.done += 1
        summary.status[row["status"]] += 1
        if row["status"] != "ok" and str(row["error"]).startswith("UNEXPECTED"):
            summary.unexpected.append(f"{row[ID_COL]}: {row['error']}")
        bar.set_postfix(ok=summary.status["ok"], error=summary.status["error"], refresh=False)
        bar.update(1)

    try:
        if workers <= 1:
            for task in tasks:
                record(process_series(task))
            return
        with _pool(workers) as pool:
            pending: set[cf.Future] = set()
            queue = iter(tasks)
            # A bounded window of tasks in flight keeps the parent's memory flat whatever the dataset size.
            for task in queue:
                pending.add(pool.submit(process_series, task))
                if len(pending) >= 2 * workers:
                    done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        record(fut.result())
            for fut in cf.as_completed(pending):
                record(fut.result())
    finally:
        bar.close()


def build_cache(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    data_cfg: DataConfig,
    workers: int = 1,
    limit: int | None = None,
    shard: tuple[int, int] = (0, 1),
    retry_errors: bool = False,
    progress: bool = True,
) -> CacheSummary:
    """Preprocess the competition folder ``data_dir`` into the cache folder ``out`` (resumable; see module doc)."""
    data_dir, out = Path(data_dir), Path(out)
    if not data_dir.is_dir():
        raise CacheError(f"competition data folder {data_dir} does not exist")
    paths.ensure_parent(out)
    t0 = time.perf_counter()
    out.mkdir(exist_ok=True)
    (out / SERIES_DIR).mkdir(exist_ok=True)
    (out / PARTS_DIR).mkdir(exist_ok=True)
    info = ensure_cache_info(out, data_cfg)
    chosen = select_shard(list_series(data_dir), shard, limit)
    summary = CacheSummary(out, selected=len(chosen))
    todo = []
    for uid in chosen:
        part = part_path(out, uid)
        if part.is_file() and not (retry_errors and json.loads(part.read_text()).get("status") != "ok"):
            summary.skipped += 1
        else:
            todo.append(uid)
    for p in _stale_temp_files(out, set(chosen)):
        p.unlink(missing_ok=True)
    localizers = by_series(read_localizers(data_dir))
    seg_dir = data_dir / "segmentations"
    tasks = []
    for uid in todo:
        cowseg = seg_dir / f"{uid}_cowseg.nii"
        tasks.append(SeriesTask(uid, str(data_dir / "series" / uid), str(cowseg) if cowseg.is_file() else None,
                                localizers.get(uid, []), info["data"], str(out)))
    _run_tasks(tasks, workers, progress, summary)
    manifest = merge_manifest(out, data_dir)
    ok = manifest.filter(pl.col("status") == "ok")
    summary.mean_ok_bytes = float(ok["nbytes"].mean()) if ok.height else 0.0
    summary.coverage = write_coverage(out, ok.to_dicts())
    summary.seconds = time.perf_counter() - t0
    return summary


def format_summary(summary: CacheSummary) -> str:
    gb = summary.projected_bytes() / 1e9
    shards = max(1, int(np.ceil(summary.projected_bytes() / KAGGLE_OUTPUT_LIMIT_BYTES)))
    lines = [
        f"cache {summary.out}: {summary.selected} series selected, {summary.skipped} already done, "
        f"{summary.done} processed ({dict(summary.status)}) in {summary.seconds:.1f} s",
        f"projected cache size for the full {FULL_DATASET_SERIES:,}-series dataset: {gb:.2f} GB "
        f"(mean {summary.mean_ok_bytes / 1e6:.2f} MB per series; {shards} shard(s) fit Kaggle's ~20 GB output each)",
    ]
    if summary.coverage:
        lines += ["ROI coverage of the localizer points:", format_coverage(summary.coverage),
                  *coverage_warnings(summary.coverage)]
    if summary.unexpected:
        lines.append(f"{len(summary.unexpected)} series failed with an unexpected error (a bug?), first: "
                     f"{summary.unexpected[0]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="competition folder (train.csv, series/); default: KAGGLE_UTILS_DATA_DIR "
                        "or the Kaggle input")
    parser.add_argument("--out", help="cache folder to create or resume; default: KAGGLE_UTILS_CACHE_DIR")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (decoding holds the GIL)")
    parser.add_argument("--limit", type=int, default=None, help="process at most N series (of this shard)")
    parser.add_argument("--config", help="YAML experiment config; only its data section matters here")
    parser.add_argument("--shard", help="I/N: process every N-th series starting at I (0-based)")
    parser.add_argument("--retry-errors", action="store_true", help="redo series recorded with an error")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--merge", nargs="+", metavar="SHARD_DIR",
                        help="instead of preprocessing: merge shard cache folders into --out (manifest only)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.out_shape=[32,128,128]")


def run(args: argparse.Namespace) -> int:
    out = paths.cache_dir(args.out, must_exist=False)
    if args.merge:
        manifest = merge_shard_folders([Path(d) for d in args.merge], out)
        print(f"merged {len(args.merge)} shard folder(s) into {out / MANIFEST_NAME}: {manifest.height} series")
        return 0
    if args.workers < 1:
        raise CacheError(f"--workers must be at least 1, got {args.workers}")
    cfg = load_config(args.config, args.overrides)
    summary = build_cache(paths.data_dir(args.data_dir), out, cfg.data, workers=args.workers, limit=args.limit,
                          shard=parse_shard(args.shard), retry_errors=args.retry_errors,
                          progress=not args.no_progress)
    print(format_summary(summary))
    return 1 if summary.unexpected else 0
