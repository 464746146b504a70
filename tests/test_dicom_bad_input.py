"""Bad input: each case gives a SeriesError naming the series and the reason, or a usable volume plus a note."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
from dicom_series_writer import SeriesSpec, write_series
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from kaggle_utils import dicom_decode
from kaggle_utils.dicom import SeriesError, load_series
from kaggle_utils.errors import KitError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the odd files on purpose

SHAPE = (6, 32, 40)


def good_series(folder, **kwargs) -> SeriesSpec:
    rng = np.random.default_rng(0)
    spec = SeriesSpec(stored=rng.integers(0, 2000, SHAPE).astype(np.int16), **kwargs)
    write_series(spec, folder)
    return spec


def file_at_slice(folder, k: int):
    """The file whose ImagePositionPatient is slice ``k`` of an axial ascending series."""
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if abs(float(ds.ImagePositionPatient[2]) - k) < 1e-3:
            return path
    raise AssertionError(f"no file at slice {k}")


def test_series_error_is_a_kit_error():
    assert issubclass(SeriesError, KitError)


def test_empty_folder(tmp_path):
    with pytest.raises(SeriesError, match="empty folder") as info:
        load_series(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_truncated_last_file_is_skipped_with_a_note(tmp_path):
    good_series(tmp_path)
    last = file_at_slice(tmp_path, SHAPE[0] - 1)
    last.write_bytes(last.read_bytes()[:-500])
    volume = load_series(tmp_path)
    assert volume.shape == (SHAPE[0] - 1, *SHAPE[1:])
    assert any("truncated" in n and last.name in n for n in volume.notes)


def test_truncated_middle_file_leaves_a_noted_gap(tmp_path):
    good_series(tmp_path)
    middle = file_at_slice(tmp_path, 2)
    middle.write_bytes(middle.read_bytes()[:300])  # cut inside the header
    volume = load_series(tmp_path)
    assert volume.shape[0] == SHAPE[0] - 1
    assert any("skipped 1 of 6" in n for n in volume.notes)
    assert any("uneven slice spacing" in n for n in volume.notes)


def test_all_files_truncated(tmp_path):
    good_series(tmp_path)
    for path in tmp_path.iterdir():
        path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SeriesError, match="no usable image in 6 file.*truncated"):
        load_series(tmp_path)


def test_garbage_named_dcm_and_junk_files_are_skipped(tmp_path):
    good_series(tmp_path)
    (tmp_path / "garbage.dcm").write_bytes(os.urandom(4096))
    (tmp_path / "notes.txt").write_text("not dicom")
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 200)
    volume = load_series(tmp_path)
    assert volume.shape == SHAPE
    assert any("skipped 2 of 8" in n and "garbage.dcm" in n for n in volume.notes)


def test_only_garbage(tmp_path):
    (tmp_path / "a.dcm").write_bytes(os.urandom(4096))
    (tmp_path / "b.dcm").write_bytes(b"")
    with pytest.raises(SeriesError, match="no usable image in 2 file"):
        load_series(tmp_path)


def test_dicom_without_pixel_data(tmp_path):
    good_series(tmp_path)
    for path in tmp_path.iterdir():
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path)
    with pytest.raises(SeriesError, match="no pixel data"):
        load_series(tmp_path)


def test_segmentation_object_is_not_an_image(tmp_path):
    spec = good_series(tmp_path / "series")
    seg = pydicom.dcmread(next((tmp_path / "series").iterdir()))
    seg.Modality = "SEG"
    seg.SOPInstanceUID = "1.2.3.4.5"
    seg.save_as(tmp_path / "series" / "seg.dcm")
    volume = load_series(tmp_path / "series")  # the SEG beside a real series is skipped with a note
    assert volume.shape == SHAPE and volume.series_uid == spec.series_uid
    assert any("not an image (SEG object)" in n for n in volume.notes)
    with pytest.raises(SeriesError, match="not an image"):
        load_series(tmp_path / "series" / "seg.dcm")


def test_one_slice_is_a_one_slice_volume_with_a_note(tmp_path):
    stored = np.arange(32 * 40, dtype=np.int16).reshape(1, 32, 40)
    write_series(SeriesSpec(stored=stored, slice_spacing=2.5), tmp_path)
    volume = load_series(tmp_path)
    assert volume.shape == (1, 32, 40)
    np.testing.assert_array_equal(volume.array, stored)
    assert volume.spacing[0] == pytest.approx(2.5)
    assert any(n.startswith("single slice") for n in volume.notes)


@pytest.mark.parametrize("folder_named_after_smaller", [False, True])
def test_two_interleaved_series(tmp_path, folder_named_after_smaller):
    small = SeriesSpec(stored=np.full((3, 32, 40), 7, np.int16), name_prefix="b_")
    folder = tmp_path / (small.series_uid if folder_named_after_smaller else "series")
    big = good_series(folder, name_prefix="a_")
    write_series(small, folder)
    volume = load_series(folder)
    kept = small if folder_named_after_smaller else big
    assert volume.series_uid == kept.series_uid
    assert volume.shape[0] == kept.stored.shape[0]
    assert any("folder holds 2 series" in n for n in volume.notes)


def test_every_slice_at_the_same_position(tmp_path):
    good_series(tmp_path, step=(0.0, 0.0, 0.0))
    with pytest.raises(SeriesError, match="all 6 image frames are at the same position") as info:
        load_series(tmp_path)
    assert str(tmp_path) in str(info.value)


def _set_syntax(path, syntax: str, payload: bytes | None = None) -> None:
    ds = pydicom.dcmread(path)
    if payload is not None:
        ds.PixelData = encapsulate([payload])
        ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)


def test_transfer_syntax_without_decoder(tmp_path):
    good_series(tmp_path)
    for path in tmp_path.iterdir():
        _set_syntax(path, "1.2.840.10008.1.2.4.100", payload=b"\x00\x00\x01\xb3" + b"\x00" * 60)  # MPEG2 video
    with pytest.raises(SeriesError, match=r"transfer syntax 1\.2\.840\.10008\.1\.2\.4\.100 .*no pixel data decoder"):
        load_series(tmp_path)


def test_corrupt_compressed_file_tries_every_decoder_then_is_dropped(tmp_path):
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 2000, (10, 64, 64)).astype(np.int16)
    write_series(SeriesSpec(stored=stored, transfer_syntax=JPEG2000Lossless), tmp_path)
    bad = file_at_slice(tmp_path, 9)
    _set_syntax(bad, JPEG2000Lossless, payload=b"\xff\x4f\xff\x51" + b"\x13" * 100)
    volume = load_series(tmp_path)
    assert volume.shape == (9, 64, 64)
    note = next(n for n in volume.notes if "no decoder could read" in n)
    assert bad.name in note and "pylibjpeg" in note and "gdcm" in note
    np.testing.assert_array_equal(volume.array, stored[:9])
    for path in tmp_path.iterdir():
        _set_syntax(path, JPEG2000Lossless, payload=b"\xff\x4f\xff\x51" + b"\x13" * 100)
    with pytest.raises(SeriesError, match="no kept file could be decoded"):
        load_series(tmp_path)


class FakePanic(BaseException):
    """Stands in for pyo3's PanicException (what a Rust decoder raises on bad data): not an Exception subclass."""


