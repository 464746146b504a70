"""Geometry round trips through synthetic DICOM written with known LPS geometry: orientation, ordering, voxel_of."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_series_writer import SeriesSpec, write_series
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from kaggle_utils import dicom_decode
from kaggle_utils.dicom import SeriesError, UnknownInstanceError, load_series
from kaggle_utils.dicom_decode import DecodeTask, split_tasks
from kaggle_utils.dicom_geometry import fallback_inplane_spacing, fallback_slice_spacing

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the odd files on purpose

SHAPE = (7, 40, 48)  # (slices, rows, cols): all different, so a wrong permutation shows up in the shape
MARKER = (2, 9, 31)  # acquisition voxel (k, r, c) of the one bright voxel
S20, C20 = np.sin(np.radians(20)), np.cos(np.radians(20))
ORIENTATIONS = {
    "axial": (1, 0, 0, 0, 1, 0),
    "axial_flipped_rows": (-1, 0, 0, 0, 1, 0),
    "coronal": (1, 0, 0, 0, 0, -1),
    "sagittal": (0, 1, 0, 0, 0, -1),
    "oblique_sagittal_20deg": (0, C20, -S20, 0, S20, C20),
}


def marker_stack(dtype=np.int16, background: int = 100, peak: int = 3000) -> np.ndarray:
    stored = np.full(SHAPE, background, dtype=dtype)
    stored[MARKER] = peak
    return stored


def expected_canonical_voxel(spec: SeriesSpec, volume) -> np.ndarray:
    lps = spec.affine_acq() @ np.array([*MARKER, 1.0])
    return volume.lps_to_voxel(lps[:3])[0]


def assert_canonical_axes(volume) -> None:
    """Each canonical axis points mostly along +S (z), +P (y), +L (x)."""
    directions = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    for j, lps_axis in enumerate((2, 1, 0)):
        assert int(np.argmax(np.abs(directions[:, j]))) == lps_axis
        assert directions[lps_axis, j] > 0.7


@pytest.mark.parametrize("reverse", [False, True], ids=["ascending", "reversed"])
@pytest.mark.parametrize("plane", list(ORIENTATIONS))
def test_marker_lands_where_its_lps_point_says(tmp_path, plane, reverse):
    orientation = np.array(ORIENTATIONS[plane], dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    step = -1.5 * normal if reverse else 1.5 * normal
    spec = SeriesSpec(stored=marker_stack(), orientation=orientation, pixel_spacing=(0.6, 0.8),
                      first_position=(-12.0, 30.5, 47.25), step=step, seed=3)
    sources = write_series(spec, tmp_path)
    volume = load_series(tmp_path)

    assert_canonical_axes(volume)
    assert volume.array.dtype == np.float32 and volume.array.flags.c_contiguous
    peak = np.array(np.unravel_index(np.argmax(volume.array), volume.shape))
    np.testing.assert_allclose(expected_canonical_voxel(spec, volume), peak, atol=1e-3)
    # Affine round trip: the peak voxel maps back to the marker's LPS point.
    np.testing.assert_allclose(volume.voxel_to_lps(peak)[0], (spec.affine_acq() @ np.array([*MARKER, 1.0]))[:3],
                               atol=1e-3)
    # voxel_of: the marker's pixel (column x, row y) in its own instance lands on the peak.
    sop, frame = sources[MARKER[0]]
    np.testing.assert_allclose(volume.voxel_of(sop, MARKER[2], MARKER[1], frame), peak, atol=1e-3)
    # slice_sources runs along slice_axis and puts the marker's instance at the peak's index on that axis.
    assert volume.slice_sources[int(peak[volume.slice_axis])] == (sop, frame)
    assert sorted(volume.spacing) == sorted([1.5, 0.6, 0.8])
    assert volume.modality == "CT"


def test_gantry_tilt_shear_is_kept_in_the_affine(tmp_path):
    # Positions step along z but also along y (tilted gantry): the affine's z column must carry that shear.
    spec = SeriesSpec(stored=marker_stack(), step=(0.0, 0.3, 2.0), pixel_spacing=(0.5, 0.5))
    write_series(spec, tmp_path)
    volume = load_series(tmp_path)
    np.testing.assert_allclose(volume.affine[:3, 0], (0.0, 0.3, 2.0), atol=1e-5)
    peak = np.array(np.unravel_index(np.argmax(volume.array), volume.shape))
    np.testing.assert_allclose(expected_canonical_voxel(spec, volume), peak, atol=1e-3)


def test_sorting_ignores_file_names_and_instance_numbers(tmp_path):
    stored = np.arange(SHAPE[0], dtype=np.int16)[:, None, None] * np.ones(SHAPE, dtype=np.int16)
    spec = SeriesSpec(stored=stored, instance_numbers=[5, 1, 7, 2, 6, 3, 4], seed=11)
    write_series(spec, tmp_path)
    volume = load_series(tmp_path)
    np.testing.assert_array_equal(volume.array[:, 0, 0], np.arange(SHAPE[0]))


@pytest.mark.parametrize("with_geometry", [True, False], ids=["geometry", "no_geometry"])
def test_multiframe(tmp_path, with_geometry):
    spec = SeriesSpec(stored=marker_stack(), modality="MR", multiframe=True, write_geometry=with_geometry,
                      orientation=ORIENTATIONS["coronal"], pixel_spacing=(0.7, 0.7), slice_spacing=2.0)
    sources = write_series(spec, tmp_path)
    volume = load_series(tmp_path)
    assert volume.modality == "MR"
    sop, frame = sources[MARKER[0]]
    assert frame == MARKER[0]
    peak = np.array(np.unravel_index(np.argmax(volume.array), volume.shape))
    np.testing.assert_allclose(volume.voxel_of(sop, MARKER[2], MARKER[1], frame), peak, atol=1e-3)
    if with_geometry:
        assert volume.shape == (SHAPE[1], SHAPE[0], SHAPE[2])  # coronal: rows -> z, slices -> y
        np.testing.assert_allclose(expected_canonical_voxel(spec, volume), peak, atol=1e-3)
        assert volume.spacing == pytest.approx((0.7, 2.0, 0.7))
    else:
        # Documented fallback: axial, frames towards Superior, spacing from the matrix and the frame count.
        assert volume.shape == SHAPE
        inplane = fallback_inplane_spacing(SHAPE[1], SHAPE[2])
        assert volume.spacing == pytest.approx((fallback_slice_spacing(SHAPE[0]), inplane, inplane))
        assert tuple(peak) == MARKER
        assert any("no PixelSpacing" in n for n in volume.notes)
        assert any("no ImagePositionPatient" in n for n in volume.notes)
        with pytest.raises(UnknownInstanceError):
            volume.voxel_of(sop, 1, 1)  # multi-frame needs its frame
    with pytest.raises(UnknownInstanceError):
        volume.voxel_of("1.2.3.unknown", 1, 1)


def test_fallback_spacing_rules():
    assert fallback_inplane_spacing(512, 512) == 0.5
    assert fallback_inplane_spacing(256, 256) == pytest.approx(220 / 256)
    assert fallback_slice_spacing(80) == 5.0
    assert fallback_slice_spacing(81) == 0.55


def test_scouts_of_other_orientation_and_size_are_dropped(tmp_path):
    spec = SeriesSpec(stored=marker_stack())
    sources = write_series(spec, tmp_path)
    scout_cor = SeriesSpec(stored=np.zeros((2, 40, 48), np.int16), orientation=ORIENTATIONS["coronal"],
                           series_uid=spec.series_uid, name_prefix="scout_cor_")
    scout_big = SeriesSpec(stored=np.zeros((1, 64, 64), np.int16), series_uid=spec.series_uid,
                           name_prefix="scout_big_")
    write_series(scout_cor, tmp_path)
    write_series(scout_big, tmp_path)
    volume = load_series(tmp_path)
    assert volume.shape == SHAPE
    assert [s for s in volume.slice_sources] == sources
    assert any("dropped 3 frame(s) with another geometry" in n for n in volume.notes)


def test_4d_keeps_first_time_point(tmp_path):
    n = SHAPE[0]
    first = SeriesSpec(stored=np.full(SHAPE, 10, np.int16), instance_numbers=range(1, n + 1), name_prefix="t0_")
    second = SeriesSpec(stored=np.full(SHAPE, 20, np.int16), instance_numbers=range(n + 1, 2 * n + 1),
                        series_uid=first.series_uid, name_prefix="t1_", seed=5)
    write_series(first, tmp_path)
    write_series(second, tmp_path)
    volume = load_series(tmp_path)
    assert volume.shape == SHAPE
    assert np.all(volume.array == 10)
    assert any(n.startswith("4D: 2 frames per position") for n in volume.notes)


def test_duplicate_positions_removed_and_gaps_noted(tmp_path):
    stored = marker_stack()
    spec = SeriesSpec(stored=stored)
    write_series(spec, tmp_path)
    dup = SeriesSpec(stored=stored[:1], series_uid=spec.series_uid, name_prefix="dup_", instance_numbers=[99])
    write_series(dup, tmp_path)
    gap = SeriesSpec(stored=stored[:1], series_uid=spec.series_uid, name_prefix="gap_",
                     first_position=(0, 0, SHAPE[0] + 5.0))
    write_series(gap, tmp_path)
    volume = load_series(tmp_path)
    assert volume.shape == (SHAPE[0] + 1, SHAPE[1], SHAPE[2])
    assert any("duplicate positions" in n for n in volume.notes)
    assert any("uneven slice spacing" in n for n in volume.notes)
    assert volume.spacing[0] == pytest.approx(1.0)


@pytest.mark.parametrize("dtype,intercept,slope", [(np.int16, 0.0, 1.0), (np.uint16, -1024.0, 1.0),
                                                    (np.int16, -1000.0, 2.5), (np.uint8, 0.0, 0.5)])
def test_rescale_and_pixel_representation(tmp_path, dtype, intercept, slope):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    stored = rng.integers(info.min, info.max, SHAPE, endpoint=True).astype(dtype)
    write_series(SeriesSpec(stored=stored, intercept=intercept, slope=slope), tmp_path)
    volume = load_series(tmp_path)
    np.testing.assert_allclose(volume.array, stored.astype(np.float64) * slope + intercept, rtol=1e-6, atol=1e-2)


def test_monochrome1_is_inverted(tmp_path):
    stored = marker_stack(np.uint16, background=100, peak=3000)
    write_series(SeriesSpec(stored=stored, photometric="MONOCHROME1"), tmp_path)
    volume = load_series(tmp_path)
    assert volume.array[MARKER] == 100 and volume.array.max() == 3000  # the marker is now the dark voxel
    assert any("MONOCHROME1" in n for n in volume.notes)


@pytest.mark.parametrize("ts", [RLELossless, JPEG2000Lossless, JPEGLSLossless], ids=["rle", "j2k", "jpegls"])
def test_compressed_series_match_uncompressed(tmp_path, ts):
    rng = np.random.default_rng(1)
    stored = rng.integers(-1024, 3000, (4, 64, 64)).astype(np.int16)
    write_series(SeriesSpec(stored=stored, transfer_syntax=ts, intercept=-10.0), tmp_path)
    volume = load_series(tmp_path)
    np.testing.assert_array_equal(volume.array, stored.astype(np.float32) - 10.0)


@pytest.mark.parametrize("multiframe", [False, True], ids=["classic", "multiframe"])
def test_parallel_decode_matches_in_process(tmp_path, multiframe):
    rng = np.random.default_rng(2)
    stored = rng.integers(0, 4000, (12, 64, 64)).astype(np.uint16)
    write_series(SeriesSpec(stored=stored, transfer_syntax=JPEG2000Lossless, multiframe=multiframe, modality="MR"),
                 tmp_path)
    one = load_series(tmp_path, workers=1)
    two = load_series(tmp_path, workers=2)
    np.testing.assert_array_equal(one.array, two.array)
    np.testing.assert_array_equal(two.array, stored)
    np.testing.assert_array_equal(one.affine, two.affine)
    assert one.slice_sources == two.slice_sources


def test_split_tasks_cuts_big_multiframe_files_only():
    tasks = [DecodeTask("a.dcm", None, 1), DecodeTask("b.dcm", tuple(range(10)), 10)]
    split = split_tasks(tasks, 2)
    assert [t for t, _ in split] == [0, 1, 1]
    assert split[1][1].frames + split[2][1].frames == tuple(range(10))


def test_pool_that_cannot_start_falls_back_to_this_process(tmp_path, monkeypatch):
    def no_processes(*args, **kwargs):
        raise OSError("no more processes")

    monkeypatch.setattr(dicom_decode, "ProcessPoolExecutor", no_processes)
    stored = np.random.default_rng(4).integers(0, 4000, (10, 64, 64)).astype(np.uint16)
    write_series(SeriesSpec(stored=stored, transfer_syntax=JPEG2000Lossless), tmp_path)
    volume = load_series(tmp_path, workers=2)
    np.testing.assert_array_equal(volume.array, stored)
    assert any("process pool unavailable" in n for n in volume.notes)


def test_file_without_meta_loads(tmp_path):
    stored = marker_stack()
    write_series(SeriesSpec(stored=stored, file_meta=False), tmp_path)
    assert (tmp_path / "0000.dcm").read_bytes()[128:132] != b"DICM"
    volume = load_series(tmp_path)
    np.testing.assert_array_equal(volume.array, stored)


def test_single_file_path_is_accepted_and_missing_path_is_a_series_error(tmp_path):
    spec = SeriesSpec(stored=marker_stack(), multiframe=True, modality="MR")
    write_series(spec, tmp_path / "mf")
    (path,) = list((tmp_path / "mf").iterdir())
    assert load_series(path).shape == SHAPE
    with pytest.raises(SeriesError, match="no such folder"):
        load_series(tmp_path / "missing")


def test_a_failing_decoder_is_retried_with_the_next_one(tmp_path, monkeypatch):
    real_decode = dicom_decode._decode_with
    tried = []

    def first_plugin_fails(ds, task, plugin):
        tried.append(plugin)
        if plugin == "gdcm":
            raise RuntimeError("simulated decoder failure")
        return real_decode(ds, task, plugin)

    monkeypatch.setattr(dicom_decode, "_decode_with", first_plugin_fails)
    stored = np.random.default_rng(5).integers(0, 4000, (3, 64, 64)).astype(np.uint16)
    write_series(SeriesSpec(stored=stored, transfer_syntax=JPEG2000Lossless), tmp_path)
    volume = load_series(tmp_path)
    np.testing.assert_array_equal(volume.array, stored)
    assert tried[:2] == ["gdcm", "pylibjpeg"]  # gdcm is measured fastest for JPEG 2000, pylibjpeg is the retry
    (note,) = [n for n in volume.notes if "decoder fallback" in n]
    assert "on 3 file(s)" in note and "decoded with pylibjpeg after gdcm: RuntimeError" in note
