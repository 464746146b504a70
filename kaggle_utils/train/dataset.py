"""Training data from the preprocessed cache only: labels, localizer points, ROI volumes, live augmentation, sampling.

A sample is one series: its ROI volume ``image`` uint8 (C, Z, Y, X) (optionally a z-crop of it), the 14 targets and
its localizer points in (augmented) voxel coordinates. 2.5D stacks are cut from the volume inside the model, so the
same sample feeds the 2.5D, seed and 3D models. Augmentation is drawn from a per-sample seed that the sampler hands
out, so a run is reproducible whatever the number of loader workers and resumes exactly in the middle of an epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from kaggle_utils.cache import CACHE_VERSION, LABELS_NAME, CacheError, entry_path, read_cache_info, read_manifest
from kaggle_utils.config import AugConfig, DataConfig, ExperimentConfig, TrainConfig, config_hash, from_dict, to_dict
from kaggle_utils.schema import ID_COL, LABEL_COLS, LOCATION_COLS, LR_SWAP_PERM, LR_SWAP_PERM_LOCATIONS, PRESENT_COL

MAX_POINTS = 8  # localizer points kept per series (the real data has at most a handful)


# ---------------------------------------------------------------------------------------------------------------------
# Reading the cache (through the cache module's reader API)


def cache_data_config(info: dict) -> DataConfig:
    """The DataConfig a cache was made with."""
    return from_dict(DataConfig, info["data"], "cache_info.json:data")


def check_cache_compatible(info: dict, cfg: ExperimentConfig, cache: Path) -> None:
    """Refuse a cache made by another cache version or with a data config other than ``cfg.data``, naming both."""
    if str(info["cache_version"]) != str(CACHE_VERSION):
        raise CacheError(f"cache {cache} has cache_version {info['cache_version']}, this kit reads cache_version "
                         f"{CACHE_VERSION}; rebuild it with `python -m kaggle_utils preprocess`")
    wanted = config_hash(cfg.data)
    if info["config_hash"] != wanted:
        ours = to_dict(cfg.data)
        fields = sorted(k for k in set(ours) | set(info["data"]) if ours.get(k) != info["data"].get(k))
        raise CacheError(f"cache {cache} was made with data config {info['config_hash']}, the training config has "
                         f"data config {wanted} (fields differ: {fields}); train with the data section the cache was "
                         f"built with (in {Path(cache) / 'cache_info.json'}) or rebuild the cache with this config")


def read_cache_labels(cache: Path) -> pl.DataFrame:
    """Labels (train.csv columns) of the series the cache holds with status ok, in manifest order."""
    cache = Path(cache)
    path = cache / LABELS_NAME
    if not path.is_file():
        raise CacheError(f"{path} does not exist: the cache holds no labels")
    labels = pl.read_csv(path, schema_overrides={ID_COL: pl.Utf8})
    missing = [c for c in (ID_COL, *LABEL_COLS) if c not in labels.columns]
    if missing:
        raise CacheError(f"{path} lacks column(s) {missing}")
    manifest = read_manifest(cache)
    ok = manifest.filter(pl.col("status") == "ok").select(ID_COL)
    return ok.join(labels, on=ID_COL, how="inner", maintain_order="left")


def points_array(points: list | None) -> np.ndarray:
    """Manifest ``points`` (list of {location, z, y, x}) -> float32 (P, 4) rows [location index, z, y, x]."""
    rows = []
    for p in points or []:
        # points outside the ROI (inside=False) have no voxel in the cached volume
        if p is None or p.get("location") not in LOCATION_COLS or p.get("inside") is False:
            continue
        rows.append([LOCATION_COLS.index(p["location"]), float(p["z"]), float(p["y"]), float(p["x"])])
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


@dataclass
class TrainingCache:
    """What training needs from a cache, read once: labels, series files and points, aligned by row."""

    root: Path
    info: dict
    data_cfg: DataConfig
    uids: list[str]
    labels: pl.DataFrame  # train.csv rows aligned with uids
    targets: np.ndarray  # float32 (n, 14) in LABEL_COLS order
    files: list[Path]
    points: list[np.ndarray]  # per series (P, 4) [location index, z, y, x] in cache voxels
    shape: tuple[int, int, int, int] = field(default=(0, 0, 0, 0))  # (C, Z, Y, X) of every cached image



def open_training_cache(cache: Path, cfg: ExperimentConfig | None = None) -> TrainingCache:
    """Read cache_info, manifest and labels; with ``cfg`` also check the cache matches its data config."""
    cache = Path(cache)
    if not cache.is_dir():
        raise CacheError(f"cache folder {cache} does not exist")
    info = read_cache_info(cache)
    if cfg is not None:
        check_cache_compatible(info, cfg, cache)
    data_cfg = cache_data_config(info)
    labels = read_cache_labels(cache)
    manifest = read_manifest(cache).filter(pl.col("status") == "ok")
    by_uid = {row[ID_COL]: row for row in manifest.iter_rows(named=True)}
    uids = labels[ID_COL].to_list()
    files, points = [], []
    for uid in uids:
        row = by_uid[uid]
        files.append(entry_path(cache, row.get("file"), uid))
        points.append(points_array(row.get("points")))
    n_chans = len(data_cfg.ct_windows)
    shape = (n_chans, *data_cfg.out_shape)
    targets = labels.select(list(LABEL_COLS)).to_numpy().astype(np.float32)
    return TrainingCache(cache, info, data_cfg, uids, labels, targets, files, points, shape)


def load_image(path: Path) -> np.ndarray:
    """The cached ROI volume uint8 (C, Z, Y, X) of one series."""
    try:
        with np.load(path) as npz:
            image = npz["image"]
    except FileNotFoundError:
        raise CacheError(f"cached series file {path} does not exist") from None
    except (OSError, ValueError, KeyError) as exc:
        raise CacheError(f"cached series file {path} is unreadable: {exc}") from None
    if image.dtype != np.uint8 or image.ndim != 4:
        raise CacheError(f"cached series file {path}: image must be uint8 (C, Z, Y, X), got {image.dtype} "
                         f"{image.shape}")
    return image


# ---------------------------------------------------------------------------------------------------------------------
# Augmentation (pure functions of the sample and a numpy Generator)


def lr_flip(image: np.ndarray, points: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror patient left/right (the canonical x axis) and swap the paired L/R labels and point locations with it."""
    flipped = np.ascontiguousarray(image[..., ::-1])
    pts = points.copy()
    if len(pts):
        pts[:, 3] = image.shape[-1] - 1 - pts[:, 3]
        pts[:, 0] = np.asarray(LR_SWAP_PERM_LOCATIONS)[pts[:, 0].astype(np.int64)]
    return flipped, pts, target[list(LR_SWAP_PERM)]


