"""Learned CoW locator: a small 3D CNN on a coarse whole-volume grid predicts the Circle of Willis centre.

The same code trains (CPU here, CUDA on Kaggle) and serves. The network outputs a heatmap over a coarse grid; the
centre is its soft-argmax. It is "unsure" when the heatmap's mass near its peak is low or the point lies outside the
head, and then the configured fallback locator places the box (with a note saying so).

Targets: synthetic series know their CoW centre (``cow_centre_lps`` from the pose). On real data two estimates stand
in for it: a series with a vessel label map (``segmentations/<uid>_cowseg.nii``, 178 series, positives and negatives)
gives the mean over its ring labels of label centroid minus that location's offset from the landmark table
(``cowseg_cow_centre``); any other positive series gives the same mean over its localizer points
(``LOCATION_OFFSET_MM``, about +-10 mm).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kaggle_utils.roi import RoiBox, get_locator, register_locator
from kaggle_utils.schema import COWSEG_LABEL_TO_COL, ID_COL, SOP_COL

log = logging.getLogger(__name__)

COARSE_SHAPE = (40, 40, 40)
# CoW centre in the synthetic head frame (mean of ACom, basilar tip and ICA termini, phantom template).
SYNTH_COW_HEAD_MM = np.array([0.0, 0.0, 5.25])
# Offset (LPS mm) of each location's typical aneurysm site from the CoW centre, from the MNI152 landmark table
# (``real_anatomy/mni152/cow_landmarks_lps_mm.csv``, CoW centre ~ (0, -1.6, -18)). A localizer point minus this
# offset estimates the CoW centre to about +-10 mm.
LOCATION_OFFSET_MM: dict[str, tuple[float, float, float]] = {
    "Left Infraclinoid Internal Carotid Artery": (12.0, -2.0, -16.0),
    "Right Infraclinoid Internal Carotid Artery": (-12.0, -2.0, -16.0),
    "Left Supraclinoid Internal Carotid Artery": (14.0, 1.0, -5.0),
    "Right Supraclinoid Internal Carotid Artery": (-14.0, 1.0, -5.0),
    "Left Middle Cerebral Artery": (37.0, -10.0, -3.0),
    "Right Middle Cerebral Artery": (-37.0, -10.0, -3.0),
    "Anterior Communicating Artery": (-1.0, -10.0, 2.0),
    "Left Anterior Cerebral Artery": (1.0, -25.0, 6.0),
    "Right Anterior Cerebral Artery": (-1.0, -25.0, 6.0),
    "Left Posterior Communicating Artery": (12.0, 3.0, -5.0),
    "Right Posterior Communicating Artery": (-12.0, 3.0, -5.0),
    "Basilar Tip": (0.0, 12.0, -2.0),
    "Other Posterior Circulation": (0.0, 20.0, 0.0),
}


# cowseg labels that sit on the ring around the CoW centre: basilar tip, both PComs, both supraclinoid ICAs, ACom. The
# long segments (other posterior, infraclinoid ICA, MCA, ACA) are left out: their centroids lie 11-22 mm from their
# location's aneurysm-site offset, these six 2-8 mm (synthetic masks, 60 series), and the six errors largely cancel
# (the basilar tip label sits 8 mm low, the supraclinoid ICAs and ACom 1-3 mm high): 2.0 mm median over 237 series.
COWSEG_RING_LABELS: tuple[int, ...] = (2, 3, 4, 7, 8, 13)


def synth_cow_centre_lps(pose: dict) -> np.ndarray:
    """CoW centre of a synthetic series in LPS mm from its truth ``pose`` (world = scale * R @ head + t)."""
    rot = np.asarray(pose["rotation"], float)
    return float(pose["scale"]) * rot @ SYNTH_COW_HEAD_MM + np.asarray(pose["translation"], float)


def cowseg_cow_centre(nifti_path: str | Path, volume: Any = None) -> tuple[np.ndarray | None, tuple[int, ...]]:
    """CoW centre (LPS mm) from a ``*_cowseg.nii`` vessel label map, and the ring labels it used.

    The mean over the ring labels present (``COWSEG_RING_LABELS``) of the label's voxel centroid minus its location's
    offset (``LOCATION_OFFSET_MM``). None when no ring label is present. With the loaded ``volume`` of a series whose
    geometry the loader guessed, the labels are aligned by pixel index, as the cache aligns them.
    """
    from kaggle_utils.preprocess import read_label_map  # lazy: preprocess imports the ROI registry

    labels, affine = read_label_map(nifti_path, volume)
    estimates, used = [], []
    for value in COWSEG_RING_LABELS:
        index = np.argwhere(labels == value)
        if len(index) == 0:
            continue
        ras = affine @ np.append(index.mean(axis=0)[:3], 1.0)
        lps = np.array([-ras[0], -ras[1], ras[2]])
        estimates.append(lps - np.asarray(LOCATION_OFFSET_MM[COWSEG_LABEL_TO_COL[value]]))
        used.append(value)
    if not estimates:
        return None, ()
    return np.mean(estimates, axis=0), tuple(used)


def coarse_input(array: np.ndarray, shape: tuple[int, int, int] = COARSE_SHAPE) -> np.ndarray:
    """The whole canonical volume resampled to ``shape`` (trilinear), robustly scaled to about [0, 1]."""
    a = np.asarray(array, np.float32)
    lo, hi = np.percentile(a[:: max(1, a.shape[0] // 16)], (1.0, 99.5))
    a = np.clip((a - lo) / max(float(hi - lo), 1e-6), 0.0, 1.5).astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    return F.interpolate(t.float(), size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()


def voxel_to_unit(voxel: np.ndarray, volume_shape: tuple[int, ...]) -> np.ndarray:
    """Voxel index (z, y, x) to [-1, 1] coordinates of the coarse grid (align_corners=True)."""
    n = np.asarray(volume_shape, float) - 1.0
    return 2.0 * np.asarray(voxel, float) / np.maximum(n, 1.0) - 1.0


def unit_to_voxel(unit: np.ndarray, volume_shape: tuple[int, ...]) -> np.ndarray:
    n = np.asarray(volume_shape, float) - 1.0
    return (np.asarray(unit, float) + 1.0) / 2.0 * n


class HeatmapLocatorNet(nn.Module):
    """Four conv stages (stride 2 twice) to a one-channel heatmap at 1/4 resolution; soft-argmax gives the centre."""

    def __init__(self, width: int = 12):
        super().__init__()

        def block(i, o, stride):
            return nn.Sequential(nn.Conv3d(i, o, 3, stride, 1), nn.InstanceNorm3d(o, affine=True), nn.SiLU())

        self.features = nn.Sequential(block(1, width, 2), block(width, width * 2, 2), block(width * 2, width * 2, 1),
                                      block(width * 2, width * 2, 1))
        self.head = nn.Conv3d(width * 2, 1, 1)

    def forward(self, batch: dict) -> dict:
        x = batch["image"]
        logits = self.head(self.features(x))[:, 0]  # (b, d, h, w)
        b, d, h, w = logits.shape
        prob = logits.flatten(1).softmax(-1).view(b, d, h, w)
        axes = [torch.linspace(-1, 1, n, device=x.device) for n in (d, h, w)]
        centre = torch.stack([(prob.sum(dim=(2, 3)) * axes[0]).sum(-1), (prob.sum(dim=(1, 3)) * axes[1]).sum(-1),
                              (prob.sum(dim=(1, 2)) * axes[2]).sum(-1)], dim=-1)
        out = {"logits": logits, "prob": prob, "centre": centre}
        if "target" in batch:
            # L1 in mm: unit coordinates scaled by half the volume's extent per axis.
            half = batch["half_extent_mm"]
            out["loss"] = ((centre - batch["target"]).abs() * half).mean()
        return out


@dataclass
class LocatorSample:
    image: np.ndarray  # COARSE_SHAPE float32
    target_unit: np.ndarray  # (3,) in [-1, 1]
    half_extent_mm: np.ndarray  # (3,)


def make_sample(volume: Any, cow_centre_lps: np.ndarray) -> LocatorSample:
    shape = volume.array.shape
    voxel = volume.lps_to_voxel(np.asarray(cow_centre_lps, float))[0]
    half = (np.asarray(shape, float) - 1.0) * np.asarray(volume.spacing, float) / 2.0
    return LocatorSample(coarse_input(volume.array), voxel_to_unit(voxel, shape).astype(np.float32),
                         half.astype(np.float32))


def _batch(samples: list[LocatorSample], device: torch.device) -> dict:
    return {
        "image": torch.from_numpy(np.stack([s.image for s in samples])[:, None]).to(device),
        "target": torch.from_numpy(np.stack([s.target_unit for s in samples])).to(device),
        "half_extent_mm": torch.from_numpy(np.stack([s.half_extent_mm for s in samples])).to(device),
    }


def train_locator(samples: list[LocatorSample], *, steps: int = 200, lr: float = 3e-3, batch_size: int = 4,
                  seed: int = 0, device: str | None = None, width: int = 12) -> tuple[HeatmapLocatorNet, list[float]]:
    """Train a heatmap locator on ``samples``; returns the model (eval mode, on CPU) and the per-step loss (mm)."""
    torch.manual_seed(seed)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = HeatmapLocatorNet(width).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    losses = []
    model.train()
    for _ in range(steps):
        idx = rng.choice(len(samples), size=min(batch_size, len(samples)), replace=False)
        with torch.autocast(dev.type, enabled=dev.type == "cuda"):
            out = model(_batch([samples[i] for i in idx], dev))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    return model.cpu().eval(), losses


def save_locator(model: HeatmapLocatorNet, path: str | Path) -> None:
    torch.save({"state_dict": model.state_dict(), "width": model.head.in_channels // 2}, Path(path))


def load_locator(path: str | Path) -> HeatmapLocatorNet:
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = HeatmapLocatorNet(int(ckpt["width"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


@torch.no_grad()
def predict_centre(model: HeatmapLocatorNet, volume: Any) -> tuple[np.ndarray, float]:
    """CoW centre (voxel z, y, x) and the heatmap mass within one coarse cell of its peak (confidence)."""
    x = torch.from_numpy(coarse_input(volume.array))[None, None]
    out = model({"image": x})
    prob = out["prob"][0]
    peak = np.unravel_index(int(prob.argmax()), prob.shape)
    sl = tuple(slice(max(0, p - 1), p + 2) for p in peak)
    mass = float(prob[sl].sum())
    return unit_to_voxel(out["centre"][0].numpy(), volume.array.shape), mass


@register_locator("learned")
class LearnedLocator:
    """Box centred on the learned CoW prediction; the fallback locator places it when the model is unsure.

    Config (DataConfig, read with defaults): ``learned_locator_weights`` (path), ``learned_locator_fallback``
    (registry name, default "heuristic"), ``learned_locator_min_mass`` (peak mass below which it is unsure).
    """

    def __init__(self, model: HeatmapLocatorNet | None = None):
        self._model = model

    def _get_model(self, data_cfg: Any) -> HeatmapLocatorNet | None:
        if self._model is None:
            weights = getattr(data_cfg, "learned_locator_weights", None)
            if weights:
                self._model = load_locator(weights)
        return self._model

    def locate(self, volume: Any, data_cfg: Any) -> RoiBox:
        fallback = getattr(data_cfg, "learned_locator_fallback", "heuristic")
        min_mass = float(getattr(data_cfg, "learned_locator_min_mass", 0.05))
        model = self._get_model(data_cfg)
        reason = None
        if model is None:
            reason = "no learned_locator_weights configured"
        else:
            centre, mass = predict_centre(model, volume)
            shape = np.asarray(volume.array.shape, float)
            if mass < min_mass:
                reason = f"heatmap peak mass {mass:.3f} < {min_mass}"
            elif np.any(centre < 0) or np.any(centre > shape - 1):
                reason = "prediction outside the volume"
            else:
                sample = volume.array[tuple(int(round(c)) for c in centre)]
                if not np.isfinite(sample):
                    reason = "prediction on a non-finite voxel"
        if reason is not None:
            note = f"ROI: learned locator unsure ({reason}); fell back to '{fallback}'"
            log.info(note)
            box = get_locator(fallback).locate(volume, data_cfg)
            return RoiBox(box.centre, box.size_mm, box.locator, (*box.notes, note))
        size = tuple(float(s) for s in data_cfg.roi_size_mm)
        return RoiBox(tuple(float(c) for c in centre), size, "learned", ())  # type: ignore[arg-type]


class LocatorTarget(NamedTuple):
    """One training series of the learned locator: its folder, how its CoW centre is known, and the centre (LPS mm;
    None until the series is loaded, for the real-data estimates) or the label map it comes from."""

    folder: Path
    source: str  # "synth-truth", "cowseg-centroid" or "localizer-offset"
    centre_lps: np.ndarray | None = None
    cowseg: Path | None = None


def competition_targets(root: Path, max_series: int | None = None) -> list[LocatorTarget]:
    """The training series of a competition folder and where each one's CoW centre comes from.

    A synthetic competition (``synth_truth.json``) gives the true centre ("synth-truth"). A real one gives every series
    with a vessel label map ``segmentations/<uid>_cowseg.nii`` ("cowseg-centroid", positives and negatives alike),
    then every other positive series ("localizer-offset", about +-10 mm). Both are resolved on the loaded volume.
    """
    import json

    truth_path = root / "synth_truth.json"
    out: list[LocatorTarget] = []
    if truth_path.is_file():
        doc = json.loads(truth_path.read_text())
        for s in doc["series"].values():
            if s["split"] == "train":
                out.append(LocatorTarget(root / s["folder"], "synth-truth", synth_cow_centre_lps(s["pose"])))
    else:
        from kaggle_utils.localizers import read_localizers

        seg_dir = root / "segmentations"
        masks = sorted(seg_dir.glob("*_cowseg.nii")) if seg_dir.is_dir() else []
        for mask in masks:
            uid = mask.name[: -len("_cowseg.nii")]
            if (root / "series" / uid).is_dir():
                out.append(LocatorTarget(root / "series" / uid, "cowseg-centroid", cowseg=mask))
        with_mask = {t.folder.name for t in out}
        for uid in read_localizers(root, missing_ok=not out)[ID_COL].unique(maintain_order=True):
            if uid not in with_mask:
                out.append(LocatorTarget(root / "series" / uid, "localizer-offset"))
    return out[:max_series] if max_series else out


def _localizer_centre(volume: Any, rows: list[dict]) -> np.ndarray:
    """Mean over a series' localizer rows (``localizers.read_localizers``) of point minus its location's offset."""
    pts = []
    for r in rows:
        vox = volume.voxel_of(r[SOP_COL], r["x"], r["y"], r["frame"])
        lps = volume.voxel_to_lps(np.asarray(vox, float)[None])[0]
        pts.append(lps - np.asarray(LOCATION_OFFSET_MM[r["location"]]))
    return np.mean(pts, axis=0)


def resolve_centre(target: LocatorTarget, volume: Any, localizers: dict[str, list[dict]]) -> np.ndarray | None:
    """The CoW centre (LPS mm) of ``target`` on its loaded ``volume``; None (logged) when its source gives none: a
    label map without ring labels falls back to the series' localizer points, if it has any."""
    if target.centre_lps is not None:
        return np.asarray(target.centre_lps, float)
    uid = target.folder.name
    if target.cowseg is not None:
        centre, _ = cowseg_cow_centre(target.cowseg, volume)
        if centre is not None:
            return centre
        log.info("%s: no ring label (%s) in the label map", target.cowseg, COWSEG_RING_LABELS)
    rows = localizers.get(uid)
    if rows:
        return _localizer_centre(volume, rows)
    log.info("%s: no CoW centre (no ring label and no localizer point); left out of the locator's training", uid)
    return None


