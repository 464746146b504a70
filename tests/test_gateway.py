"""The kit's local gateway against the competition contract, the lock that keeps gateway runs from overlapping, and
the dispatch to the competition's own ``kaggle_evaluation`` server (a recording stand-in package)."""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from kaggle_utils import gateway, paths
from kaggle_utils.schema import ID_COL, LABEL_COLS, N_LABELS

UIDS = ["1.1", "1.2", "1.3", "1.4", "1.5"]


def make_test_data(root: Path, uids=UIDS, empty: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """kaggle_evaluation-style test csv and series folders with a couple of placeholder .dcm files each."""
    series_dir = root / "series"
    for uid in uids:
        (series_dir / uid).mkdir(parents=True)
        if uid not in empty:
            for k in range(2):
                (series_dir / uid / f"{k}.dcm").write_bytes(b"dicom")
    csv = root / "test.csv"
    pl.DataFrame({ID_COL: uids}).write_csv(csv)
    return csv, series_dir


def row(value: float = 0.25) -> pl.DataFrame:
    return pl.DataFrame({c: [value] for c in LABEL_COLS})


def make_gateway(tmp_path, predict_fn, **kwargs) -> gateway.LocalGateway:
    csv, series = make_test_data(tmp_path / "data", **kwargs.pop("data", {}))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return gateway.LocalGateway(predict_fn, csv, series, tmp_path / "shared", out, **kwargs)


def test_local_gateway_serves_all_series_in_random_order(tmp_path):
    seen = []
    share = (tmp_path / "shared").resolve()

    def predict(series_path: str) -> pl.DataFrame:
        path = Path(series_path)
        # one series exposed at a time, as links to its .dcm files, at its source path mirrored in the share dir
        source = (tmp_path / "data" / "series" / path.name).absolute()
        assert path == share / source.relative_to(source.anchor)
        assert len([p for p in share.rglob("*") if p.is_dir() and p.name.startswith("1.")]) == 1
        assert all(f.is_symlink() for f in path.iterdir()) and len(list(path.glob("*.dcm"))) == 2
        assert threading.current_thread() is not threading.main_thread()
        seen.append(path.name)
        return row(float(UIDS.index(path.name)) / 10)

    result = make_gateway(tmp_path, predict, seed=3).run()
    assert sorted(seen) == UIDS and seen != UIDS  # all, shuffled (seed 3 does not give the csv order)
    sub = pl.read_parquet(result.submission)
    assert sub.columns == [ID_COL, *LABEL_COLS]
    assert sub[ID_COL].to_list() == seen
    assert sub[LABEL_COLS[0]].to_list() == [UIDS.index(u) / 10 for u in seen]
    assert result.leftovers == 5  # this predict never empties the share dir: counted, and cleaned by the gateway
    assert list((tmp_path / "shared").iterdir()) == []


def test_pandas_answers_accepted_and_bad_values_written_as_is(tmp_path):
    def predict(series_path: str):
        value = np.nan if Path(series_path).name == "1.1" else 1.5
        return pd.DataFrame({"wrong": [value], **{c: [value] for c in LABEL_COLS[1:]}})

    result = make_gateway(tmp_path, predict, seed=0).run()
    sub = pl.read_parquet(result.submission)
    assert sub.columns == [ID_COL, "wrong", *LABEL_COLS[1:]]
    assert sub.filter(pl.col(ID_COL) == "1.1")["wrong"].is_nan().all()
    assert sub.filter(pl.col(ID_COL) == "1.2")[LABEL_COLS[1]].to_list() == [1.5]


def test_inconsistent_answer_columns_fail_the_run(tmp_path):
    def predict(series_path: str):
        if Path(series_path).name == "1.3":
            return pl.DataFrame({"other": [0.1]})
        return row()

    gw = make_gateway(tmp_path, predict)
    with pytest.raises(gateway.GatewayError, match="inconsistent columns"):
        gw.run()
    assert not (gw.out_dir / gateway.SUBMISSION_NAME).exists()


@pytest.mark.parametrize(
    "answer",
    [
        pl.DataFrame({c: [0.1, 0.2] for c in LABEL_COLS}),
        pl.DataFrame({c: [] for c in LABEL_COLS}, schema={c: pl.Float64 for c in LABEL_COLS}),
        {c: 0.1 for c in LABEL_COLS},
        pd.Series([0.1] * N_LABELS),
        np.full(N_LABELS, 0.1),
    ],
    ids=["two_rows", "zero_rows", "dict", "series", "array"],
)
def test_bad_answers_fail_at_once_and_write_nothing(tmp_path, answer):
    calls = []

    def predict(series_path: str):
        calls.append(series_path)
        return answer

    gw = make_gateway(tmp_path, predict)
    stale = gw.out_dir / gateway.SUBMISSION_NAME
    stale.write_bytes(b"stale")
    with pytest.raises(gateway.GatewayError, match="rows|must return a DataFrame"):
        gw.run()
    assert len(calls) == 1 and not stale.exists()


def test_exception_in_predict_fails_the_run(tmp_path):
    def predict(series_path: str):
        raise ValueError("boom")

    gw = make_gateway(tmp_path, predict)
    with pytest.raises(gateway.GatewayError, match="boom"):
        gw.run()
    assert not (gw.out_dir / gateway.SUBMISSION_NAME).exists()


def plain_predict(series_path: str) -> pl.DataFrame:
    return row()


class Holder:
    def predict(self, series_path: str) -> pl.DataFrame:
        return row()


@pytest.mark.parametrize(
    "fn",
    [lambda p: row(), functools.partial(plain_predict), Holder().predict, plain_predict],
    ids=["lambda", "partial", "bound_method", "wrong_name"],
)
def test_only_a_plain_function_named_predict_is_served(tmp_path, fn):
    with pytest.raises(gateway.GatewayError, match="plain `def predict"):
        make_gateway(tmp_path, fn).run()


def test_share_dir_must_be_empty_at_start(tmp_path):
    def predict(series_path: str):
        return row()

    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "old").write_text("x")
    with pytest.raises(gateway.GatewayError, match="must be empty"):
        make_gateway(tmp_path, predict).run()


