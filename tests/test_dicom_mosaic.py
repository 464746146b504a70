"""Siemens MOSAIC files through load_series: unpacked into slices with each tile's own geometry, or refused with a
SeriesError that names the file and says it is a mosaic; never one tiled slice.

The files are real Siemens mosaic headers that nibabel ships as test data (its pixel data is blank or absent, so each
test writes a known random image into the tiles). Two independent references: nibabel's ``MosaicWrapper`` (at run
time) and dcm2niix v1.0.20260724, whose affines for exactly these files are pinned below (dcm2niix is not a
dependency; ``python tests/test_dicom_mosaic.py OUT`` writes the files so they can be converted again).
"""

from __future__ import annotations

import gzip
import itertools
import math
import sys
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest

from kaggle_utils.dicom import SeriesError, load_series

NIBABEL_DICOM_DATA = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"
needs_nibabel_data = pytest.mark.skipif(
    not (NIBABEL_DICOM_DATA / "siemens_dwi_1000.dcm.gz").is_file(),
    reason=f"nibabel's DICOM test data not installed ({NIBABEL_DICOM_DATA})",
)
pytestmark = [needs_nibabel_data, pytest.mark.filterwarnings("ignore::UserWarning")]

# name -> (nibabel file, how to change it). "descending": the CSA SliceNormalVector negated (same text length), so
# the tiles are stored against the normal of ImageOrientationPatient, as in a descending acquisition.
CASES = {
    "dwi_axial": ("siemens_dwi_1000.dcm.gz", None),  # 48 slices of 128x128 in 7x7 tiles, 0.3 degree tilt
    "oblique": ("csa_slice_norm.dcm", None),  # 32 slices of 64x64 in 6x6 tiles, 26 degrees oblique, no pixel data
    "oblique_descending": ("csa_slice_norm.dcm", "descending"),
}
# dcm2niix v1.0.20260724 on the files that write_case writes: NIfTI affine (RAS+, voxel (column, row, slice)) and
# shape. Its voxels equal the tiles exactly (checked when these were taken).
DCM2NIIX_AFFINES = {
    "dwi_axial": (
        (128, 128, 48),
        [
            [-1.796875, 0.0, 0.0, 115.0],
            [0.0, 1.7968504, -0.015708005, -93.171478],
            [0.0, 0.0094084404, 2.999959, -79.90535],
        ],
    ),
    "oblique": (
        (64, 64, 32),
        [
            [-1.5, 0.0, 0.0, 43.707306],
            [0.0, 1.3470414, -0.65990877, -4.5171204],
            [0.0, 0.65990877, 1.3470414, -52.86504],
        ],
    ),
    "oblique_descending": (
        (64, 64, 32),
        [
            [-1.5, 0.0, 0.0, 43.707306],  # same first slice, slices go the other way
            [0.0, 1.3470414, 0.65990877, -4.5171204],
            [0.0, 0.65990877, -1.3470414, -52.86504],
        ],
    ),
}


def _read_source(name: str) -> pydicom.Dataset:
    path = NIBABEL_DICOM_DATA / name
    if name.endswith(".gz"):
        with gzip.open(path) as f:
            return pydicom.dcmread(f)
    return pydicom.dcmread(path)


def _negate_csa_slice_normal(ds: pydicom.Dataset) -> None:
    """Turn each '0.xxxxxxxx' item of the CSA image header's SliceNormalVector into '-.xxxxxxxx' (same length)."""
    raw = bytearray(ds[0x0029, 0x1010].value)
    start = raw.index(b"SliceNormalVector")
    end = raw.index(b"DiffusionDirectionality", start)  # the next CSA tag in these files
    block = bytes(raw[start:end])
    for item in set(block.split(b"\x00")):
        if item.startswith(b"0.") and item != b"0.00000000" and len(item) == 10:
            block = block.replace(item, b"-" + item[1:])
    raw[start:end] = block
    ds[0x0029, 0x1010].value = bytes(raw)


