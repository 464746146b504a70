"""The loader's and resampler's fast paths give exactly what the general paths give.

Uncompressed single-frame files are read straight into the volume and rescaled row by row; other files go through
pydicom and are rescaled afterwards. A series mixing both must come out as one consistent volume. The resampler
supplies padding along z plane by plane instead of padding a copy of the block.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_series_writer import SeriesSpec, write_series
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from kaggle_utils.dicom import load_series
from kaggle_utils.roi import resample_box

SHAPE = (3, 32, 40)


@pytest.mark.parametrize("slope, intercept", [(2.0, -1024.0), (-1.0, 0.0), (1.0, 0.0)])
def test_series_mixing_direct_read_and_decoded_files_rescales_every_slice_once(tmp_path, slope, intercept):
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 2000, (2 * SHAPE[0], *SHAPE[1:])).astype(np.int16)
    common = dict(slope=slope, intercept=intercept, series_uid="1.2.3.4")
    # Slices 0-2 uncompressed (direct read), slices 3-5 RLE (pydicom decode), one series in one folder.
    write_series(SeriesSpec(stored=stored[:3], transfer_syntax=ExplicitVRLittleEndian, name_prefix="a", seed=1,
                            **common), tmp_path)
    write_series(SeriesSpec(stored=stored[3:], transfer_syntax=RLELossless, first_position=(0.0, 0.0, 3.0),
                            name_prefix="b", seed=2, **common), tmp_path)
    volume = load_series(tmp_path)
    expected = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    assert volume.array.dtype == np.float32 and volume.shape == expected.shape
    assert np.array_equal(volume.array, expected)


def test_direct_read_clears_bits_above_bits_stored(tmp_path):
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 4096, SHAPE).astype(np.uint16)
    write_series(SeriesSpec(stored=stored.astype(np.int16), transfer_syntax=ExplicitVRLittleEndian), tmp_path)
    for path in tmp_path.iterdir():  # 12 of 16 bits are pixel data; the top 4 hold junk (as old overlays did)
        ds = pydicom.dcmread(path)
        pixels = np.frombuffer(ds.PixelData, dtype="<u2").reshape(SHAPE[1:])
        ds.PixelData = (pixels | np.uint16(0xA000)).astype("<u2").tobytes()
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        ds.save_as(path)
    volume = load_series(tmp_path)
    assert np.array_equal(volume.array, stored.astype(np.float32))


def test_resample_with_z_padding_equals_resampling_an_explicitly_padded_volume():
    rng = np.random.default_rng(2)
    arr = rng.normal(size=(20, 30, 30)).astype(np.float32)
    pad, cval = 12, -5.0
    padded = np.pad(arr, ((pad, pad), (0, 0), (0, 0)), constant_values=cval)
    start, step, out_shape = np.array([-8.3, 4.2, 3.9]), np.array([3.1, 1.7, 1.6]), (12, 10, 10)
    direct = resample_box(arr, start, step, out_shape, cval)  # the grid runs past both z faces
    reference = resample_box(padded, start + np.array([pad, 0.0, 0.0]), step, out_shape, cval)  # no padding needed
    assert np.array_equal(direct, reference)
    assert np.any(direct == np.float32(cval)) and not np.all(direct == np.float32(cval))


@pytest.mark.parametrize("multiframe", [False, True], ids=["classic", "multiframe"])
def test_compressed_rows_rescaled_on_placement_equal_the_whole_volume_rescale(tmp_path, multiframe):
    """Decoded rows are rescaled as they are placed; the result must equal the float32 rescale of the whole volume
    (the old path) bit for bit, and the uncompressed direct-read path."""
    stored = np.random.default_rng(11).integers(0, 4000, (6, 24, 20)).astype(np.uint16)
    spec = dict(stored=stored, slope=0.37, intercept=-1024.5, multiframe=multiframe)
    write_series(SeriesSpec(transfer_syntax=RLELossless, **spec), tmp_path / "rle")
    write_series(SeriesSpec(transfer_syntax=ExplicitVRLittleEndian, **spec), tmp_path / "raw")
    expected = stored.astype(np.float32)
    expected *= np.float32(0.37)
    expected += np.float32(-1024.5)
    rle, raw = load_series(tmp_path / "rle"), load_series(tmp_path / "raw")
    assert rle.array.tobytes() == expected.tobytes()
    assert raw.array.tobytes() == expected.tobytes()


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8])
def test_rle_frame_decoder_path_equals_pydicom_pixel_array(tmp_path, dtype):
    """Single-frame RLE files are decoded by pylibjpeg-rle's frame decoder directly (``_rle_direct``); the values
    must be pydicom's ``pixel_array`` of the same file, and the loaded volume its float32 rescale."""
    from kaggle_utils.dicom_decode import DecodeTask, _rle_direct, decode_dataset

    info = np.iinfo(dtype)
    stored = np.random.default_rng(5).integers(max(info.min, -3000), min(info.max, 3000), SHAPE).astype(dtype)
    write_series(SeriesSpec(stored=stored, transfer_syntax=RLELossless, slope=1.0, intercept=-1024.0), tmp_path)
    for path in sorted(tmp_path.iterdir()):
        ds = pydicom.dcmread(path)
        task = DecodeTask(str(path), None, 1)
        direct = _rle_direct(ds, task, str(ds.file_meta.TransferSyntaxUID))
        assert direct is not None, "the fast path must take this file"
        reference = pydicom.dcmread(path).pixel_array
        assert direct.dtype == reference.dtype and np.array_equal(direct[0], reference)
        assert np.array_equal(decode_dataset(ds, task)[0], reference)
    volume = load_series(tmp_path)
    assert np.array_equal(volume.array, stored.astype(np.float32) + np.float32(-1024.0))


def test_rle_with_unused_high_bits_goes_through_pydicom(tmp_path):
    from kaggle_utils.dicom_decode import DecodeTask, _rle_direct

    stored = np.random.default_rng(6).integers(0, 4000, SHAPE).astype(np.uint16)
    write_series(SeriesSpec(stored=stored, transfer_syntax=RLELossless), tmp_path)
    path = sorted(tmp_path.iterdir())[0]
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 12, 11
    assert _rle_direct(ds, DecodeTask(str(path), None, 1), str(ds.file_meta.TransferSyntaxUID)) is None