def test_series_without_dcm_aborts(tmp_path):
    def predict(series_path: str):
        return row()

    gw = make_gateway(tmp_path, predict, data={"uids": ["2.1"], "empty": ("2.1",)})
    with pytest.raises(gateway.GatewayError, match=r"no \*\.dcm"):
        gw.run()


def test_timeout_applies_after_the_first_call_only(tmp_path):
    calls = []

    def predict(series_path: str):
        calls.append(series_path)
        time.sleep(0.6 if len(calls) in (1, 2) else 0.0)  # first call slow (exempt), second too slow
        return row()

    gw = make_gateway(tmp_path, predict, call_timeout_s=0.3, data={"uids": UIDS[:3]})
    with pytest.raises(gateway.GatewayError, match="did not answer"):
        gw.run()
    assert len(calls) == 2 and not (gw.out_dir / gateway.SUBMISSION_NAME).exists()


def test_first_call_may_be_slow(tmp_path):
    calls = []

    def predict(series_path: str):
        calls.append(series_path)
        time.sleep(0.5 if len(calls) == 1 else 0.0)
        return row()

    result = make_gateway(tmp_path, predict, call_timeout_s=0.3, data={"uids": UIDS[:2]}).run()
    assert pl.read_parquet(result.submission).height == 2


def test_gateway_runs_never_overlap():
    with gateway.gateway_lock():
        with pytest.raises(gateway.GatewayError, match="never overlap"):
            with gateway.gateway_lock(wait_s=0.3):
                pass
    with gateway.gateway_lock() as path:  # released: a later run proceeds (after any other process's run)
        assert path.read_text() == str(os.getpid())


