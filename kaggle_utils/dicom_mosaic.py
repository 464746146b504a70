"""Siemens MOSAIC files: one stored image that tiles a whole stack of slices, unpacked into one frame per slice.

A Siemens MR file whose ImageType contains ``MOSAIC`` stores ``n`` slices (``NumberOfImagesInMosaic``, private tag
(0019,100A) or the CSA image header) as tiles of one ``Rows x Columns`` image, ``m = ceil(sqrt(n))`` tiles per side,
slice ``k`` at tile row ``k // m``, tile column ``k % m``. Read as a plain image it is one wrong slice; here it becomes
``n`` frames of ``Rows/m x Columns/m`` with their own positions, as if it were an enhanced multi-frame file:

- ``ImagePositionPatient`` is the corner of the whole tiled image, placed so that the tiled image and each tile share
  one centre; the first slice's corner is therefore that position moved ``(Columns - Columns/m) / 2`` pixels along the
  row direction and ``(Rows - Rows/m) / 2`` pixels along the column direction (the convention dcm2niix and nibabel's
  ``MosaicWrapper`` document);
- slice ``k`` lies ``k`` steps further along the CSA header's ``SliceNormalVector``, whose sign gives the order in
  which the tiles were stored; a step is ``SpacingBetweenSlices``, else ``SliceThickness``.

When any of this cannot be established (no image count, a matrix that does not split into ``m x m`` tiles, no CSA
slice normal or one that is not perpendicular to the rows and columns, no slice spacing, colour pixels), the file is
refused with a ``SeriesError`` that names it and says it is a Siemens mosaic: a mosaic never loads as a tiled slice.

The pixel data of a mosaic is decoded while headers are read and replaced, in memory only, by the ``n`` tiles as
native little-endian frames, so the loader's ordinary multi-frame decode path reads them.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian

from kaggle_utils.dicom import SeriesError
from kaggle_utils.dicom_headers import FrameInfo

IMAGE_TYPE_TAG = 0x00080008
SIEMENS_MR_HEADER = "SIEMENS MR HEADER"
N_MOSAIC_ELEMENT = 0x0A  # (0019,xx0A) NumberOfImagesInMosaic in the "SIEMENS MR HEADER" private block
N_MOSAIC_TAG = 0x0019100A  # where Siemens puts that block in practice
# The CSA slice normal must be this parallel (|cos|) to the normal of ImageOrientationPatient.
NORMAL_COS_MIN = 0.99


def is_mosaic(ds: Dataset) -> bool:
    """ImageType contains MOSAIC (read from the raw bytes: this runs on every file of every series)."""
    elem = ds._dict.get(IMAGE_TYPE_TAG)
    if elem is None:
        return False
    value = elem.value
    if isinstance(elem, RawDataElement) or isinstance(value, bytes):
        return value is not None and b"MOSAIC" in bytes(value).upper()
    text = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple, MultiValue)) else str(value)
    return "MOSAIC" in text.upper()


def _as_int(value) -> int | None:
    if isinstance(value, (bytes, bytearray)):  # an explicit-VR file may store the private element as UN
        return int.from_bytes(value[:2], "little") if len(value) >= 2 else None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _csa_image_header(ds: Dataset) -> dict | None:
    with warnings.catch_warnings():  # nibabel.nicom announces on import that its DICOM readers are experimental
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader
    try:
        return csareader.get_csa_header(ds, "image")
    except (csareader.CSAError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise _MosaicProblem(f"its CSA image header (0029,1010) cannot be read ({type(exc).__name__}: {exc})") from exc


def _csa_items(csa: dict | None, name: str) -> list:
    if not csa:
        return []
    tag = csa.get("tags", {}).get(name)
    return list(tag.get("items", [])) if tag else []


class _MosaicProblem(Exception):
    """Why a mosaic cannot be unpacked; turned into a SeriesError naming the file."""


def n_images_in_mosaic(ds: Dataset, csa: dict | None) -> int:
    """NumberOfImagesInMosaic from the private block, else the raw (0019,100A), else the CSA image header."""
    try:
        value = _as_int(ds.get_private_item(0x0019, N_MOSAIC_ELEMENT, SIEMENS_MR_HEADER).value)
    except KeyError:
        value = None
    if value is None and N_MOSAIC_TAG in ds:
        value = _as_int(ds[N_MOSAIC_TAG].value)
    if value is None:
        items = _csa_items(csa, "NumberOfImagesInMosaic")
        value = _as_int(items[0]) if items else None
    if value is None or value < 1:
        raise _MosaicProblem("NumberOfImagesInMosaic is missing (neither (0019,100A) nor the CSA image header has it)")
    return value


def slice_normal_of(frame: FrameInfo, csa: dict | None) -> np.ndarray:
    """The CSA SliceNormalVector (unit length), checked against the normal of ImageOrientationPatient."""
    items = _csa_items(csa, "SliceNormalVector")
    if len(items) != 3:
        raise _MosaicProblem("the CSA image header has no SliceNormalVector, so the slice order is unknown")
    normal = np.asarray(items, dtype=np.float64)
    length = float(np.linalg.norm(normal))
    if not np.isfinite(length) or length < 1e-6:
        raise _MosaicProblem(f"the CSA SliceNormalVector {items} is not a direction")
    normal /= length
    if frame.orientation is None:
        raise _MosaicProblem("it has no usable ImageOrientationPatient")
    cross = np.cross(frame.orientation[:3], frame.orientation[3:])
    cos = float(abs(normal @ cross) / np.linalg.norm(cross))
    if cos < NORMAL_COS_MIN:
        raise _MosaicProblem(
            f"the CSA SliceNormalVector {np.round(normal, 4).tolist()} is not perpendicular to "
            f"ImageOrientationPatient (|cos| {cos:.3f} with its normal)"
        )
    return normal


def tiles_of(mosaic: np.ndarray, n: int) -> np.ndarray:
    """``(rows, cols)`` mosaic -> ``(n, rows/m, cols/m)`` tiles in storage order (row by row), ``m = ceil(sqrt(n))``."""
    m = math.ceil(math.sqrt(n))
    rows, cols = mosaic.shape
    tr, tc = rows // m, cols // m
    return mosaic.reshape(m, tr, m, tc).transpose(0, 2, 1, 3).reshape(m * m, tr, tc)[:n]


def unpack_mosaics(frames: list[FrameInfo], datasets: dict[str, Dataset]) -> tuple[list[FrameInfo], list[str]]:
    """The header reader's frames with every Siemens mosaic file replaced by one frame per tile (its dataset
    rewritten in memory to hold the tiles as native multi-frame pixel data), and a note per kind of mosaic. Other
    files pass unchanged. Raises ``SeriesError`` naming the file when a mosaic cannot be unpacked reliably."""
    mosaic_paths = [path for path, ds in datasets.items() if is_mosaic(ds)]
    if not mosaic_paths:
        return frames, []
    by_path: dict[str, list[FrameInfo]] = {}
    for f in frames:
        by_path.setdefault(f.path, []).append(f)
    unpacked: dict[str, list[FrameInfo]] = {}
    for path in mosaic_paths:
        try:
            unpacked[path] = _unpack(by_path[path], datasets[path])
        except _MosaicProblem as exc:
            raise SeriesError(
                f"{path}: Siemens mosaic (ImageType MOSAIC) that cannot be unpacked into slices: "
                f"{exc}; convert it with dcm2niix, or leave it out"
            ) from exc
    out = [tile for path, group in by_path.items() for tile in unpacked.get(path, group)]
    kinds = sorted({(len(t), t[0].rows, t[0].cols) for t in unpacked.values()})
    notes = [
        f"Siemens mosaic: {len(unpacked)} file(s) unpacked into "
        + ", ".join(f"{n} slices of {r}x{c}" for n, r, c in kinds)
    ]
    return out, notes


def _unpack(frames: list[FrameInfo], ds: Dataset) -> list[FrameInfo]:
    if len(frames) != 1 or frames[0].frame is not None:
        raise _MosaicProblem(f"it is a multi-frame file ({len(frames)} frames); only single-frame mosaics are known")
    frame = frames[0]
    if frame.samples != 1:
        raise _MosaicProblem(f"it has {frame.samples} samples per pixel (mosaics are grayscale)")
    csa = _csa_image_header(ds)
    n = n_images_in_mosaic(ds, csa)
    m = math.ceil(math.sqrt(n))
    if frame.rows % m or frame.cols % m:
        raise _MosaicProblem(f"its {frame.rows}x{frame.cols} matrix does not split into {m}x{m} tiles for {n} images")
    tile_rows, tile_cols = frame.rows // m, frame.cols // m
    normal = slice_normal_of(frame, csa)
    step = frame.spacing_between if frame.spacing_between and frame.spacing_between > 0 else frame.slice_thickness
    if not step or step <= 0:
        raise _MosaicProblem("it has neither SpacingBetweenSlices nor SliceThickness, so the slice step is unknown")
    if frame.position is None or frame.pixel_spacing is None:
        raise _MosaicProblem("it has no ImagePositionPatient or PixelSpacing, so its tiles cannot be placed")
    row_mm, col_mm = frame.pixel_spacing
    first = (
        frame.position
        + frame.orientation[:3] * col_mm * (frame.cols - tile_cols) / 2.0
        + frame.orientation[3:] * row_mm * (frame.rows - tile_rows) / 2.0
    )

    mosaic = pixel_array(ds)
    if mosaic.shape != (frame.rows, frame.cols):
        raise _MosaicProblem(f"its pixel data decodes to {mosaic.shape}, not {frame.rows}x{frame.cols}")
    tiles = np.ascontiguousarray(tiles_of(mosaic, n), dtype=mosaic.dtype.newbyteorder("<"))
    ds.PixelData = tiles.tobytes()
    ds.Rows, ds.Columns, ds.NumberOfFrames = tile_rows, tile_cols, n
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return [
        dataclasses.replace(
            frame,
            frame=k,
            rows=tile_rows,
            cols=tile_cols,
            position=first + k * step * normal,
            transfer_syntax=str(ExplicitVRLittleEndian),
            n_frames_in_file=n,
            order_key=(*frame.order_key[:-1], k),
            fallback=list(frame.fallback),
        )
        for k in range(n)
    ]
