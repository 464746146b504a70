"""Unit tests of kaggle_utils.infer with stand-in stages (loader, preprocessing, run loader, model): output schema,
flip TTA with label swap, fallbacks and their log lines, loud model-load failures, the budget guard on a simulated
clock, and share-directory cleanup."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from kaggle_utils import infer
from kaggle_utils.config import DataConfig, ExperimentConfig, InferConfig, save_config
from kaggle_utils.errors import KitError
from kaggle_utils.schema import LABEL_COLS, LR_SWAP_PERM, N_LABELS

PRIORS = np.linspace(0.05, 0.7, N_LABELS)
BASE = np.linspace(0.9, 0.1, N_LABELS)  # deliberately not L/R symmetric


class FakeClock:
    """Simulated time: only advances when a stage says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SidedModel(torch.nn.Module):
    """Returns BASE when the patient-left half (high x) is brighter, the L/R-swapped BASE otherwise."""

    def __init__(self, clock: FakeClock | None = None, seconds_per_pass: float = 0.0, output=None, error=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.clock, self.seconds_per_pass, self.output, self.error = clock, seconds_per_pass, output, error

    def forward(self, x: torch.Tensor) -> np.ndarray:
        if self.clock is not None:
            self.clock.advance(self.seconds_per_pass)
        if self.error is not None:
            raise self.error
        if self.output is not None:
            return np.asarray(self.output, dtype=np.float64)[None]
        half = x.shape[-1] // 2
        left_brighter = x[..., half:].float().mean() > x[..., :half].float().mean()
        return (BASE if left_brighter else BASE[list(LR_SWAP_PERM)])[None]


def make_run_folder(root: Path, name: str = "run", folds: int = 2, infer_cfg: InferConfig | None = None) -> Path:
    """A run folder with the files serving checks (the model files' contents come from the stand-in loader)."""
    run = root / name
    run.mkdir(parents=True)
    cfg = ExperimentConfig()
    if infer_cfg is not None:
        cfg.infer = infer_cfg
    save_config(cfg, run / "config.yaml")
    (run / "cache_info.json").write_text(json.dumps({"data": {}}))
    (run / "priors.json").write_text(json.dumps(dict(zip(LABEL_COLS, PRIORS.tolist()))))
    for k in range(folds):
        (run / f"fold{k}").mkdir()
        torch.save({"weight": torch.zeros(1)}, run / f"fold{k}" / "model.pt")
    return run


def left_bright_volume() -> SimpleNamespace:
    array = np.zeros((4, 8, 8), dtype=np.float32)
    array[..., 4:] = 100.0
    return SimpleNamespace(array=array)


def make_stages(models_per_run, volume_fn=left_bright_volume, prepare_error=None) -> infer.Stages:
    def load_run(run_dir, device):
        return SimpleNamespace(
            cfg=ExperimentConfig(), data_cfg=DataConfig(), models=models_per_run(run_dir),
            priors=dict(zip(LABEL_COLS, PRIORS.tolist())),
        )

    def load_series(path):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"no series folder {path}")
        return volume_fn()

    def prepare(volume, data_cfg):
        if prepare_error is not None:
            raise prepare_error
        image = np.clip(volume.array, 0, 255).astype(np.uint8)[None]
        return SimpleNamespace(image=image)

    def predict_probs(model, x, cfg, lr_flip):
        """Same contract as train.models.predict_probs: flip x, then map the labels back."""
        if not lr_flip:
            return model(x)
        return model(torch.flip(x, dims=[-1]))[:, list(LR_SWAP_PERM)]

    return infer.Stages(load_run=load_run, load_series=load_series, prepare=prepare, predict_probs=predict_probs)


@pytest.fixture(autouse=True)
def _reset_predictor():
    infer.reset()
    yield
    infer.reset()


@pytest.fixture
def series_dir(tmp_path) -> Path:
    path = tmp_path / "data" / "1.2.3"
    path.mkdir(parents=True)
    return path


