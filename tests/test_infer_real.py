"""Inference with the kit's real stages: a run folder written in the training layout (random weights), the DICOM
loader, preprocessing and ``predict_probs``. Bad input of every kind gives a valid row and a logged reason; a missing
or corrupt model file stops start-up."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
import torch
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from kaggle_utils import infer
from kaggle_utils.config import ExperimentConfig, load_config, save_config, to_dict
from kaggle_utils.schema import LABEL_COLS, N_LABELS

PRIORS = {c: round(0.02 + 0.03 * i, 3) for i, c in enumerate(LABEL_COLS)}
BAD_KINDS = ("no_dicom", "truncated", "non_image", "single_slice", "non_finite")
# the overflowing rescale slope is the point of the non_finite case
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


# Small and fast on CPU: a narrow 3D CNN on a small ROI grid (the wiring is what these tests check).
TEST_OVERRIDES = ["model.name=cnn3d", "model.width=4", "model.head_dim=8", "data.out_shape=[16,48,48]"]


def make_real_run(root: Path, cfg: ExperimentConfig | None = None, folds: int = 2, seed: int = 0) -> Path:
    """A run folder in the training layout (docs/ARCHITECTURE.md) holding untrained models of ``cfg``."""
    from kaggle_utils.train.models import build_model
    from kaggle_utils.train.runs import kit_info, save_state_dict, write_json

    cfg = cfg or load_config(None, TEST_OVERRIDES)
    run = root
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    write_json(run / "cache_info.json", {"cache_version": 1, "config_hash": "test", "data": to_dict(cfg.data)})
    write_json(run / "kit.json", kit_info())
    write_json(run / "priors.json", PRIORS)
    for k in range(folds):
        torch.manual_seed(seed + k)
        (run / f"fold{k}").mkdir()
        save_state_dict(build_model(cfg), run / f"fold{k}" / "model.pt")
    return run


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    return make_real_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def good_series(tmp_path_factory) -> Path:
    from kaggle_utils.synth.series import make_series

    out = tmp_path_factory.mktemp("series")
    return Path(make_series(out, modality="CTA", image_size=64, n_slices=24, seed=1)["path"])


@pytest.fixture(autouse=True)
def _reset_predictor():
    infer.reset()
    yield
    infer.reset()


def prior_row() -> np.ndarray:
    return np.array([PRIORS[c] for c in LABEL_COLS])


def test_real_predict_schema_and_ensemble(real_run, good_series):
    """The answer is the mean over folds of (plain + flipped-and-swapped) probabilities on the prepared series."""
    infer.configure([real_run], clean_share=False, device="cpu")
    out = infer.predict(str(good_series))
    assert out.columns == list(LABEL_COLS) and out.shape == (1, N_LABELS)
    assert all(dtype == pl.Float64 for dtype in out.dtypes)
    values = np.array(out.row(0))
    assert np.all((values >= 0) & (values <= 1)) and np.isfinite(values).all()
    assert infer.summary()["fallbacks"] == 0

    np.testing.assert_allclose(values, direct_ensemble(real_run, good_series), rtol=1e-5, atol=1e-6)
    assert not np.allclose(values, prior_row())


def direct_ensemble(run: Path, series: Path) -> np.ndarray:
    """The fold mean of (plain + flipped-and-swapped) probabilities, computed without the predictor."""
    from kaggle_utils.preprocess import prepare_series
    from kaggle_utils.train.models import predict_probs
    from kaggle_utils.train.runs import load_run

    loaded = load_run(run, "cpu")
    x = torch.from_numpy(prepare_series(series, loaded.data_cfg).image)[None]
    return np.mean(
        [0.5 * (predict_probs(m, x, loaded.cfg)[0] + predict_probs(m, x, loaded.cfg, lr_flip=True)[0])
         for _, m in loaded.models],
        axis=0,
    )


def write_non_image_dicom(folder: Path) -> None:
    """A valid DICOM file with no pixel data (like a structured report)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = folder.name
    ds.Modality = "SR"
    ds.save_as(folder / "report.dcm", enforce_file_format=True)