def test_a_panicking_decoder_falls_back_to_the_next(tmp_path, monkeypatch):
    real_decode = dicom_decode._decode_with

    def pylibjpeg_panics(ds, task, plugin):
        if plugin == "pylibjpeg":
            raise FakePanic("index out of bounds")
        return real_decode(ds, task, plugin)

    monkeypatch.setattr(dicom_decode, "_decode_with", pylibjpeg_panics)
    stored = np.random.default_rng(6).integers(0, 3000, (3, 32, 40)).astype(np.int16)
    write_series(SeriesSpec(stored=stored, transfer_syntax=RLELossless), tmp_path)
    np.testing.assert_array_equal(load_series(tmp_path).array, stored)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless],
                         ids=["raw", "rle", "jpegls", "j2k"])
def test_randomly_corrupted_files_give_a_volume_or_a_series_error(tmp_path, syntax):
    rng = np.random.default_rng(11)
    source = tmp_path / "source"
    write_series(SeriesSpec(stored=rng.integers(0, 3000, (3, 64, 64)).astype(np.int16), transfer_syntax=syntax),
                 source)
    originals = {p.name: p.read_bytes() for p in source.iterdir()}
    outcomes = {"volume": 0, "error": 0}
    for case in range(25):
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        for name, data in originals.items():
            corrupt = bytearray(data)
            for _ in range(int(rng.integers(1, 20))):
                corrupt[int(rng.integers(0, len(corrupt)))] = int(rng.integers(0, 256))
            if rng.random() < 0.2:
                corrupt = corrupt[: int(rng.integers(0, len(corrupt)))]
            (folder / name).write_bytes(bytes(corrupt))
        try:
            load_series(folder)
            outcomes["volume"] += 1
        except SeriesError as exc:
            assert str(folder) in str(exc)
            outcomes["error"] += 1
    assert sum(outcomes.values()) == 25