def test_predict_schema_and_range(tmp_path, series_dir):
    run = make_run_folder(tmp_path)
    infer.configure([run], clean_share=False, stages=make_stages(lambda r: [(0, SidedModel()), (1, SidedModel())]))
    out = infer.predict(str(series_dir))
    assert isinstance(out, pl.DataFrame)
    assert out.shape == (1, N_LABELS)
    assert out.columns == list(LABEL_COLS)
    assert all(dtype == pl.Float64 for dtype in out.dtypes)
    values = out.row(0)
    assert all(0.0 <= v <= 1.0 for v in values)
    # flip TTA with the labels swapped back reproduces the unflipped answer exactly
    np.testing.assert_allclose(values, BASE)
    assert infer.summary()["fallbacks"] == 0


def test_flip_without_label_swap_would_differ(tmp_path, series_dir):
    """Guard against a vacuous TTA test: the sided model's flipped answer is really different."""
    model = SidedModel()
    x = torch.from_numpy(np.clip(left_bright_volume().array, 0, 255).astype(np.uint8)[None, None])
    flipped = model(torch.flip(x, dims=[-1]))[0]
    assert not np.allclose(flipped, BASE)
    np.testing.assert_allclose(flipped[list(LR_SWAP_PERM)], BASE)


def test_models_load_lazily_and_once(tmp_path, series_dir):
    run = make_run_folder(tmp_path)
    calls = []

    def models(run_dir):
        calls.append(run_dir)
        return [(0, SidedModel())]

    predictor = infer.configure([run], clean_share=False, stages=make_stages(models))
    assert predictor.runs is None and calls == []
    infer.predict(str(series_dir))
    infer.predict(str(series_dir))
    assert len(calls) == 1
    assert predictor.load() is predictor.runs and len(calls) == 1  # loaded once, returned again


def test_load_returns_the_loaded_runs(tmp_path):
    run = make_run_folder(tmp_path)
    predictor = infer.configure([run], clean_share=False, stages=make_stages(lambda r: [(0, SidedModel())]))
    loaded = predictor.load()
    assert loaded is predictor.runs and [r.run_dir for r in loaded] == [run] and len(loaded[0].models) == 1


def test_runs_from_environment(tmp_path, series_dir, monkeypatch):
    run_a, run_b = make_run_folder(tmp_path, "a"), make_run_folder(tmp_path, "b")
    monkeypatch.setenv("KAGGLE_UTILS_RUNS", f"{run_a}{__import__('os').pathsep}{run_b}")
    predictor = infer.configure(clean_share=False, stages=make_stages(lambda r: [(0, SidedModel())]))
    assert predictor.run_dirs == [run_a, run_b]
    assert infer.predict(str(series_dir)).shape == (1, N_LABELS)


def test_loader_failure_falls_back_to_priors_and_logs(tmp_path, caplog):
    run = make_run_folder(tmp_path)
    infer.configure([run], clean_share=False, stages=make_stages(lambda r: [(0, SidedModel())]))
    missing = tmp_path / "data" / "9.9.9"
    with caplog.at_level(logging.WARNING, logger="kaggle_utils.infer"):
        out = infer.predict(str(missing))
    np.testing.assert_allclose(out.row(0), PRIORS)
    assert "9.9.9" in caplog.text and "FileNotFoundError" in caplog.text
    summary = infer.summary()
    assert summary["fallbacks"] == 1 and summary["fallback_reasons"] == {"FileNotFoundError": 1}
    assert "FileNotFoundError: 1" in infer.summary_text(summary).replace("'", "")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("nan_output", "non-finite output"), ("nan_volume", "non-finite image"), ("oom", "out of memory")],
)
def test_bad_series_fall_back(tmp_path, series_dir, caplog, kind, reason):
    run = make_run_folder(tmp_path)
    volume_fn = left_bright_volume
    model = SidedModel()
    if kind == "nan_output":
        model = SidedModel(output=np.full(N_LABELS, np.nan))
    elif kind == "nan_volume":
        volume_fn = lambda: SimpleNamespace(array=np.full((2, 4, 4), np.nan, dtype=np.float32))  # noqa: E731
    elif kind == "oom":
        model = SidedModel(error=torch.OutOfMemoryError("CUDA out of memory"))
    infer.configure([run], clean_share=False, stages=make_stages(lambda r: [(0, model)], volume_fn=volume_fn))
    with caplog.at_level(logging.WARNING, logger="kaggle_utils.infer"):
        out = infer.predict(str(series_dir))
    assert out.shape == (1, N_LABELS) and not any(np.isnan(out.row(0)))
    np.testing.assert_allclose(out.row(0), PRIORS)
    assert reason in caplog.text and series_dir.name in caplog.text
    assert infer.summary()["fallback_reasons"] == {reason: 1}