def inplane_affine(image: np.ndarray, points: np.ndarray, angle_deg: float, zoom: float) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """Rotate by ``angle_deg`` and zoom by ``zoom`` every (y, x) slice about the centre; points move along."""
    c, z, h, w = image.shape
    theta = math.radians(angle_deg)
    cos, sin = math.cos(theta) / zoom, math.sin(theta) / zoom
    # affine_grid maps output normalised coords to input normalised coords (x first, then y).
    mat = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32)[None]
    src = torch.from_numpy(image.reshape(1, c * z, h, w).astype(np.float32))
    grid = F.affine_grid(mat, [1, c * z, h, w], align_corners=False)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out_img = out.round().clamp(0, 255).to(torch.uint8).numpy().reshape(c, z, h, w)
    pts = points.copy()
    if len(pts):
        # invert the sampling map: input normalised p_in = A p_out  =>  p_out = A^-1 p_in
        xn = (2 * pts[:, 3] + 1) / w - 1
        yn = (2 * pts[:, 2] + 1) / h - 1
        inv = np.linalg.inv(np.array([[cos, -sin], [sin, cos]]))
        xo, yo = inv @ np.stack([xn, yn])
        pts[:, 3] = ((xo + 1) * w - 1) / 2
        pts[:, 2] = ((yo + 1) * h - 1) / 2
    return out_img, pts


