"""Typed configs: YAML + dotted overrides, type checks, unknown keys rejected with the valid ones, round trip."""

import subprocess
import sys

import pytest
import yaml

from kaggle_utils.config import (
    ConfigError,
    ExperimentConfig,
    config_hash,
    load_config,
    parse_overrides,
    read_yaml,
    save_config,
)
from kaggle_utils.paths import REPO_ROOT


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(None, ["train.lr=1e-3", "model.name=seed_baseline", "data.out_shape=[16,64,64]", "seed=7"])
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.model.name == "seed_baseline"
    assert cfg.data.out_shape == (16, 64, 64)
    assert cfg.seed == 7
    assert ExperimentConfig().train.lr != cfg.train.lr


def test_yaml_file_then_override_wins(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: exp\ntrain:\n  epochs: 3\n  lr: 0.01\n")
    cfg = load_config(path, ["train.epochs=5"])
    assert (cfg.name, cfg.train.epochs, cfg.train.lr) == ("exp", 5, 0.01)


def test_unknown_keys_are_rejected_with_valid_list(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrr'\].*'lr'"):
        load_config(None, ["train.lrr=1"])
    path = tmp_path / "bad.yaml"
    path.write_text("trian:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="trian"):
        load_config(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=2.5", "integer"),
        ("train.amp=maybe", "true/false"),
        ("data.out_shape=[1,2]", "expected 3 values"),
        ("train.lr=fast", "number"),
        ("train=3", "mapping"),
        ("novalue", "key=value"),
    ],
)
def test_type_errors_are_clear(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_save_round_trip_and_hash(tmp_path):
    cfg = load_config(None, ["train.lr=2e-4", "data.ct_windows=[[100, 500]]"])
    out = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(out)
    assert again == cfg
    assert config_hash(again.data) == config_hash(cfg.data)
    assert config_hash(cfg.data) != config_hash(load_config().data)
    assert read_yaml(out)["train"]["lr"] == pytest.approx(2e-4)


def test_override_values_are_yaml_not_code():
    assert parse_overrides(["model.name=__import__('os')"]) == {"model": {"name": "__import__('os')"}}


def test_model_sections_per_family_and_literal_choices():
    with pytest.raises(ConfigError, match=r"model\.seq_model='lstm'.*'gru', 'transformer' or 'none'"):
        load_config(None, ["model.seq_model=lstm"])
    with pytest.raises(ConfigError, match=r"model\.width=32 is an option of model family \['cnn3d', 'dense3d'\]"):
        load_config(None, ["model.width=32"])
    with pytest.raises(ConfigError, match=r"model\.backbone='resnet5'.*not a timm model.*resnet50"):
        load_config(None, ["model.backbone=resnet5"])
    with pytest.raises(ConfigError, match=r"unknown model 'unet'.*'cnn3d'"):
        load_config(None, ["model.name=unet"])
    cnn = load_config(None, ["model.name=cnn3d", "model.width=8"])
    assert cnn.model.width == 8 and not hasattr(cnn.model, "backbone")


def test_roi_locator_is_checked_against_the_registry():
    with pytest.raises(ConfigError, match=r"data\.roi_locator='heuristc'.*did you mean \['heuristic'\].*registered"):
        load_config(None, ["data.roi_locator=heuristc"])


def test_an_old_flat_run_config_still_loads(tmp_path):
    """Run folders written before the per-family model sections saved every family's options in one section."""
    old = {"name": "old", "model": {"name": "cnn3d", "backbone": "tf_efficientnet_lite0", "pretrained_file": "",
                                    "in_chans": 6, "image_size": 96, "seq_model": "gru", "width": 24,
                                    "patch_size": [0, 0, 0], "seed_slice_fractions": [0.25, 0.5, 0.75]}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    cfg = load_config(path)
    assert cfg.model.name == "cnn3d" and cfg.model.width == 24
    assert load_config(save_config(cfg, tmp_path / "again.yaml")) == cfg


def test_base_key_inherits_and_kaggle_t4_lists_only_differences(tmp_path):
    root = REPO_ROOT / "configs"
    t4, default = load_config(root / "kaggle_t4.yaml"), load_config(root / "default.yaml")
    assert t4.model == default.model and t4.aug == default.aug
    assert (t4.train.num_workers, t4.train.checkpoint_every_steps) == (2, 200)
    assert set(read_yaml(root / "kaggle_t4.yaml")) == {"base", "name", "train"}
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="base chain loops"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text(f"base: {root / 'default.yaml'}\nmodel:\n  name: cnn3d\n  width: 8\n")
    assert load_config(tmp_path / "c.yaml").model.width == 8  # a family change replaces the base's model section


def test_preprocess_typo_fails_up_front_and_leaves_no_cache(tiny_competition, tmp_path):
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "kaggle_utils", "preprocess", "--data-dir", str(tiny_competition), "--out", str(out),
           "--workers", "1", "--limit", "1", "--no-progress"]
    bad = subprocess.run([*cmd, "data.roi_locator=heuristc"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "data.roi_locator='heuristc'" in bad.stderr and "heuristic" in bad.stderr
    assert not out.exists()  # nothing tied to the typo
    good = subprocess.run([*cmd, "data.roi_locator=heuristic"], capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr
    assert (out / "cache_info.json").is_file()


@pytest.mark.parametrize("family", ["default", "seed_baseline", "cnn3d", "dense3d"])
def test_every_family_loads_a_full_old_flat_model_section(tmp_path, family):
    from kaggle_utils.config import LEGACY_FLAT_MODEL_DEFAULTS, MODEL_FAMILIES

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": family, **LEGACY_FLAT_MODEL_DEFAULTS}}))
    cfg = load_config(path)
    assert type(cfg.model) is MODEL_FAMILIES[family]
    changed = {**LEGACY_FLAT_MODEL_DEFAULTS, "name": family, "hidden_dim": 7}  # a seed_baseline option, changed
    path.write_text(yaml.safe_dump({"model": changed}))
    if family == "seed_baseline":
        assert load_config(path).model.hidden_dim == 7
    else:
        with pytest.raises(ConfigError, match=r"model\.hidden_dim=7 is an option of model family \['seed_baseline'\]"):
            load_config(path)