def test_missing_model_file_fails_at_configure(tmp_path):
    run = make_run_folder(tmp_path, folds=1)
    (run / "fold0" / "model.pt").unlink()
    with pytest.raises(infer.ModelLoadError, match="model.pt"):
        infer.configure([run], clean_share=False)


def test_empty_model_file_fails_at_configure(tmp_path):
    run = make_run_folder(tmp_path, folds=1)
    (run / "fold0" / "model.pt").write_bytes(b"")
    with pytest.raises(infer.ModelLoadError, match="empty"):
        infer.configure([run], clean_share=False)


def test_corrupt_model_fails_loudly_on_first_call(tmp_path, series_dir):
    """A model that cannot be loaded must stop the run, not turn every series into a fallback row."""
    run = make_run_folder(tmp_path)

    def broken(run_dir):
        raise RuntimeError("PytorchStreamReader failed reading zip archive")

    infer.configure([run], clean_share=False, stages=make_stages(broken))
    with pytest.raises(infer.ModelLoadError, match="cannot load the models of run"):
        infer.predict(str(series_dir))
    assert infer.summary()["series"] == 0


def test_time_limit_gives_fallback(tmp_path, series_dir, caplog):
    clock = FakeClock()
    run = make_run_folder(tmp_path)
    cfg = InferConfig(series_time_limit_s=60.0)
    slow = SidedModel(clock=clock, seconds_per_pass=50.0)  # 2 passes (flip) = 100 s > 60 s
    infer.configure([run], clean_share=False, infer=cfg, clock=clock, stages=make_stages(lambda r: [(0, slow)]))
    with caplog.at_level(logging.WARNING, logger="kaggle_utils.infer"):
        out = infer.predict(str(series_dir))
    np.testing.assert_allclose(out.row(0), PRIORS)
    assert "time limit" in caplog.text


def test_degradation_levels_order():
    levels = infer.degradation_levels(3, tta=True)
    assert [(lv.tta, lv.folds) for lv in levels] == [(True, 3), (False, 3), (False, 2), (False, 1)]
    assert [(lv.tta, lv.folds) for lv in infer.degradation_levels(2, tta=False)] == [(False, 2), (False, 1)]


def test_budget_guard_degrades_in_steps_on_simulated_clock(tmp_path, series_dir):
    """Each model pass costs 10 s, the rest 2 s per series; 4 folds + flip = 82 s/series.

    Budget 100 series x 30 s = 3000 s: full quality would need ~8200 s, so after the warm-up the guard must drop the
    flip first (42 s/series still too slow), then folds, down to the best level that fits (2 folds: 22 s/series).
    """
    clock = FakeClock()
    run = make_run_folder(tmp_path, folds=4)
    cfg = InferConfig(budget_hours=3000 / 3600, expected_series=100, budget_warmup_series=2)
    models = [(k, SidedModel(clock=clock, seconds_per_pass=10.0)) for k in range(4)]
    stages = make_stages(lambda r: models)
    original_prepare = stages.prepare

    def prepare(volume, data_cfg):
        clock.advance(2.0)
        return original_prepare(volume, data_cfg)

    stages.prepare = prepare
    predictor = infer.configure([run], clean_share=False, infer=cfg, clock=clock, stages=stages)
    passes = []
    for _ in range(6):
        _, rec = predictor.predict_probs(str(series_dir))
        passes.append(rec.passes)
        assert rec.fallback is None
    # warm-up at full quality (8 passes), then the projection forces 2 folds without flip (2 passes)
    assert passes[:2] == [8, 8]
    assert passes[2:] == [2, 2, 2, 2]
    report = predictor.summary()["budget"]
    assert report["level"] == "2 fold(s)"
    assert report["projected_total_s"] <= 3000
    # the projection is elapsed + remaining x (2 s + 2 passes x 10 s)
    assert report["projected_total_s"] == pytest.approx(clock.now - 1000.0 + 94 * 22.0)


def test_budget_guard_keeps_full_quality_when_it_fits():
    clock = FakeClock()
    guard = infer.BudgetGuard(1e6, 100, infer.degradation_levels(5, True), [5], warmup_series=1, clock=clock)
    guard.start()
    clock.advance(12.0)
    guard.record(overhead_s=2.0, model_s=10.0, passes=10)
    assert guard.choose() == infer.Level(True, 5)
    assert guard.projected_total() == pytest.approx(12.0 + 99 * 12.0)


