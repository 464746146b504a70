"""Every model config: forward pass + one training step (tiny sizes, random init); weights files; predict_probs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import timm
import torch

from kaggle_utils.config import ConfigError, load_config
from kaggle_utils.paths import REPO_ROOT
from kaggle_utils.schema import LABEL_COLS, LOCATION_COLS, LR_SWAP_PERM, N_LOCATIONS
from kaggle_utils.train.models import (
    PACKAGE_LITE0,
    WeightsError,
    build_model,
    convert_lite0_state_dict,
    create_backbone,
    inference_windows,
    predict_probs,
    predict_with_slices,
    resolve_weights_file,
    roi_coords,
    window_starts,
    windowed_forward,
)

CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))
# Shrink every config to test size, keeping its model type and structure.
TINY = {
    "default": ["model.backbone=lcnet_035", "model.image_size=32", "model.seq_hidden=16", "model.head_dim=8",
                "model.slice_stride=2", "data.out_shape=[8,32,32]"],
    "seed_baseline": ["model.backbone=test_efficientnet", "model.image_size=64", "model.hidden_dim=16"],
    "cnn3d": ["model.width=4", "model.head_dim=8"],
    "dense3d": ["model.width=4", "model.head_dim=8", "model.patch_size=[8,16,16]"],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(path, extra=()):
    cfg = load_config(path)
    return load_config(path, [*TINY[cfg.model.name], "model.pretrained_file=", *extra])


def tiny_batch(cfg, batch=2, depth=8, size=32):
    gen = torch.Generator().manual_seed(0)
    chans = len(cfg.data.ct_windows)
    image = torch.randint(0, 256, (batch, chans, depth, size, size), dtype=torch.uint8, generator=gen)
    target = torch.zeros(batch, len(LABEL_COLS))
    points = torch.full((batch, 8, 4), -1.0)
    loc = LOCATION_COLS.index("Left Middle Cerebral Artery")
    target[0, [loc, N_LOCATIONS]] = 1
    points[0, 0] = torch.tensor([loc, 3.0, 10.0, 22.0])
    return {"image": image, "target": target, "points": points, "seed": torch.arange(batch)}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_forward_and_training_step(path):
    assert {"default", "seed_baseline", "cpu_tiny", "default_3d", "kaggle_t4"} <= {p.stem for p in CONFIGS}
    cfg = tiny_config(path)
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = tiny_batch(cfg)
    model.train()
    out = model(batch)
    assert out["logits"].shape == (2, len(LABEL_COLS))
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out["loss"].backward()
    optimizer.step()
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    assert changed > 0.9 * len(before)  # (almost) every parameter receives a gradient
    model.eval()
    with torch.no_grad():
        logits = model({"image": batch["image"]})["logits"]
    assert "loss" not in model({"image": batch["image"]})
    if cfg.model.name != "seed_baseline":  # Aneurysm Present is never below the largest location logit
        assert (logits[:, N_LOCATIONS] >= logits[:, :N_LOCATIONS].max(dim=1).values - 1e-5).all()


def test_predict_probs_flip_maps_back_to_the_original_label_order():
    cfg = tiny_config(REPO_ROOT / "configs" / "cpu_tiny.yaml")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = tiny_batch(cfg)["image"]
    plain = predict_probs(model, images, cfg)
    flipped = predict_probs(model, images, cfg, lr_flip=True)
    mirrored_input = predict_probs(model, torch.flip(images, dims=[-1]), cfg)
    assert plain.shape == (2, 14) and ((plain >= 0) & (plain <= 1)).all()
    np.testing.assert_allclose(flipped, mirrored_input[:, list(LR_SWAP_PERM)], atol=1e-6)
    assert not np.allclose(flipped, plain)
    with pytest.raises(ValueError, match="uint8"):
        predict_probs(model, images.float(), cfg)


def test_window_starts_cover_the_extent_and_end_flush():
    assert window_starts(48, 6, 3) == list(range(0, 43, 3))
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 4, 4) == [0, 4, 6]  # last window moved back to end at 10
    assert window_starts(5, 8, 4) == [0]  # window larger than the extent: one window
    assert window_starts(7, 3, 0) == [0, 1, 2, 3, 4]  # a zero step still advances


def test_inference_windows_follow_the_training_crop():
    cfg = tiny_config(REPO_ROOT / "configs" / "cpu_tiny.yaml", ["train.crop_slices=6", "train.crop_inplane=16"])
    model = build_model(cfg)
    size, origins = inference_windows(model, (8, 32, 32), cfg)
    assert size == (6, 16, 16)
    # z: windows at 0 and 2 (step 3, last flush); y and x: 0, 8, 16 (step 8)
    assert origins == [(z, y, x) for z in (0, 2) for y in (0, 8, 16) for x in (0, 8, 16)]
    whole = tiny_config(REPO_ROOT / "configs" / "cpu_tiny.yaml", ["train.crop_slices=0", "train.crop_inplane=0"])
    assert inference_windows(model, (8, 32, 32), whole) is None  # trained on whole ROIs: one pass
    off = tiny_config(REPO_ROOT / "configs" / "cpu_tiny.yaml", ["infer.windowed=false"])
    assert inference_windows(model, (8, 32, 32), off) is None
    seed = tiny_config(REPO_ROOT / "configs" / "seed_baseline.yaml")
    assert inference_windows(build_model(seed), (8, 32, 32), cfg) is None  # no crop origins: one pass
    with pytest.raises(ConfigError, match="window_step"):  # refused by the config schema, before any model runs
        tiny_config(REPO_ROOT / "configs" / "cpu_tiny.yaml", ["infer.window_step=0"])


def test_windowed_forward_keeps_the_maximum_over_windows_per_column_and_slice():
    cfg = tiny_config(REPO_ROOT / "configs" / "cpu_tiny.yaml", ["train.crop_slices=6", "train.crop_inplane=16"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = tiny_batch(cfg)["image"]
    size, origins = inference_windows(model, tuple(image.shape[2:]), cfg)
    with torch.no_grad():
        out = windowed_forward(model, image, size, origins, max_crops=4)  # several chunks
        each = [model({"image": image[:, :, z:z + size[0], y:y + size[1], x:x + size[2]],
                       "origin": torch.tensor([[z, y, x]] * 2, dtype=torch.float32)}) for z, y, x in origins]
    expected = torch.stack([o["logits"] for o in each]).amax(dim=0)
    torch.testing.assert_close(out["logits"], expected)
    # every slice of the 8 is a stack centre of some window (centres 0, 2, 4 from z=0 and 2, 4, 6 from z=2)
    assert out["slice_z"].tolist() == [0, 2, 4, 6]
    z4 = [o["slice_logits"][:, list(o["slice_z"] + z).index(4)] for o, (z, _, _) in zip(each, origins)]
    torch.testing.assert_close(out["slice_logits"][:, 2], torch.stack(z4).amax(dim=0))
    probs, slice_present, slice_z = predict_with_slices(model, image, cfg)  # the path validation uses
    np.testing.assert_allclose(probs, torch.sigmoid(expected).numpy(), atol=1e-6)
    assert slice_present.shape == (2, 4) and slice_z.tolist() == [0, 2, 4, 6]


def test_lite0_package_weights_map_onto_timm_with_no_missing_keys():
    path = resolve_weights_file(PACKAGE_LITE0)
    state = torch.load(path, map_location="cpu", weights_only=True)
    converted = convert_lite0_state_dict(state)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    missing, unexpected = reference.load_state_dict(converted, strict=False)
    assert not missing and not unexpected
    assert torch.equal(reference.conv_stem.weight, state["_conv_stem.weight"])
    # through the model builder: 6 input channels (stem adapted) and a features-only backbone
    backbone = create_backbone("tf_efficientnet_lite0", 6, PACKAGE_LITE0, num_classes=0)
    assert backbone.conv_stem.weight.shape[1] == 6
    torch.testing.assert_close(backbone.blocks[1][0].conv_pw.weight, state["_blocks.1._expand_conv.weight"])


def test_local_timm_weights_file_and_bad_files(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("lcnet_035", pretrained=False, num_classes=0)
    path = tmp_path / "lcnet.pth"
    torch.save(source.state_dict(), path)
    loaded = create_backbone("lcnet_035", 3, str(path), num_classes=0)
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("lcnet_035", 3, str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="lacks"):
        create_backbone("lcnet_050", 3, str(path))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="could not be read"):
        create_backbone("lcnet_035", 3, str(tmp_path / "junk.pth"))


def test_unknown_model_names_are_config_errors():
    # the config schema refuses unknown names and choices before any model is built
    with pytest.raises(ConfigError, match="unknown model 'resnet_of_dreams'"):
        load_config(None, ["model.name=resnet_of_dreams"])
    with pytest.raises(ConfigError, match="seq_model"):
        tiny_config(REPO_ROOT / "configs" / "cpu_tiny.yaml", ["model.seq_model=lstm"])
    cfg = tiny_config(REPO_ROOT / "configs" / "cpu_tiny.yaml")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, in_chans=5))
    with pytest.raises(ConfigError, match="in_chans"):
        build_model(cfg)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(REPO_ROOT / "configs" / "cpu_tiny.yaml", ["model.dropuot=0.1"])


def test_roi_coords_of_a_crop_against_hand_computed_values():
    # a 48 x 48 crop at (z0, y0, x0) = (4, 48, 0) of a (48, 96, 96) ROI, 2 x 2 feature cells of 24 pixels, stack at 2
    c = roi_coords(torch.tensor([[4.0, 48.0, 0.0]]), torch.tensor([2]), (2, 2), (48.0, 48.0), (48, 96, 96))
    assert c.shape == (1, 1, 3, 2, 2)
    # cell centres at crop pixels 11.5 and 35.5 -> ROI pixels 59.5 / 83.5 (y) and 11.5 / 35.5 (x)
    assert torch.allclose(c[0, 0, 0], torch.full((2, 2), 2 * 6.5 / 48 - 1))
    assert torch.allclose(c[0, 0, 1, :, 0], torch.tensor([0.25, 0.75]))
    assert torch.allclose(c[0, 0, 2, 0, :], torch.tensor([-0.75, -0.25]))
    # the whole ROI is symmetric about its centre
    full = roi_coords(torch.zeros(1, 3), torch.tensor([0, 47]), (6, 6), (96.0, 96.0), (48, 96, 96))
    assert torch.allclose(full[0, 0, 2], -full[0, 0, 2].flip(-1))
    assert torch.allclose(full[0, :, 0, 0, 0], torch.tensor([-1 + 1 / 48, 1 - 1 / 48]))


def test_detect_where_head_never_puts_a_location_above_its_detector():
    cfg = tiny_config(REPO_ROOT / "configs" / "cpu_tiny.yaml", ["model.heat_head=detect_where"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    d = torch.randn(3, cfg.model.head_dim, 4, 4)
    heat, detect, where = model.heat_maps(d)
    assert heat.shape == (3, N_LOCATIONS, 4, 4) and detect.shape == (3, 1, 4, 4)
    assert (heat <= detect + 1e-6).all()  # log_softmax <= 0
    assert torch.allclose(torch.logsumexp(heat, dim=1, keepdim=True), detect, atol=1e-5)
    batch = tiny_batch(cfg)
    batch["origin"] = torch.tensor([[0.0, 0.0, 0.0], [2.0, 5.0, 7.0]])
    model.train()
    out = model(batch)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.detect_head.weight.grad.abs().sum() > 0 and model.heat_head.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="heat_head"):
        build_model(tiny_config(REPO_ROOT / "configs" / "cpu_tiny.yaml", ["model.heat_head=nope"]))


def test_default_model_warns_when_the_backbone_would_downscale_the_cache(caplog):
    base = REPO_ROOT / "configs" / "default.yaml"
    with caplog.at_level("WARNING", logger="kaggle_utils.train.models.default"):
        build_model(tiny_config(base, ["data.out_shape=[8,32,40]"]))  # image_size 32 < 40 px wide
    assert any("model.image_size=32" in r.message and "set model.image_size=40" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="kaggle_utils.train.models.default"):
        build_model(tiny_config(base, ["data.out_shape=[8,32,32]"]))  # same width: no resize, no warning
        build_model(tiny_config(base, ["data.out_shape=[8,32,24]", "model.image_size=32"]))  # upscaling is fine
    assert not caplog.records