def make_bad_series(kind: str, good: Path, root: Path) -> Path:
    folder = root / f"1.2.3.{BAD_KINDS.index(kind) + 1}"  # a valid UID, like a real series folder name
    folder.mkdir()
    files = sorted(good.glob("*.dcm"))
    if kind == "no_dicom":
        (folder / "README.txt").write_text("not a DICOM file")
    elif kind == "truncated":
        for f in files:
            (folder / f.name).write_bytes(f.read_bytes()[:300])
    elif kind == "non_image":
        write_non_image_dicom(folder)
    elif kind == "single_slice":
        shutil.copy(files[len(files) // 2], folder)
    elif kind == "non_finite":
        for f in files:  # a rescale slope that overflows float32: the decoded volume is infinite
            ds = pydicom.dcmread(f)
            ds.RescaleSlope = "1e38"
            ds.save_as(folder / f.name)
    return folder


@pytest.mark.parametrize("kind", ["no_dicom", "truncated", "non_image", "non_finite"])
def test_bad_input_gives_fallback_row_and_logged_reason(real_run, good_series, tmp_path, caplog, kind):
    series = make_bad_series(kind, good_series, tmp_path)
    infer.configure([real_run], clean_share=False, device="cpu")
    with caplog.at_level(logging.WARNING, logger="kaggle_utils.infer"):
        out = infer.predict(str(series))
    assert out.columns == list(LABEL_COLS) and out.shape == (1, N_LABELS)
    np.testing.assert_allclose(out.row(0), prior_row())
    summary = infer.summary()
    assert summary["fallbacks"] == 1
    (name, reason, message), = summary["fallback_series"]
    assert name == series.name and message
    assert series.name in caplog.text and reason in caplog.text


def test_nan_volume_gives_fallback(real_run, good_series, caplog):
    """A volume that decodes to NaN (the loader's output patched) is caught before the model."""
    from kaggle_utils.dicom import load_series

    def nan_loader(path):
        volume = load_series(path)
        volume.array[:] = np.nan
        return volume

    infer.configure([real_run], clean_share=False, device="cpu", stages=infer.Stages(load_series=nan_loader))
    with caplog.at_level(logging.WARNING, logger="kaggle_utils.infer"):
        out = infer.predict(str(good_series))
    np.testing.assert_allclose(out.row(0), prior_row())
    assert "non-finite image" in caplog.text


def test_single_slice_is_predicted_by_the_model(real_run, good_series, tmp_path, caplog):
    """One slice is a legal (if poor) series: the geometry takes its z spacing from the header (dicom_geometry) and
    preprocessing resamples it to the model grid, so the model answers; it is never a fallback."""
    series = make_bad_series("single_slice", good_series, tmp_path)
    infer.configure([real_run], clean_share=False, device="cpu")
    with caplog.at_level(logging.WARNING, logger="kaggle_utils.infer"):
        out = infer.predict(str(series))
    values = np.array(out.row(0))
    assert out.shape == (1, N_LABELS)
    record = infer.get_predictor().records[-1]
    assert record.fallback is None and record.message == ""
    assert record.passes == 4  # 2 folds x (plain + flip)
    assert infer.summary()["fallbacks"] == 0 and "fallback priors" not in caplog.text
    np.testing.assert_allclose(values, direct_ensemble(real_run, series), rtol=1e-5, atol=1e-6)
    assert not np.allclose(values, prior_row())


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_missing_fold_model_fails_at_configure(real_run, tmp_path):
    run = copy_run(real_run, tmp_path / "run")
    (run / "fold1" / "model.pt").unlink()
    with pytest.raises(infer.ModelLoadError, match="fold1"):
        infer.configure([run], clean_share=False)


def test_corrupt_model_file_fails_loudly(real_run, good_series, tmp_path):
    run = copy_run(real_run, tmp_path / "run")
    (run / "fold0" / "model.pt").write_bytes(b"this is not a torch file")
    with pytest.raises(infer.ModelLoadError, match="model.pt"):
        infer.configure([run], clean_share=False, load_now=True)
    infer.configure([run], clean_share=False)  # lazy: the first call must raise, not fall back
    with pytest.raises(infer.ModelLoadError, match="could not be read"):
        infer.predict(str(good_series))


def test_priors_come_from_the_run_folder(real_run):
    loaded = json.loads((real_run / "priors.json").read_text())
    np.testing.assert_allclose(infer.read_priors(real_run), [loaded[c] for c in LABEL_COLS])


def test_inference_preprocessing_matches_the_training_cache(tmp_path):
    """What predict feeds the model is bit-identical to the cache entry training read, for every series."""
    from kaggle_utils.cache import load_cache_entry
    from kaggle_utils.cli import main as cli_main
    from kaggle_utils.synth import make_competition

    competition = make_competition(tmp_path / "competition", n_series=4, seed=3, image_size=48, n_slices=24)
    cache = tmp_path / "cache"
    assert cli_main(["preprocess", "--data-dir", str(competition), "--out", str(cache), "--no-progress",
                     "data.out_shape=[16,48,48]"]) == 0
    run = make_real_run(tmp_path / "run", folds=1)
    shutil.copy(cache / "cache_info.json", run / "cache_info.json")  # as training does: the cache's data config

    seen: dict[str, np.ndarray] = {}
    default = infer.Stages()

    def spy_prepare(volume, data_cfg):
        prepared = default.prepare(volume, data_cfg)
        seen[volume.series_uid] = prepared.image
        return prepared

    infer.configure([run], clean_share=False, device="cpu", stages=infer.Stages(prepare=spy_prepare))
    uids = pl.read_parquet(cache / "manifest.parquet").filter(pl.col("status") == "ok")["SeriesInstanceUID"]
    assert len(uids) == 4
    for uid in uids:
        infer.predict(str(competition / "series" / uid))
        cached = load_cache_entry(cache, uid)["image"]
        assert seen[uid].dtype == np.uint8 and seen[uid].shape == cached.shape
        assert np.array_equal(seen[uid], cached), uid
    assert infer.summary()["fallbacks"] == 0


def test_batch_predict_command(real_run, good_series, tmp_path, capsys):
    from kaggle_utils.cli import main as cli_main

    ids = tmp_path / "ids.csv"
    pl.DataFrame({"SeriesInstanceUID": [good_series.name, "9.9.9"]}).write_csv(ids)
    out = tmp_path / "pred.parquet"
    code = cli_main(["predict", "--models", str(real_run), "--series-dir", str(good_series.parent), "--ids", str(ids),
                     "--out", str(out), "--device", "cpu"])
    assert code == 0
    frame = pl.read_parquet(out)
    assert frame.columns == ["SeriesInstanceUID", *LABEL_COLS] and frame.height == 2
    np.testing.assert_allclose(frame.row(1)[1:], prior_row())
    assert not np.allclose(frame.row(0)[1:], prior_row())
    assert "1 fallback(s)" in capsys.readouterr().out
    assert good_series.is_dir() and any(good_series.glob("*.dcm"))  # batch mode never deletes input


def test_serve_command_local_gateway(real_run, tmp_path, monkeypatch, capsys):
    from kaggle_utils.cli import main as cli_main

    monkeypatch.delenv("KAGGLE_UTILS_SHARE_DIR", raising=False)
    monkeypatch.delenv("KAGGLE_EVALUATION_DIR", raising=False)
    series_root = tmp_path / "competition" / "kaggle_evaluation" / "series"
    series_root.mkdir(parents=True)
    from kaggle_utils.synth.series import make_series

    uid = make_series(series_root, modality="MRA", image_size=48, n_slices=16, seed=5)["series_uid"]
    pl.DataFrame({"SeriesInstanceUID": [uid]}).write_csv(series_root.parent / "test.csv")
    work = tmp_path / "work"
    work.mkdir()
    code = cli_main(["serve", "--models", str(real_run), "--data-dir", str(tmp_path / "competition"), "--local",
                     "--out-dir", str(work), "--device", "cpu"])
    assert code == 0
    sub = pl.read_parquet(work / "submission.parquet")
    assert sub.columns == ["SeriesInstanceUID", *LABEL_COLS] and sub["SeriesInstanceUID"].to_list() == [uid]
    assert list((work / "shared").iterdir()) == []
    assert "inference summary: 1 series, 0 fallback(s)" in capsys.readouterr().out