def test_budget_guard_uses_lowest_level_when_nothing_fits():
    clock = FakeClock()
    guard = infer.BudgetGuard(10.0, 100, infer.degradation_levels(2, True), [2], warmup_series=1, clock=clock)
    guard.start()
    guard.record(overhead_s=5.0, model_s=4.0, passes=4)
    assert guard.choose() == infer.Level(False, 1)


def test_share_dir_cleanup_removes_links_not_targets(tmp_path):
    source = tmp_path / "source" / "1.2.3"
    source.mkdir(parents=True)
    (source / "a.dcm").write_bytes(b"x")
    share = tmp_path / "shared"
    series = share / "1.2.3"
    series.mkdir(parents=True)
    (series / "a.dcm").symlink_to(source / "a.dcm")
    (share / "stray.txt").write_text("left by someone")
    assert infer.clean_share_dir(share.resolve(), series) == 2
    assert list(share.iterdir()) == []
    assert (source / "a.dcm").read_bytes() == b"x"


def test_share_dir_cleanup_refuses_series_outside(tmp_path, caplog):
    share = tmp_path / "shared"
    (share / "other").mkdir(parents=True)
    outside = tmp_path / "data" / "1.2.3"
    outside.mkdir(parents=True)
    (outside / "a.dcm").write_bytes(b"x")
    # a link inside the share dir that resolves outside it counts as outside
    (share / "link").symlink_to(outside, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="kaggle_utils.infer"):
        assert infer.clean_share_dir(share.resolve(), outside) == 0
        assert infer.clean_share_dir(share.resolve(), share / "link") == 0
    assert (outside / "a.dcm").exists() and (share / "other").is_dir()
    assert "outside the share directory" in caplog.text


def test_predict_cleans_configured_share_dir(tmp_path):
    source = tmp_path / "source" / "1.2.3"
    source.mkdir(parents=True)
    (source / "a.dcm").write_bytes(b"x")
    share = tmp_path / "shared"
    (share / "1.2.3").mkdir(parents=True)
    (share / "1.2.3" / "a.dcm").symlink_to(source / "a.dcm")
    run = make_run_folder(tmp_path)
    infer.configure([run], share_dir=share, stages=make_stages(lambda r: [(0, SidedModel())]))
    assert infer.predict(str(share / "1.2.3")).shape == (1, N_LABELS)
    assert list(share.iterdir()) == [] and (source / "a.dcm").exists()


@pytest.mark.parametrize("dangerous", ["cwd", "home", "root"])
def test_dangerous_share_dirs_are_refused(dangerous):
    path = {"cwd": Path.cwd(), "home": Path.home(), "root": Path("/")}[dangerous]
    with pytest.raises(KitError, match="refusing"):
        infer.check_share_dir(path)


def test_predict_is_a_plain_function_named_predict():
    import inspect

    assert inspect.isfunction(infer.predict) and infer.predict.__name__ == "predict"


def test_probs_frame_never_leaks_nan():
    frame = infer.probs_frame(np.array([np.nan, 1.5, -0.2] + [0.3] * (N_LABELS - 3)))
    assert frame.row(0)[:3] == (0.5, 1.0, 0.0)


def test_batch_predict_many(tmp_path, series_dir):
    run = make_run_folder(tmp_path)
    predictor = infer.configure([run], clean_share=False, stages=make_stages(lambda r: [(0, SidedModel())]))
    frame = infer.predict_many(predictor, series_dir.parent, [series_dir.name, "missing"])
    assert frame.columns[0] == "SeriesInstanceUID" and frame.columns[1:] == list(LABEL_COLS)
    np.testing.assert_allclose(frame.row(0)[1:], BASE)
    np.testing.assert_allclose(frame.row(1)[1:], PRIORS)


def test_passes_count_runs_with_fewer_folds():
    guard = infer.BudgetGuard(1.0, 1, infer.degradation_levels(5, True), [5, 2])
    assert guard.passes(infer.Level(True, 5)) == 14
    assert guard.passes(infer.Level(False, 3)) == 5