def test_serve_waits_for_the_lock_then_runs(tmp_path, monkeypatch):
    def predict(series_path: str):
        return row()

    csv, series = make_test_data(tmp_path / "data", uids=UIDS[:1])
    release = threading.Event()

    def hold():
        with gateway.gateway_lock():
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.2)
    started = time.monotonic()
    threading.Timer(0.5, release.set).start()
    result = gateway.serve(predict, test_csv=csv, series_dir=series, share_dir=tmp_path / "sh", out_dir=tmp_path,
                           local=True)
    holder.join()
    assert time.monotonic() - started >= 0.4
    assert pl.read_parquet(result.submission).height == 1


# -- the competition's gateway ----------------------------------------------------------------------------------------

FAKE_SERVER = '''
CALLS = []


class RSNAInferenceServer:
    def __init__(self, predict):
        CALLS.append(("init", predict))

    def serve(self):
        CALLS.append(("serve",))

    def run_local_gateway(self, data_paths=None, file_share_dir=None):
        CALLS.append(("run_local_gateway", data_paths, file_share_dir))
'''


@pytest.fixture
def fake_evaluation(tmp_path, monkeypatch):
    root = tmp_path / "competition"
    (root / "kaggle_evaluation").mkdir(parents=True)
    (root / "kaggle_evaluation" / "__init__.py").write_text("")
    (root / "kaggle_evaluation" / "rsna_inference_server.py").write_text(FAKE_SERVER)
    monkeypatch.setenv("KAGGLE_EVALUATION_DIR", str(root))
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    for name in [m for m in sys.modules if m.startswith("kaggle_evaluation")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return root


def test_evaluation_dir_needs_the_server_module(tmp_path, monkeypatch):
    (tmp_path / "kaggle_evaluation").mkdir()  # the synthetic layout: a plain data folder
    assert paths.kaggle_evaluation_dir(tmp_path) is None
    (tmp_path / "kaggle_evaluation" / "rsna_inference_server.py").write_text("")
    assert paths.kaggle_evaluation_dir(tmp_path) == tmp_path


def test_competition_gateway_local_run(tmp_path, fake_evaluation, monkeypatch):
    def predict(series_path: str):
        return row()

    csv, series = make_test_data(tmp_path / "data", uids=UIDS[:1])
    monkeypatch.chdir(tmp_path)
    (tmp_path / gateway.SUBMISSION_NAME).write_bytes(b"stale")
    assert gateway.serve(predict, test_csv=csv, series_dir=series, share_dir=tmp_path / "sh") is None
    assert not (tmp_path / gateway.SUBMISSION_NAME).exists()
    calls = sys.modules["kaggle_evaluation.rsna_inference_server"].CALLS
    assert calls[0] == ("init", predict)
    assert calls[1] == ("run_local_gateway", (str(csv.resolve()), str(series.resolve())), str(tmp_path / "sh"))


def test_competition_gateway_local_run_always_names_a_share_dir(tmp_path, fake_evaluation, monkeypatch):
    # Off Kaggle the competition's gateway has no default share folder: file_share_dir=None makes it fail.
    def predict(series_path: str):
        return row()

    for var in ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE", "KAGGLE_UTILS_SHARE_DIR", "KAGGLE_UTILS_WORK_DIR"):
        monkeypatch.delenv(var, raising=False)
    csv, series = make_test_data(tmp_path / "data", uids=UIDS[:1])
    monkeypatch.chdir(tmp_path)
    gateway.serve(predict, test_csv=csv, series_dir=series, out_dir=tmp_path / "out")
    calls = sys.modules["kaggle_evaluation.rsna_inference_server"].CALLS
    assert calls[1][0] == "run_local_gateway" and calls[1][2] == str(tmp_path / "out" / "shared")


def test_predict_may_remove_the_share_dir_itself(tmp_path):
    # The competition's gateway recreates the share folder before exposing each series.
    share = tmp_path / "shared"

    def predict(series_path: str) -> pl.DataFrame:
        assert Path(series_path).is_dir()
        shutil.rmtree(share)
        return row()

    result = make_gateway(tmp_path, predict, seed=0).run()
    assert pl.read_parquet(result.submission).height == len(UIDS) and result.leftovers == 0


def test_competition_gateway_rerun_serves(tmp_path, fake_evaluation, monkeypatch):
    def predict(series_path: str):
        return row()

    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    gateway.serve(predict)
    assert sys.modules["kaggle_evaluation.rsna_inference_server"].CALLS[1] == ("serve",)


def test_local_flag_bypasses_competition_gateway(tmp_path, fake_evaluation):
    def predict(series_path: str):
        return row()

    csv, series = make_test_data(tmp_path / "data", uids=UIDS[:2])
    result = gateway.serve(predict, test_csv=csv, series_dir=series, share_dir=tmp_path / "sh", out_dir=tmp_path,
                           local=True)
    assert pl.read_parquet(result.submission).height == 2
    assert "kaggle_evaluation.rsna_inference_server" not in sys.modules


def test_the_competition_limits_come_from_one_place():
    """30 minutes per series and 15 minutes to reach serve(), read by the local gateway, the inference config (the
    budget guard's per-series limit) and the smoke report alike."""
    import inspect

    from kaggle_utils import limits
    from kaggle_utils.config import InferConfig

    assert limits.SERIES_TIMEOUT_S == 30 * 60 and limits.SERVER_START_LIMIT_S == 15 * 60
    assert InferConfig.call_timeout_s == limits.SERIES_TIMEOUT_S
    assert InferConfig.series_time_limit_s < limits.SERIES_TIMEOUT_S  # gives up in time to answer with the priors
    assert inspect.signature(gateway.LocalGateway).parameters["call_timeout_s"].default == limits.SERIES_TIMEOUT_S
    assert inspect.signature(gateway.serve).parameters["call_timeout_s"].default == limits.SERIES_TIMEOUT_S


def test_a_gateway_started_too_late_fails_like_the_competitions(tmp_path):
    calls = []

    def predict(series_path: str) -> pl.DataFrame:
        calls.append(series_path)
        return row()

    from kaggle_utils import limits

    late = time.monotonic() - limits.SERVER_START_LIMIT_S - 5
    with pytest.raises(gateway.GatewayError, match=r"started 15\.1 min after the notebook; the competition.s allows"):
        make_gateway(tmp_path, predict, started_at=late).run()
    assert calls == [] and not (tmp_path / "out" / gateway.SUBMISSION_NAME).exists()
    shutil.rmtree(tmp_path / "data")
    result = make_gateway(tmp_path, predict, started_at=time.monotonic() - 60).run()
    assert 60 <= result.startup_s < 120 and len(calls) == len(UIDS)


def test_limit_lines_report_the_worst_series_against_the_limits():
    lines = gateway.limit_lines([700.0, 3.0, 1790.0, 12.0], startup_s=30.0)
    assert lines[0].startswith("server start: 30.0 s") and lines[0].endswith("-> ok")
    assert "first call (loads the models, no deadline): 700.00 s" in lines[1]
    assert "worst series after the first: 1790.00 s vs the 30-minute limit" in lines[2] and "99.4%" in lines[2]
    assert lines[2].endswith("-> ok")
    slow = gateway.limit_lines([1.0, 1801.0], startup_s=15 * 60 + 1)
    assert "TOO LATE" in slow[0] and "TOO SLOW" in slow[2]
    assert gateway.limit_lines([5000.0]) == ["first call (loads the models, no deadline): 5000.00 s"]


def test_leftover_links_in_the_share_dir_are_removed_not_followed(tmp_path):
    """predict leaves a link to a folder outside the share dir: the gateway removes the link, the folder survives."""
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "model.pt").write_bytes(b"weights")

    def predict(series_path: str) -> pl.DataFrame:
        link = tmp_path / "shared" / f"link_{Path(series_path).name}"
        link.symlink_to(keep, target_is_directory=True)
        return row()

    result = make_gateway(tmp_path, predict, seed=0).run()
    assert result.leftovers == len(UIDS) and list((tmp_path / "shared").iterdir()) == []
    assert (keep / "model.pt").read_bytes() == b"weights"
