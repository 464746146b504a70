"""Typed configs: YAML + dotted overrides, type checks, unknown keys rejected with the valid ones, round trip."""

import pytest

from kaggle_utils.config import (
    ConfigError,
    ExperimentConfig,
    config_hash,
    load_config,
    parse_overrides,
    read_yaml,
    save_config,
)


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
