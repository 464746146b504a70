"""The persistent decode pool used at inference: processes survive between series, compressed series decode on it
bit-identically to in-process decode, uncompressed series skip it, and pool trouble falls back to this process."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_series_writer import SeriesSpec, write_series
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from kaggle_utils import decode_pool, dicom
from kaggle_utils.dicom import load_series

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def pool():
    yield decode_pool
    decode_pool.shutdown()


def _pids(executor) -> set[int]:
    return set(executor._processes)


def test_pool_persists_between_series_and_matches_in_process_decode(tmp_path, pool):
    stored = np.random.default_rng(1).integers(0, 4000, (12, 48, 48)).astype(np.uint16)
    write_series(SeriesSpec(stored=stored, transfer_syntax=JPEG2000Lossless), tmp_path / "j2k")
    first = pool.load_series_pooled(tmp_path / "j2k", workers=2)
    executor = pool.persistent_executor(2)
    assert executor is not None and len(_pids(executor)) == 2
    pids = _pids(executor)
    second = pool.load_series_pooled(tmp_path / "j2k", workers=2)
    assert pool.persistent_executor(2) is executor and _pids(executor) == pids  # same processes, not new ones
    reference = load_series(tmp_path / "j2k")
    np.testing.assert_array_equal(first.array, stored)
    np.testing.assert_array_equal(second.array, reference.array)
    pool.shutdown()
    assert not pool.is_running() and pool.persistent_executor(2) is None


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless], ids=["uncompressed", "rle"])
def test_cheap_to_decode_series_do_not_touch_the_pool(tmp_path, pool, monkeypatch, syntax):
    stored = np.random.default_rng(2).integers(0, 4000, (12, 32, 32)).astype(np.uint16)
    write_series(SeriesSpec(stored=stored, transfer_syntax=syntax), tmp_path)
    pool.start(2)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the pool was used for a series that decodes faster than it ships")

    monkeypatch.setattr(dicom, "decode_in_pool", must_not_run)
    np.testing.assert_array_equal(pool.load_series_pooled(tmp_path, workers=2).array, stored)


def test_pool_that_cannot_start_decodes_in_this_process(tmp_path, pool, monkeypatch, caplog):
    def no_processes(*args, **kwargs):
        raise OSError("no more processes")

    monkeypatch.setattr(decode_pool, "ProcessPoolExecutor", no_processes)
    stored = np.random.default_rng(3).integers(0, 4000, (10, 32, 32)).astype(np.uint16)
    write_series(SeriesSpec(stored=stored, transfer_syntax=JPEG2000Lossless), tmp_path)
    volume = pool.load_series_pooled(tmp_path, workers=2)
    np.testing.assert_array_equal(volume.array, stored)
    assert any("decode pool unavailable" in n for n in volume.notes)
    assert "decode pool unavailable" in caplog.text


def test_a_shut_down_pool_is_restarted_by_the_next_series(tmp_path, pool):
    stored = np.random.default_rng(4).integers(0, 4000, (10, 32, 32)).astype(np.uint16)
    write_series(SeriesSpec(stored=stored, transfer_syntax=JPEG2000Lossless), tmp_path)
    executor = pool.start(2)
    executor.shutdown(wait=True)  # e.g. closed behind the kit's back: the series must still load
    volume = pool.load_series_pooled(tmp_path, workers=2)
    np.testing.assert_array_equal(volume.array, stored)
    assert not any("unavailable" in n for n in volume.notes)  # a fresh pool did the work
    assert pool.persistent_executor(2) is not executor


def test_pool_workers_follow_env_and_cores(monkeypatch):
    monkeypatch.setenv(decode_pool.ENV_WORKERS, "3")
    assert decode_pool.pool_workers() == 3
    monkeypatch.delenv(decode_pool.ENV_WORKERS)
    assert 1 <= decode_pool.pool_workers() <= decode_pool.MAX_WORKERS
    monkeypatch.setenv(decode_pool.ENV_WORKERS, "many")
    with pytest.raises(ValueError, match="KAGGLE_UTILS_DECODE_WORKERS"):
        decode_pool.pool_workers()