def add_arguments(parser) -> None:
    parser.add_argument("competition", type=Path, help="competition folder (synthetic or real layout)")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.pt)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--max-series", type=int, default=None)
    parser.add_argument("--device", default=None)


def run(args) -> int:
    from kaggle_utils.dicom import load_series
    from kaggle_utils.localizers import by_series, read_localizers

    targets = competition_targets(args.competition, args.max_series)
    needs_points = any(t.centre_lps is None for t in targets)
    localizers = by_series(read_localizers(args.competition, missing_ok=True)) if needs_points else {}
    samples, used = [], {}
    for target in targets:
        volume = load_series(target.folder)
        centre = resolve_centre(target, volume, localizers)
        if centre is None:
            continue
        samples.append(make_sample(volume, centre))
        used[target.source] = used.get(target.source, 0) + 1
    if not samples:
        raise SystemExit(f"{args.competition}: no series with a CoW centre to train on (no synth_truth.json, no "
                         "segmentations/*_cowseg.nii with ring labels, no localizer points)")
    model, losses = train_locator(samples, steps=args.steps, device=args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_locator(model, args.out)
    sources = ", ".join(f"{n} {name}" for name, n in sorted(used.items()))
    print(f"trained on {len(samples)} series ({sources}); loss first/last 10 steps "
          f"{np.mean(losses[:10]):.1f} / {np.mean(losses[-10:]):.1f} mm; wrote {args.out}")
    return 0