def test_share_cleanup_failure_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    share = tmp_path / "shared"
    series = share / "1.2.3"
    series.mkdir(parents=True)
    run = make_run_folder(tmp_path)

    def failing_clean(share_dir, series_path):
        raise PermissionError(f"cannot remove {series_path}")

    monkeypatch.setattr(infer, "clean_share_dir", failing_clean)
    infer.configure([run], share_dir=share, stages=make_stages(lambda r: [(0, SidedModel())]))
    with caplog.at_level(logging.ERROR, logger="kaggle_utils.infer"):
        out = infer.predict(str(series))
    np.testing.assert_allclose(out.row(0), BASE)
    assert infer.summary()["cleanup_errors"] == 1 and "could not empty the share directory" in caplog.text


def test_spent_budget_answers_priors_at_once(tmp_path, series_dir, caplog):
    """Past the total budget every further series gets the priors without being read, so the run still finishes."""
    clock = FakeClock()
    run = make_run_folder(tmp_path)
    cfg = InferConfig(budget_hours=100 / 3600, expected_series=3, budget_warmup_series=1)
    slow = SidedModel(clock=clock, seconds_per_pass=30.0)
    predictor = infer.configure([run], clean_share=False, infer=cfg, clock=clock,
                                stages=make_stages(lambda r: [(0, slow)]))
    first, rec1 = predictor.predict_probs(str(series_dir))  # 60 s, then the guard drops the flip
    second, rec2 = predictor.predict_probs(str(series_dir))  # 30 s more: 90 s of 100 s
    assert rec1.fallback is None and rec1.passes == 2 and rec2.fallback is None and rec2.passes == 1
    clock.advance(20.0)
    with caplog.at_level(logging.WARNING, logger="kaggle_utils.infer"):
        third, rec3 = predictor.predict_probs(str(series_dir))
    assert rec3.fallback == "time budget spent" and rec3.total_s == 0.0
    np.testing.assert_allclose(third, PRIORS)
    assert "time budget spent" in caplog.text


def test_configure_infer_settings_reach_the_model(tmp_path):
    """``configure(infer={...})`` decides what the model runs: windowing (crop-sized windows vs one whole-ROI pass),
    and mixed precision follows ``infer.autocast``, not the run's ``train.amp``."""
    from kaggle_utils.config import load_config
    from kaggle_utils.paths import REPO_ROOT
    from kaggle_utils.train.models import build_model

    cfg = load_config(REPO_ROOT / "configs" / "cpu_tiny.yaml",
                      ["model.backbone=lcnet_035", "model.image_size=32", "model.seq_hidden=8", "model.head_dim=8",
                       "train.crop_slices=4", "train.crop_inplane=8", "data.out_shape=[8,16,16]"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    seen: list[tuple] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0]["image"].shape)))
    run = make_run_folder(tmp_path, "run", folds=1)
    seen_cfgs = []

    def load_run(run_dir, device):
        return SimpleNamespace(cfg=cfg, data_cfg=DataConfig(), models=[(0, model)],
                               priors=dict(zip(LABEL_COLS, PRIORS.tolist())))

    def prepare(volume, data_cfg):
        return SimpleNamespace(image=np.full((2, 8, 16, 16), 100, dtype=np.uint8))

    def spy_probs(m, x, run_cfg, lr_flip):
        seen_cfgs.append(run_cfg)
        return infer._predict_probs_default(m, x, run_cfg, lr_flip)

    stages = infer.Stages(load_run=load_run, load_series=lambda p: left_bright_volume(), prepare=prepare,
                          predict_probs=spy_probs)
    series = tmp_path / "series"
    series.mkdir()
    for windowed in (True, False):
        seen.clear()
        predictor = infer.configure([run], clean_share=False, device="cpu", stages=stages,
                                    infer={"windowed": windowed, "lr_flip_tta": False, "autocast": "off"})
        predictor.predict(str(series))
        assert seen, "the model never ran"
        if windowed:  # half-overlapping 4 x 8 x 8 windows over the 8 x 16 x 16 ROI: 3 x 3 x 3, batched
            assert all(s[2:] == (4, 8, 8) for s in seen) and sum(s[0] for s in seen) == 27
        else:
            assert seen == [(1, 2, 8, 16, 16)]
        assert seen_cfgs[-1].infer.windowed is windowed and seen_cfgs[-1].train.amp is False
    assert cfg.train.amp is True  # the run's own config is untouched