def intensity_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Per-channel gain and offset, clipped back to uint8."""
    c = image.shape[0]
    gain = 1.0 + rng.uniform(-strength, strength, size=(c, 1, 1, 1))
    offset = rng.uniform(-strength, strength, size=(c, 1, 1, 1)) * 255.0 / 4.0
    return np.clip(image.astype(np.float32) * gain + offset, 0, 255).round().astype(np.uint8)


def augment(image: np.ndarray, points: np.ndarray, target: np.ndarray, aug: AugConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Live augmentation of one sample: L/R flip with label swap, small rotation / zoom, intensity jitter."""
    if aug.lr_flip_p > 0 and rng.random() < aug.lr_flip_p:
        image, points, target = lr_flip(image, points, target)
    if aug.rotate_deg > 0 or aug.scale > 0:
        angle = rng.uniform(-aug.rotate_deg, aug.rotate_deg)
        zoom = 1.0 + rng.uniform(-aug.scale, aug.scale)
        image, points = inplane_affine(image, points, angle, zoom)
    if aug.intensity_jitter > 0:
        image = intensity_jitter(image, rng, aug.intensity_jitter)
    return image, points, target


def relabel_kept(points: np.ndarray, inside: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Target after a crop: a located location stays positive only if one of its points is inside the crop; a
    positive location without any point keeps its label (nothing tells where it is). Present = any location."""
    new_target = target.copy()
    located = set(points[:, 0].astype(int).tolist())
    kept = set(points[inside, 0].astype(int).tolist())
    for loc in located:
        new_target[loc] = 1.0 if loc in kept else 0.0
    new_target[LABEL_COLS.index(PRESENT_COL)] = float(new_target[: len(LOCATION_COLS)].max() > 0)
    return new_target


def inplane_crop(image: np.ndarray, points: np.ndarray, target: np.ndarray, size: int, pos_crop_p: float,
                 rng: np.random.Generator, other_yx: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Cut a ``size`` x ``size`` in-plane patch; returns it with points, relabelled target and its (y0, x0) origin.

    A positive's patch holds one of its points (anywhere in the central half) with chance ``pos_crop_p``; other
    patches are centred on a site drawn from ``other_yx`` (the localizer (y, x) of the training split) when given, so
    negatives show the anatomy where aneurysms occur, else anywhere.
    """
    _, _, h, w = image.shape
    if size <= 0 or (size >= h and size >= w):
        return image, points, target, (0, 0)
    ph, pw = min(size, h), min(size, w)
    own = len(points) > 0 and rng.random() < pos_crop_p
    if own or (other_yx is not None and len(other_yx)):
        cy, cx = points[rng.integers(len(points)), 2:4] if own else other_yx[rng.integers(len(other_yx))]
        jy, jx = rng.uniform(-0.25, 0.25, size=2) * (ph, pw)
        y0, x0 = int(round(cy - ph / 2 + jy)), int(round(cx - pw / 2 + jx))
    else:
        y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    y0, x0 = int(np.clip(y0, 0, h - ph)), int(np.clip(x0, 0, w - pw))
    if len(points):
        inside = ((points[:, 2] >= y0 - 0.5) & (points[:, 2] < y0 + ph - 0.5) & (points[:, 3] >= x0 - 0.5)
                  & (points[:, 3] < x0 + pw - 0.5))
    else:
        inside = np.zeros(0, bool)
    new_target = relabel_kept(points, inside, target)
    pts = points[inside].copy()
    pts[:, 2] -= y0
    pts[:, 3] -= x0
    return np.ascontiguousarray(image[:, :, y0 : y0 + ph, x0 : x0 + pw]), pts, new_target, (y0, x0)


def z_crop(image: np.ndarray, points: np.ndarray, target: np.ndarray, n_slices: int, pos_crop_p: float,
           rng: np.random.Generator, other_z: np.ndarray | None = None, return_start: bool = False
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Cut ``n_slices`` adjacent slices; positives are centred on a localizer point with chance ``pos_crop_p``.

    Other crops are centred on a depth drawn from ``other_z`` (the localizer depths of the whole training split)
    when given, so negative crops show the same anatomy as positive ones and the crop position tells nothing.

    Locations whose points all fall outside the crop become negative; a positive location without any point keeps
    its label (nothing tells where it is).
    """
    depth = image.shape[1]
    if n_slices <= 0 or n_slices >= depth:
        return (image, points, target, 0) if return_start else (image, points, target)
    own = len(points) > 0 and rng.random() < pos_crop_p
    if own or (other_z is not None and len(other_z)):
        zc = points[rng.integers(len(points)), 1] if own else other_z[rng.integers(len(other_z))]
        lo = int(np.clip(round(zc) - rng.integers(1, n_slices - 1) if n_slices > 2 else round(zc), 0,
                         depth - n_slices))
    else:
        lo = int(rng.integers(0, depth - n_slices + 1))
    inside = (points[:, 1] >= lo - 0.5) & (points[:, 1] < lo + n_slices - 0.5) if len(points) else np.zeros(0, bool)
    new_target = relabel_kept(points, inside, target)
    pts = points[inside].copy()
    pts[:, 1] -= lo
    crop = np.ascontiguousarray(image[:, lo : lo + n_slices])
    return (crop, pts, new_target, lo) if return_start else (crop, pts, new_target)


def pad_points(points: np.ndarray) -> np.ndarray:
    """(P, 4) -> (MAX_POINTS, 4) with location -1 marking padding."""
    out = np.full((MAX_POINTS, 4), -1.0, dtype=np.float32)
    n = min(len(points), MAX_POINTS)
    out[:n] = points[:n]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Dataset and sampling


class SeriesDataset(torch.utils.data.Dataset):
    """One item per series. Indexed by ``(row, seed)``: ``seed`` drives the augmentation (None = no augmentation)."""

    def __init__(self, cache: TrainingCache, rows: list[int], cfg: ExperimentConfig, train: bool):
        self.cache = cache
        self.rows = list(rows)
        self.cfg = cfg
        self.train = train
        # localizer depths of this split: where negative crops are centred (see z_crop)
        depths = [cache.points[r][:, 1] for r in self.rows if len(cache.points[r])]
        self.point_depths = np.concatenate(depths) if depths else np.zeros(0, np.float32)
        sites = [cache.points[r][:, 2:4] for r in self.rows if len(cache.points[r])]
        self.point_sites = np.concatenate(sites) if sites else np.zeros((0, 2), np.float32)
        self.images: dict[int, np.ndarray] = {}

    def preload(self) -> None:
        """Read every volume of the split into memory once (small ROI volumes: ~0.9 MB each), so training steps
        no longer wait on decompressing files."""
        for row in self.rows:
            if row not in self.images:
                self.images[row] = load_image(self.cache.files[row])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int | None] | int) -> dict:
        pos, seed = key if isinstance(key, tuple) else (key, None)
        row = self.rows[pos]
        image = self.images[row] if row in self.images else load_image(self.cache.files[row])
        points = self.cache.points[row]
        target = self.cache.targets[row].copy()
        origin = (0, 0, 0)
        if self.train and seed is not None:
            rng = np.random.default_rng(seed)
            image, points, target, z0 = z_crop(image, points, target, self.cfg.train.crop_slices,
                                               self.cfg.train.pos_crop_p, rng, self.point_depths, return_start=True)
            image, points, target = augment(image, points, target, self.cfg.aug, rng)
            image, points, target, (y0, x0) = inplane_crop(image, points, target, self.cfg.train.crop_inplane,
                                                           self.cfg.train.pos_crop_p, rng, self.point_sites)
            origin = (z0, y0, x0)
        return {
            "origin": torch.tensor(origin, dtype=torch.float32),
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "target": torch.from_numpy(target.astype(np.float32)),
            "points": torch.from_numpy(pad_points(points)),
            "row": row,
            "seed": torch.tensor(-1 if seed is None else seed, dtype=torch.int64),  # dense3d's patches draw from it
        }


def subset_indices(targets: np.ndarray, modalities: list[str], pos_rate: float,
                   rng: np.random.Generator) -> np.ndarray:
    """The seed's subset sampler: all positives, negatives drawn evenly across modalities to reach ``pos_rate``."""
    present = targets[:, LABEL_COLS.index(PRESENT_COL)] > 0
    pos = np.flatnonzero(present)
    neg = np.flatnonzero(~present)
    n_neg = min(len(neg), int(round(len(pos) * (1 - pos_rate) / max(pos_rate, 1e-6))))
    groups = {}
    for i in neg:
        groups.setdefault(modalities[i], []).append(i)
    chosen: list[int] = []
    names = sorted(groups)
    pools = {m: list(rng.permutation(groups[m])) for m in names}
    while len(chosen) < n_neg:  # round-robin over modalities so each contributes evenly
        for m in names:
            if pools[m] and len(chosen) < n_neg:
                chosen.append(int(pools[m].pop()))
    return np.concatenate([pos, np.asarray(chosen, dtype=np.int64)])


def epoch_order(n: int, targets: np.ndarray, modalities: list[str], train_cfg: TrainConfig, seed: int, epoch: int,
                hard_scores: np.ndarray | None = None) -> np.ndarray:
    """Positions (into the training rows) visited in ``epoch``: a function of (seed, epoch, hard_scores) only."""
    rng = np.random.default_rng([seed, epoch, 7919])
    repeats = max(1, train_cfg.epoch_repeats)  # crops make every visit a new sample: an epoch can hold several
    pool = np.arange(n)
    if train_cfg.subset_pos_rate > 0:
        pool = subset_indices(targets, modalities, train_cfg.subset_pos_rate, rng)
    if train_cfg.hard_negative_factor > 0 and hard_scores is not None:
        present = targets[pool, LABEL_COLS.index(PRESENT_COL)] > 0
        scores = hard_scores[pool].astype(np.float64)
        neg_mean = scores[~present].mean() if (~present).any() else 0.0
        relative = np.clip(scores / (neg_mean + 1e-6), 0.0, 10.0)  # hardness relative to the average negative
        weights = np.where(present, 1.0, 1.0 + train_cfg.hard_negative_factor * relative)
        return rng.choice(pool, size=len(pool) * repeats, replace=True, p=weights / weights.sum())
    return np.concatenate([rng.permutation(pool) for _ in range(repeats)])


def epoch_batches(order: np.ndarray, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world: int = 1) -> list[list[tuple[int, int]]]:
    """Split an epoch's order into this rank's batches of (position, augmentation seed); drops a ragged last batch."""
    if world > 1:  # every rank gets the same number of items (DistributedSampler-style padding)
        per_rank = math.ceil(len(order) / world)
        order = np.resize(order, per_rank * world)[rank::world]
    aug_seeds = np.random.default_rng([seed, epoch, rank, 104729]).integers(0, 2**31 - 1, size=len(order))
    items = list(zip(order.tolist(), aug_seeds.tolist()))
    n_full = len(items) // batch_size if len(items) >= batch_size else 1
    return [items[i * batch_size : (i + 1) * batch_size] for i in range(n_full)]


def make_loader(dataset: SeriesDataset, batches: list[list], num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over precomputed batches (which makes resuming at a given step trivial)."""
    # its own generator: starting an iterator must not consume the global torch RNG (exact resume depends on it)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                       persistent_workers=False, pin_memory=torch.cuda.is_available(),
                                       generator=torch.Generator().manual_seed(0))


def eval_batches(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[tuple[int, None]]]:
    """All positions once, without augmentation, split across ranks."""
    positions = list(range(n))[rank::world]
    return [[(p, None) for p in positions[i : i + batch_size]] for i in range(0, len(positions), batch_size)]