def tile_image(tiles: np.ndarray) -> np.ndarray:
    """``(n, r, c)`` slices -> the Siemens mosaic that stores them (row by row in ceil(sqrt(n)) tiles a side)."""
    n, r, c = tiles.shape
    m = math.ceil(math.sqrt(n))
    mosaic = np.zeros((m * r, m * c), dtype=tiles.dtype)
    for k in range(n):
        row, col = divmod(k, m)
        mosaic[row * r : (row + 1) * r, col * c : (col + 1) * c] = tiles[k]
    return mosaic


def write_case(name: str, folder: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    """Write case ``name`` into ``folder`` with random 12-bit tiles; returns the file and the ``(n, r, c)`` tiles."""
    source, change = CASES[name]
    ds = _read_source(source)
    n = csareader().get_n_mosaic(csareader().get_csa_header(ds, "image"))
    m = math.ceil(math.sqrt(n))
    rows, cols = int(ds.Rows) // m, int(ds.Columns) // m
    tiles = np.random.default_rng(seed).integers(0, 4096, size=(n, rows, cols), dtype=np.uint16)
    ds.PixelData = tile_image(tiles).astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    if change == "descending":
        _negate_csa_slice_normal(ds)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, tiles


def csareader():
    with warnings.catch_warnings():  # nibabel.nicom says on import that its DICOM readers are experimental
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader
    return csareader


def nibabel_reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """nibabel's MosaicWrapper: data ``(column, row, slice)`` and its affine to LPS mm."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers
    wrapper = dicomwrappers.wrapper_from_file(str(path))
    assert isinstance(wrapper, dicomwrappers.MosaicWrapper)
    return np.asarray(wrapper.get_data()), np.asarray(wrapper.affine)


def canonical_corners(shape, affine_lps: np.ndarray) -> np.ndarray:
    """LPS mm of the 8 corner voxels of an array with ``affine_lps``, ordered by the S, P, L canonical corners."""
    directions = affine_lps[:3, :3] / np.linalg.norm(affine_lps[:3, :3], axis=0)
    perm = [int(np.argmax(np.abs(directions[lps_axis]))) for lps_axis in (2, 1, 0)]
    flips = [directions[lps_axis, perm[j]] < 0 for j, lps_axis in enumerate((2, 1, 0))]
    corners = []
    for corner in itertools.product((0, 1), repeat=3):
        index = [0, 0, 0]
        for j in range(3):
            u = corner[j] * (shape[perm[j]] - 1)
            index[perm[j]] = shape[perm[j]] - 1 - u if flips[j] else u
        corners.append((affine_lps @ np.array([*index, 1.0]))[:3])
    return np.array(corners)


def volume_corners(volume) -> np.ndarray:
    z, y, x = (s - 1 for s in volume.shape)
    return volume.voxel_to_lps([[cz * z, cy * y, cx * x] for cz, cy, cx in itertools.product((0, 1), repeat=3)])


@pytest.mark.parametrize("name", list(CASES))
def test_mosaic_unpacks_into_the_slices_of_its_tiles(tmp_path, name):
    path, tiles = write_case(name, tmp_path / name)
    volume = load_series(path.parent)
    n, r, c = tiles.shape
    assert volume.shape == (n, r, c)  # all three are axial-ish: slices along z
    assert any("Siemens mosaic" in note and f"{n} slices of {r}x{c}" in note for note in volume.notes)
    # Each canonical slice is one whole tile (rows to P, columns to L here, so no in-plane flip).
    descending = CASES[name][1] == "descending"
    expected = tiles[::-1] if descending else tiles
    np.testing.assert_array_equal(volume.array, expected.astype(np.float32))
    assert volume.slice_sources[0][1] == (n - 1 if descending else 0)


@pytest.mark.parametrize("name", list(CASES))
def test_mosaic_geometry_matches_nibabel_mosaic_wrapper(tmp_path, name):
    path, _ = write_case(name, tmp_path / name)
    volume = load_series(path.parent)
    data, affine = nibabel_reference(path)
    assert sorted(data.shape) == sorted(volume.shape)
    np.testing.assert_allclose(volume_corners(volume), canonical_corners(data.shape, affine), atol=1e-3)
    # nibabel's voxel (column, row, slice) -> its LPS point -> our voxel holds the same value.
    rng = np.random.default_rng(1)
    idx = np.stack([rng.integers(0, s, 200) for s in data.shape], axis=1)
    ours = np.rint(volume.lps_to_voxel(idx @ affine[:3, :3].T + affine[:3, 3])).astype(int)
    np.testing.assert_array_equal(volume.array[tuple(ours.T)], data[tuple(idx.T)])


@pytest.mark.parametrize("name", list(DCM2NIIX_AFFINES))
def test_mosaic_geometry_matches_dcm2niix(tmp_path, name):
    path, _ = write_case(name, tmp_path / name)
    volume = load_series(path.parent)
    shape, affine_ras = DCM2NIIX_AFFINES[name]
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.vstack([affine_ras, [0, 0, 0, 1]])
    assert sorted(volume.shape) == sorted(shape)
    np.testing.assert_allclose(volume_corners(volume), canonical_corners(shape, affine_lps), atol=1e-3)


def test_two_mosaics_at_the_same_positions_keep_the_first_volume(tmp_path):
    folder = tmp_path / "dwi"
    _, first = write_case("dwi_axial", folder, seed=0)
    (folder / "dwi_axial.dcm").rename(folder / "b0.dcm")
    ds = pydicom.dcmread(folder / "b0.dcm")
    ds.InstanceNumber, ds.AcquisitionNumber = 2, 2
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.PixelData = tile_image(first[:, ::-1]).astype("<u2").tobytes()  # a second, different volume
    ds.save_as(folder / "b1000.dcm")
    volume = load_series(folder)
    assert volume.shape == first.shape
    assert any("4D" in note for note in volume.notes)
    np.testing.assert_array_equal(volume.array, first.astype(np.float32))


def test_tile_pixel_maps_to_its_voxel(tmp_path):
    path, tiles = write_case("oblique", tmp_path / "oblique")
    volume = load_series(path.parent)
    sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    for k, row, col in [(0, 0, 0), (5, 10, 20), (31, 63, 63)]:
        z, y, x = volume.voxel_of(sop, col, row, frame=k)
        assert volume.array[round(z), round(y), round(x)] == tiles[k, row, col]


def test_mosaic_whose_matrix_does_not_split_into_tiles_is_refused():
    # nibabel's 0.dcm: a real header that says 48 images in a mosaic, but its pixel data was cut to 256x256.
    path = NIBABEL_DICOM_DATA / "0.dcm"
    with pytest.raises(SeriesError, match="Siemens mosaic") as info:
        load_series(path)
    assert str(path) in str(info.value) and "7x7 tiles" in str(info.value)


@pytest.mark.parametrize(
    "remove,reason",
    [
        ([(0x0029, 0x1010)], "no SliceNormalVector"),
        (["SpacingBetweenSlices", "SliceThickness"], "slice step is unknown"),
    ],
)
def test_mosaic_without_slice_order_or_step_is_refused(tmp_path, remove, reason):
    path, _ = write_case("dwi_axial", tmp_path / "in")
    ds = pydicom.dcmread(path)
    for tag in remove:
        del ds[tag]
    ds.save_as(path)
    with pytest.raises(SeriesError, match="Siemens mosaic") as info:
        load_series(path.parent)
    assert str(path) in str(info.value) and reason in str(info.value)


if __name__ == "__main__":  # write the cases for an external converter: python tests/test_dicom_mosaic.py OUT
    for case in CASES:
        write_case(case, Path(sys.argv[1]) / case)
