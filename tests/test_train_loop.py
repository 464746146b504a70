"""The training loop on the tiny cache: run folder, out-of-fold integrity, exact resume, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch

from kaggle_utils.cache import CacheError
from kaggle_utils.config import ConfigError, load_config
from kaggle_utils.paths import REPO_ROOT
from kaggle_utils.schema import ID_COL, LABEL_COLS
from kaggle_utils.train.dataset import load_image, open_training_cache
from kaggle_utils.train.folds import FoldError
from kaggle_utils.train.loop import TrainError, lr_factor, make_ema, train
from kaggle_utils.train.models import predict_probs
from kaggle_utils.train.runs import RunError, load_run

TINY = ["model.backbone=lcnet_035", "model.image_size=32", "model.seq_hidden=16", "model.head_dim=8",
        "model.slice_stride=4", "train.crop_slices=8", "train.batch_size=2", "train.num_workers=0",
        "train.n_folds=2", "train.epochs=2", "train.max_train_minutes=0", "train.ema_decay=0.5",
        "train.epoch_repeats=1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(*extra):
    return load_config(REPO_ROOT / "configs" / "cpu_tiny.yaml", [*TINY, *extra])


@pytest.fixture(scope="module")
def trained_run(tiny_cache, tmp_path_factory):
    """Both folds of a tiny run (its own copy of the cache, so the fold file it writes stays private)."""
    cache = tmp_path_factory.mktemp("train") / "cache"
    shutil.copytree(tiny_cache, cache)
    run = cache.parent / "run"
    summary = train(cache, tiny_cfg(), run, fold="all", progress=False)
    return cache, run, summary


def test_run_folder_layout_and_summary(trained_run):
    cache, run, summary = trained_run
    for name in ("config.yaml", "cache_info.json", "kit.json", "priors.json", "metrics.json", "oof.parquet",
                 "curves.png", "folds.csv", "fold0/model.pt", "fold0/metrics.json", "fold1/model.pt"):
        assert (run / name).is_file(), name
    assert not (run / "fold0" / "state.pt").exists()  # training state removed once a fold is complete
    assert load_config(run / "config.yaml") == tiny_cfg()
    priors = json.loads((run / "priors.json").read_text())
    assert list(priors) == list(LABEL_COLS) and all(0 <= v <= 1 for v in priors.values())
    assert json.loads((run / "kit.json").read_text())["kit_version"]
    fold0 = json.loads((run / "fold0" / "metrics.json").read_text())
    assert fold0["complete"] and len(fold0["history"]) == 2
    assert all(np.isfinite(h["train_loss"]) for h in fold0["history"])
    state = torch.load(run / "fold0" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert summary["oof"]["n"] == len(open_training_cache(cache).uids)
    # the run keeps the ROI coverage of the cache it trained on (the evaluate report shows it)
    assert (cache / "coverage.json").is_file()
    assert json.loads((run / "coverage.json").read_text()) == json.loads((cache / "coverage.json").read_text())


def test_oof_rows_come_only_from_the_fold_model_that_never_saw_them(trained_run):
    cache, run, _ = trained_run
    oof = pl.read_parquet(run / "oof.parquet")
    folds = pl.read_csv(run / "folds.csv", schema_overrides={ID_COL: pl.Utf8})
    tc = open_training_cache(cache)
    assert sorted(oof[ID_COL].to_list()) == sorted(tc.uids)  # every series exactly once
    joined = oof.join(folds, on=ID_COL, suffix="_assigned")
    assert (joined["fold"] == joined["fold_assigned"]).all()  # predicted by its own held-out fold
    loaded = load_run(run)
    assert [f for f, _ in loaded.models] == [0, 1]
    models = dict(loaded.models)
    for row in oof.iter_rows(named=True):
        k = row["fold"]
        trained_on = set(folds.filter(pl.col("fold") != k)[ID_COL].to_list())
        assert row[ID_COL] not in trained_on
        image = torch.from_numpy(load_image(tc.files[tc.uids.index(row[ID_COL])]))[None]
        own = predict_probs(models[k], image, loaded.cfg)[0]
        other = predict_probs(models[1 - k], image, loaded.cfg)[0]
        stored = np.array([row[c] for c in LABEL_COLS])
        np.testing.assert_allclose(stored, own, atol=1e-5)
        assert not np.allclose(stored, other, atol=1e-5)


def test_load_run_refuses_corrupt_or_missing_weights(trained_run, tmp_path):
    _, run, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "fold1" / "model.pt").write_bytes(b"\x00garbage")
    with pytest.raises(RunError, match="fold1/model.pt could not be read"):
        load_run(copy)
    torch.save({"not": "weights"}, copy / "fold1" / "model.pt")
    with pytest.raises(RunError, match="not a state_dict"):
        load_run(copy)
    for d in copy.glob("fold*/"):
        shutil.rmtree(d)
    with pytest.raises(RunError, match="no finished fold"):
        load_run(copy)


class Interrupt(Exception):
    pass


def test_resume_after_a_kill_mid_epoch_gives_the_same_weights(tiny_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    cfg = tiny_cfg("train.checkpoint_every_steps=1", "train.hard_negative_factor=1.0")
    train(cache, cfg, tmp_path / "straight", fold=0, progress=False)

    def kill(epoch: int, step: int) -> None:
        if epoch == 1 and step == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cache, cfg, tmp_path / "resumed", fold=0, progress=False, step_callback=kill)
    state = torch.load(tmp_path / "resumed" / "fold0" / "state.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 1)  # a mid-epoch checkpoint (2 steps per epoch)
    assert not (tmp_path / "resumed" / "fold0" / "model.pt").exists()
    train(cache, cfg, tmp_path / "resumed", fold=0, progress=False)
    a = torch.load(tmp_path / "straight" / "fold0" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "fold0" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    oof_a = pl.read_parquet(tmp_path / "straight" / "oof.parquet")
    oof_b = pl.read_parquet(tmp_path / "resumed" / "oof.parquet")
    assert oof_a.equals(oof_b)
    # resuming with another config is refused unless forced
    with pytest.raises(TrainError, match=r"changed: \['train.lr'\]"):
        train(cache, tiny_cfg("train.checkpoint_every_steps=1", "train.hard_negative_factor=1.0", "train.lr=0.01"),
              tmp_path / "resumed", fold=0, progress=False)
    train(cache, tiny_cfg("train.lr=0.01"), tmp_path / "resumed", fold=0, progress=False, force_resume=True)


def test_bad_input_is_refused_before_training(tiny_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    out = tmp_path / "run"
    with pytest.raises(CacheError, match=r"made with data config .*fields differ: \['out_shape'\]"):
        train(cache, tiny_cfg("data.out_shape=[16,64,64]"), out, progress=False)
    info = json.loads((cache / "cache_info.json").read_text())
    (cache / "cache_info.json").write_text(json.dumps({**info, "cache_version": 999}))
    from kaggle_utils.cache import CACHE_VERSION

    with pytest.raises(CacheError, match=f"cache_version 999, this kit reads cache_version {CACHE_VERSION}"):
        train(cache, tiny_cfg(), out, progress=False)
    (cache / "cache_info.json").write_text(json.dumps(info))
    with pytest.raises(FoldError, match="missing.csv does not exist"):
        train(cache, tiny_cfg(), out, folds_file=tmp_path / "missing.csv", progress=False)
    with pytest.raises(ConfigError, match="unknown model 'unet9000'"):
        train(cache, tiny_cfg("model.name=unet9000"), out, progress=False)
    with pytest.raises(ConfigError, match="must be a multiple"):  # the model's own checks, before anything is written
        train(cache, tiny_cfg("model.in_chans=5"), out, progress=False)
    with pytest.raises(TrainError, match="outside 0..1"):
        train(cache, tiny_cfg(), out, fold=5, progress=False)
    labels = pl.read_csv(cache / "train.csv")
    labels.head(0).write_csv(cache / "train.csv")
    with pytest.raises(TrainError, match="no series with status ok"):
        train(cache, tiny_cfg(), out, progress=False)
    assert not out.exists()  # nothing was written by any refused run


def test_cli_reports_config_errors_in_one_line(tiny_cache, tmp_path):
    cmd = [sys.executable, "-m", "kaggle_utils", "train", "--cache", str(tiny_cache), "--config",
           str(REPO_ROOT / "configs" / "cpu_tiny.yaml"), "--out", str(tmp_path / "run"), "train.epoch=3"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown key(s) ['epoch']" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_model_option_writes_nothing_and_the_fixed_rerun_works(tiny_cache, tmp_path):
    """``train ... model.seq_model=lstm`` once wrote RUN/config.yaml before failing, so the fixed rerun was refused."""
    cmd = [sys.executable, "-m", "kaggle_utils", "train", "--cache", str(tiny_cache), "--config",
           str(REPO_ROOT / "configs" / "cpu_tiny.yaml"), "--out", str(tmp_path / "run"), "--fold", "0",
           "--no-progress", *TINY, "train.epochs=1"]
    bad = subprocess.run([*cmd, "model.seq_model=lstm"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "model.seq_model='lstm'" in bad.stderr and "'gru'" in bad.stderr
    assert not (tmp_path / "run").exists()
    good = subprocess.run([*cmd, "model.seq_model=gru"], capture_output=True, text=True, timeout=600)
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "run" / "fold0" / "model.pt").is_file()


def test_step_budget_is_capped_by_epochs():
    from types import SimpleNamespace

    from kaggle_utils.train.loop import FoldBudget

    tcfg = SimpleNamespace(max_steps=25, epochs=10, warmup_epochs=1.0, max_train_minutes=0.0)
    assert (FoldBudget.plan(tcfg, 10).total_steps, FoldBudget.plan(tcfg, 10).n_epochs) == (25, 3)
    assert FoldBudget.plan(tcfg, 10).warmup_fraction == pytest.approx(10 / 25)
    assert FoldBudget.plan(SimpleNamespace(**{**vars(tcfg), "epochs": 2}), 10).total_steps == 20
    assert FoldBudget.plan(SimpleNamespace(**{**vars(tcfg), "max_steps": 0}), 10).total_steps == 100


def test_lr_schedule_warms_up_then_decays():
    assert lr_factor(0.0, 0.1, 0.01) < 0.01
    assert lr_factor(0.1, 0.1, 0.01) == pytest.approx(1.0)
    assert lr_factor(0.55, 0.1, 0.01) == pytest.approx(0.505)
    assert lr_factor(1.0, 0.1, 0.01) == pytest.approx(0.01)


def test_oof_slice_scores_cover_every_oof_series_on_the_roi_grid(trained_run):
    cache, run, _ = trained_run
    slices = pl.read_parquet(run / "oof_slices.parquet")
    oof = pl.read_parquet(run / "oof.parquet")
    assert sorted(set(slices[ID_COL].to_list())) == sorted(oof[ID_COL].to_list())
    depth = tiny_cfg().data.out_shape[0]
    stride = tiny_cfg().model.slice_stride
    per_series = slices.group_by(ID_COL).agg(pl.col("roi_z").sort())
    for z in per_series["roi_z"].to_list():
        assert z == list(range(0, depth, stride))  # one score per scored slice, on the cache's z grid
    scores = slices["score"].to_numpy()
    assert np.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1


def test_ema_update_against_hand_computed_values():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
    ema = make_ema(model, 0.9)
    assert make_ema(model, 0.0) is None
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 2.0]]))
        model[1].running_mean.fill_(5.0)
    ema.update(model)
    # 0.9 * old + 0.1 * new for parameters; buffers (BatchNorm statistics) are copied
    torch.testing.assert_close(ema.module[0].weight, torch.tensor([[1.2, -1.6]]))
    torch.testing.assert_close(ema.module[1].running_mean, torch.tensor([5.0]))
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_same_config_and_seed_give_identical_oof_twice(tiny_cache, tmp_path):
    """The budget counts steps, so two runs of one config are the same model: identical OOF predictions."""
    cfg = tiny_cfg("train.max_steps=3", "train.epochs=10")  # the step budget, not the epochs, ends it
    frames = []
    for name in ("a", "b"):
        cache = tmp_path / f"cache_{name}"
        shutil.copytree(tiny_cache, cache)
        summary = train(cache, cfg, tmp_path / name, fold=0, progress=False)
        metrics = json.loads((tmp_path / name / "fold0" / "metrics.json").read_text())
        assert (metrics["steps"], metrics["planned_steps"], metrics["budget_stop"]) == (3, 3, "steps")
        assert summary["cut_short_by_time_cap"] == []
        frames.append(pl.read_parquet(tmp_path / name / "fold0" / "oof.parquet"))
    assert frames[0].height > 0
    assert frames[0].equals(frames[1])


def test_the_time_cap_is_a_safety_net_that_says_it_cut_the_run(tiny_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    cfg = tiny_cfg("train.max_steps=50", "train.epochs=100", "train.max_train_minutes=0.00001")
    summary = train(cache, cfg, tmp_path / "run", fold=0, progress=False)
    metrics = json.loads((tmp_path / "run" / "fold0" / "metrics.json").read_text())
    assert metrics["budget_stop"] == "time_cap" and metrics["stopped_by_budget"]
    assert metrics["steps"] == 1 < metrics["planned_steps"] == 50
    assert summary["cut_short_by_time_cap"] == ["fold0"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["cut_short_by_time_cap"] == ["fold0"]
