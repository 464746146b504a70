"""Prediction shared by validation and inference: one pass over the ROI, or windows of the training crop's size
(``infer.windowed``) keeping each column's largest logit over the windows; optional L/R flip, labels mapped back."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn as nn

from kaggle_utils.config import ConfigError, ExperimentConfig
from kaggle_utils.schema import LR_SWAP_PERM


def autocast_for(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA when enabled; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def window_starts(extent: int, size: int, step: int) -> list[int]:
    """Start indices of windows of ``size`` every ``step`` voxels over ``extent``; the last one ends flush with the
    extent, so every voxel is covered (one window at 0 when ``size >= extent``)."""
    if size >= extent:
        return [0]
    starts = list(range(0, extent - size + 1, max(1, step)))
    if starts[-1] != extent - size:
        starts.append(extent - size)
    return starts


def inference_windows(model: nn.Module, shape_zyx: tuple[int, int, int],
                      cfg: ExperimentConfig) -> tuple[tuple[int, int, int], list[tuple[int, int, int]]] | None:
    """The window size (Z, Y, X) and origins that ``infer.windowed`` scores a ROI of ``shape_zyx`` with: the training
    crop's size (``train.crop_slices`` x ``train.crop_inplane``; 0 = the whole extent), stepped by ``infer.window_step``
    of it. None (score the ROI in one pass) when windowing is off, the model does not take crop origins, or the window
    is the whole ROI."""
    if not cfg.infer.windowed or not getattr(model, "takes_origin", False):
        return None
    if not 0.0 < cfg.infer.window_step <= 1.0:
        raise ConfigError(f"infer.window_step must be in (0, 1], got {cfg.infer.window_step}")
    crop = (cfg.train.crop_slices, cfg.train.crop_inplane, cfg.train.crop_inplane)
    size = tuple(min(c, n) if c > 0 else n for c, n in zip(crop, shape_zyx))
    if size == tuple(shape_zyx):
        return None
    axes = [window_starts(n, k, round(k * cfg.infer.window_step)) for n, k in zip(shape_zyx, size)]
    return size, [(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]]


def windowed_forward(model: nn.Module, x: torch.Tensor, size: tuple[int, int, int],
                     origins: list[tuple[int, int, int]], max_crops: int = 64) -> dict:
    """Score (B, C, Z, Y, X) window by window (crops batched up to ``max_crops``); each column's logit is its maximum
    over the windows, and each slice's logits their maximum over the windows that scored it."""
    b, depth = x.shape[0], x.shape[2]
    per_chunk = max(1, max_crops // b)
    logits, slice_logits = None, None
    for start in range(0, len(origins), per_chunk):
        chunk = origins[start : start + per_chunk]
        crops = torch.cat([x[:, :, z:z + size[0], y:y + size[1], w:w + size[2]] for z, y, w in chunk])
        origin = torch.tensor(chunk, dtype=torch.float32, device=x.device).repeat_interleave(b, dim=0)
        out = model({"image": crops, "origin": origin})
        part = out["logits"].float().view(len(chunk), b, -1).amax(dim=0)
        logits = part if logits is None else torch.maximum(logits, part)
        if "slice_logits" in out:
            if slice_logits is None:
                slice_logits = torch.full((b, depth, out["slice_logits"].shape[-1]), float("-inf"), device=x.device)
            per_window = out["slice_logits"].float().view(len(chunk), b, *out["slice_logits"].shape[1:])
            local_z = out["slice_z"].to(x.device, torch.long)  # the same stack centres in every window
            for k, (z, _, _) in enumerate(chunk):
                slice_logits[:, local_z + z] = torch.maximum(slice_logits[:, local_z + z], per_window[k])
    result = {"logits": logits}
    if slice_logits is not None:  # slices no window scored stay at -inf
        scored = torch.isfinite(slice_logits[0, :, 0]).nonzero().flatten()
        result.update(slice_logits=slice_logits[:, scored], slice_z=scored.cpu())
    return result


@torch.no_grad()
def _forward_probs(model: nn.Module, images_uint8: torch.Tensor, cfg: ExperimentConfig,
                   lr_flip: bool) -> tuple[np.ndarray, dict]:
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 5:
        raise ValueError(f"predict_probs expects uint8 (B, C, Z, Y, X), got {images_uint8.dtype} "
                         f"{tuple(images_uint8.shape)}")
    model.eval()
    device = next(model.parameters()).device
    x = images_uint8.to(device)
    if lr_flip:
        x = torch.flip(x, dims=[-1])
    windows = inference_windows(model, tuple(x.shape[2:]), cfg)
    with autocast_for(device, cfg.train.amp):
        out = model({"image": x}) if windows is None else windowed_forward(model, x, *windows)
    probs = torch.sigmoid(out["logits"].float()).cpu().numpy()
    if lr_flip:
        probs = probs[:, list(LR_SWAP_PERM)]
    return probs.astype(np.float32), out


def predict_probs(model: nn.Module, images_uint8: torch.Tensor, cfg: ExperimentConfig,
                  lr_flip: bool = False) -> np.ndarray:
    """Probabilities (B, 14) in LABEL_COLS order for uint8 ROI volumes (B, C, Z, Y, X).

    With ``lr_flip`` the volumes are mirrored along the canonical x axis (patient left/right) before the model and
    the outputs are mapped back to the original label order, so the result can be averaged with ``lr_flip=False``.
    """
    return _forward_probs(model, images_uint8, cfg, lr_flip)[0]


def predict_with_slices(model: nn.Module, images_uint8: torch.Tensor,
                        cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``predict_probs`` (no flip) plus, for models that score slices, the per-slice Aneurysm Present probability
    (B, S) and the ROI z index of each scored slice (S,); (probs, None, None) for the others."""
    probs, out = _forward_probs(model, images_uint8, cfg, lr_flip=False)
    if "slice_logits" not in out or "slice_z" not in out:
        return probs, None, None
    slice_present = torch.sigmoid(out["slice_logits"][..., -1].float()).cpu().numpy()
    return probs, slice_present, out["slice_z"].cpu().numpy()
