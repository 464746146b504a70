"""DICOM header reading for the series loader: one ``FrameInfo`` per image frame, pixel data left on disk.

Classic files give one frame each; enhanced multi-frame files give one per frame, with geometry and rescale taken from
the per-frame functional groups, then the shared ones, then the top-level tags. A file that cannot be used raises
``UnusableFile`` with the reason; the loader turns those into notes or a ``SeriesError``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

# Values at least this long stay on disk while headers are read (pixel data, big private blobs).
DEFER_SIZE = "2 KB"
PIXEL_DATA_TAG = 0x7FE00010
# Larger frames than this are a corrupt header, not an image (the largest radiographs are about 4k x 5k).
MAX_FRAME_PIXELS = 8192 * 8192
# Objects that carry pixel data but are not images of the patient.
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "KO", "PR", "REG", "RWV", "DOC"}
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class UnusableFile(Exception):
    """A file in a series folder that cannot contribute image frames; ``str()`` is the reason."""


@dataclass
class FrameInfo:
    """What the loader needs to know about one image frame, read from headers only."""

    path: str
    sop_uid: str
    frame: int | None  # 0-based frame index for multi-frame files, None for a classic single-frame file
    series_uid: str
    modality: str
    rows: int
    cols: int
    samples: int
    position: np.ndarray | None  # ImagePositionPatient (3,), LPS mm
    orientation: np.ndarray | None  # ImageOrientationPatient (6,): row direction, then column direction
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm
    slice_thickness: float | None
    spacing_between: float | None
    slope: float
    intercept: float
    photometric: str
    transfer_syntax: str
    n_frames_in_file: int
    order_key: tuple = ()  # acquisition order used to pick the first time point at each position
    fallback: list[str] = field(default_factory=list)  # geometry pieces that were assumed, not read

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.sop_uid, self.frame)


def _float_or_none(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _vector_or_none(value, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _spacing_or_none(value) -> tuple[float, float] | None:
    arr = _vector_or_none(value, 2)
    if arr is None or np.any(arr <= 0):
        return None
    return (float(arr[0]), float(arr[1]))


def _orientation_or_none(value) -> np.ndarray | None:
    """Both direction cosines, normalised; None when missing or degenerate (zero or parallel vectors)."""
    arr = _vector_or_none(value, 6)
    if arr is None:
        return None
    row, col = arr[:3], arr[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if nr < 1e-6 or nc < 1e-6 or np.linalg.norm(np.cross(row / nr, col / nc)) < 0.5:
        return None
    return np.concatenate([row / nr, col / nc])


@functools.lru_cache(maxsize=256)
def _orientation_of_text(key) -> np.ndarray | None:
    arr = _orientation_or_none(list(key) if isinstance(key, tuple) else key)
    if arr is not None:
        arr.setflags(write=False)
    return arr


def _cached_orientation(value) -> np.ndarray | None:
    """``_orientation_or_none`` of a header text value, computed once per distinct value (a series shares one)."""
    arr = _orientation_of_text(tuple(value) if isinstance(value, list) else value)
    return None if arr is None else arr.copy()


def _int_or(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        pass
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return default


_TEXT_TAGS = {kw: tag_for_keyword(kw) for kw in (
    "Modality", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "PhotometricInterpretation",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices",
    "RescaleSlope", "RescaleIntercept", "InstanceNumber", "AcquisitionNumber", "TemporalPositionIdentifier",
    "NumberOfFrames")}


def _text(ds: Dataset, keyword: str):
    """A top-level text-VR value (CS, UI, DS, IS) read from its raw bytes: a str, a list of str, or None.

    pydicom's per-value conversion and validation cost more than the rest of header reading together; these
    values are plain ASCII, so splitting the bytes is enough."""
    elem = ds._dict.get(_TEXT_TAGS[keyword])
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        if elem.value is None:
            return None
        text = elem.value.decode("latin-1")
    else:
        value = elem.value
        if isinstance(value, (list, tuple, MultiValue)):
            return [str(v) for v in value] or None
        text = "" if value is None else str(value)
    parts = [p.strip(" \x00") for p in text.split("\\")]
    if not any(parts):
        return None
    return parts if len(parts) > 1 else parts[0]


_US_TAGS = {kw: tag_for_keyword(kw) for kw in (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel")}


def us_value(ds: Dataset, keyword: str, default=None):
    """``ds.get(keyword, default)`` for a top-level US element (Rows, BitsAllocated, ...), read from the raw bytes
    when it is a plain 2-byte value; anything else goes through pydicom as before."""
    elem = ds._dict.get(_US_TAGS[keyword])
    if isinstance(elem, RawDataElement) and elem.VR in ("US", None) and elem.value is not None and len(
            elem.value) == 2:
        return int.from_bytes(elem.value, "little" if elem.is_little_endian else "big")
    return ds.get(keyword, default)


def read_dataset(path: str | os.PathLike) -> Dataset:
    """Read one file's headers (pixel data deferred); files without file meta are read with ``force``."""
    try:
        return pydicom.dcmread(path, defer_size=DEFER_SIZE)
    except InvalidDicomError:
        pass
    try:
        ds = pydicom.dcmread(path, defer_size=DEFER_SIZE, force=True)
    except Exception as exc:  # noqa: BLE001 - any parser failure means "not readable DICOM"; reported by caller
        raise UnusableFile(f"not readable as DICOM ({type(exc).__name__}: {exc})") from exc
    if not any(tag in ds for tag in ("Rows", "SOPInstanceUID", PIXEL_DATA_TAG)):
        raise UnusableFile("not a DICOM file (no DICM prefix and no DICOM image attributes)")
    return ds


def transfer_syntax_of(ds: Dataset) -> UID:
    """The file's transfer syntax; for files without file meta, the encoding pydicom guessed while reading."""
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if ts:
        return ts if isinstance(ts, UID) else UID(ts)
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if not little:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def ensure_transfer_syntax(ds: Dataset) -> UID:
    """Make sure ``ds.file_meta.TransferSyntaxUID`` is set (pydicom's decoders need it) and return it."""
    ts = transfer_syntax_of(ds)
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    if not getattr(ds.file_meta, "TransferSyntaxUID", None):
        ds.file_meta.TransferSyntaxUID = ts
    return ts


def _as_uid(ts) -> UID:
    return ts if isinstance(ts, UID) else UID(ts)  # UID() validates its text each time


@functools.lru_cache(maxsize=64)
def _decoder_status(ts: UID) -> tuple[str | None, bool]:
    """(why no installed decoder handles ``ts``, or None; whether it is a native syntax), once per syntax."""
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return f"transfer syntax {ts} ({ts.name}) has no pixel data decoder in pydicom", False
    if not decoder.is_available:
        missing = "; ".join(f"{k}: {v}" for k, v in decoder.missing_dependencies.items()) if hasattr(
            decoder, "missing_dependencies") else ""
        return f"transfer syntax {ts} ({ts.name}) has no installed decoder ({missing})", False
    return None, bool(decoder.is_native)


def check_decodable(ts: UID) -> None:
    """Raise ``UnusableFile`` when no installed pixel decoder handles ``ts``."""
    reason, _ = _decoder_status(_as_uid(ts))
    if reason is not None:
        raise UnusableFile(reason)


def _check_pixel_data(ds: Dataset, path: str, ts: UID, n_frames: int) -> None:
    """Reject non-images, missing pixel data and native pixel data cut short by a truncated file."""
    modality = str(_text(ds, "Modality") or "").upper()
    sop_class = str(_text(ds, "SOPClassUID") or "")
    if modality in NON_IMAGE_MODALITIES or sop_class == SEGMENTATION_SOP_CLASS:
        raise UnusableFile(f"not an image ({modality or 'SOP class ' + sop_class} object)")
    if PIXEL_DATA_TAG not in ds:
        other = "float pixel data (not supported)" if (0x7FE00008 in ds or 0x7FE00009 in ds) else "no pixel data"
        raise UnusableFile(other)
    check_decodable(ts)
    if int(us_value(ds, "BitsAllocated", 16) or 16) == 1:
        raise UnusableFile("1-bit pixel data (a mask, not an image)")
    raw = ds._dict.get(PIXEL_DATA_TAG)
    value_tell = getattr(raw, "value_tell", None)
    length = getattr(raw, "length", None)
    # Offsets in a deflated file are positions in the inflated stream, not in the file.
    if value_tell is not None and length is not None and length != 0xFFFFFFFF and ts != DeflatedExplicitVRLittleEndian:
        size = os.path.getsize(path)
        if value_tell + length > size:
            raise UnusableFile(f"truncated: pixel data needs {length} bytes, file has {size - value_tell}")
    rows, cols = _int_or(us_value(ds, "Rows"), 0), _int_or(us_value(ds, "Columns"), 0)
    if rows <= 0 or cols <= 0 or rows * cols > MAX_FRAME_PIXELS:
        raise UnusableFile(f"bad matrix size Rows={ds.get('Rows')} Columns={ds.get('Columns')}")
    if _decoder_status(_as_uid(ts))[1]:
        bits = int(us_value(ds, "BitsAllocated", 16) or 16)
        spp = int(us_value(ds, "SamplesPerPixel", 1) or 1)
        expected = rows * cols * n_frames * spp * bits // 8
        if length is not None and length != 0xFFFFFFFF and length < expected:
            raise UnusableFile(f"pixel data too short: {length} bytes for {n_frames} frame(s) of {rows}x{cols}")


def _group_item(ds: Dataset, i: int | None, seq_name: str) -> Dataset | None:
    """First item of functional-group macro ``seq_name`` for frame ``i``: per-frame groups first, then shared."""
    if i is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if per_frame is not None and i < len(per_frame):
            seq = per_frame[i].get(seq_name)
            if seq:
                return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(seq_name)
        if seq:
            return seq[0]
    return None


def _from_group(ds: Dataset, i: int | None, seq_name: str, attr: str):
    item = _group_item(ds, i, seq_name)
    return item.get(attr) if item is not None else None


def frames_of(path: str | os.PathLike) -> tuple[list[FrameInfo], Dataset]:
    """All image frames of one file (header only) and its dataset (pixel data deferred, read on first access).

    Raises ``UnusableFile`` with the reason when the file holds no usable image frames."""
    path = str(path)
    try:
        ds = read_dataset(path)
    except UnusableFile:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt input; reported by caller
        raise UnusableFile(f"not readable as DICOM ({type(exc).__name__}: {exc})") from exc
    try:
        return _frames_from_dataset(ds, path), ds
    except UnusableFile:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed attribute values surface here; reported by caller
        raise UnusableFile(f"unreadable header ({type(exc).__name__}: {exc})") from exc


def _frames_from_dataset(ds: Dataset, path: str) -> list[FrameInfo]:
    ts = ensure_transfer_syntax(ds)
    n_frames = max(1, _int_or(_text(ds, "NumberOfFrames"), 1))
    _check_pixel_data(ds, path, ts, n_frames)
    rows, cols = int(us_value(ds, "Rows")), int(us_value(ds, "Columns"))
    multi = "NumberOfFrames" in ds and (n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds)
    common = dict(
        path=path,
        sop_uid=str(_text(ds, "SOPInstanceUID") or Path(path).stem),
        series_uid=str(_text(ds, "SeriesInstanceUID") or ""),
        modality=str(_text(ds, "Modality") or "").upper(),
        rows=rows,
        cols=cols,
        samples=_int_or(us_value(ds, "SamplesPerPixel", 1), 1),
        photometric=str(_text(ds, "PhotometricInterpretation") or "MONOCHROME2").upper(),
        transfer_syntax=str(ts),
        n_frames_in_file=n_frames,
    )
    top_position = _vector_or_none(_text(ds, "ImagePositionPatient"), 3)
    top_orientation = _cached_orientation(_text(ds, "ImageOrientationPatient"))
    top_spacing = _spacing_or_none(_text(ds, "PixelSpacing"))
    top_thickness = _float_or_none(_text(ds, "SliceThickness"))
    top_between = _float_or_none(_text(ds, "SpacingBetweenSlices"))
    top_slope = _float_or_none(_text(ds, "RescaleSlope"))
    top_intercept = _float_or_none(_text(ds, "RescaleIntercept"))
    instance = _int_or(_text(ds, "InstanceNumber"), 0)
    acquisition = _int_or(_text(ds, "AcquisitionNumber"), 0)
    temporal = _int_or(_text(ds, "TemporalPositionIdentifier"), 0)

    if not multi:
        return [FrameInfo(
            frame=None, position=top_position, orientation=top_orientation, pixel_spacing=top_spacing,
            slice_thickness=top_thickness, spacing_between=top_between,
            slope=top_slope if top_slope not in (None, 0.0) else 1.0,
            intercept=top_intercept if top_intercept is not None else 0.0,
            order_key=(temporal, acquisition, instance, path, 0), **common)]

    frames = []
    for i in range(n_frames):
        position = _vector_or_none(_from_group(ds, i, "PlanePositionSequence", "ImagePositionPatient"), 3)
        orientation = _orientation_or_none(_from_group(ds, i, "PlaneOrientationSequence", "ImageOrientationPatient"))
        measures = _group_item(ds, i, "PixelMeasuresSequence")
        spacing = _spacing_or_none(measures.get("PixelSpacing")) if measures is not None else None
        thickness = _float_or_none(measures.get("SliceThickness")) if measures is not None else None
        between = _float_or_none(measures.get("SpacingBetweenSlices")) if measures is not None else None
        transform = _group_item(ds, i, "PixelValueTransformationSequence")
        slope = _float_or_none(transform.get("RescaleSlope")) if transform is not None else None
        intercept = _float_or_none(transform.get("RescaleIntercept")) if transform is not None else None
        content = _group_item(ds, i, "FrameContentSequence")
        frame_temporal = _int_or(content.get("TemporalPositionIndex"), 0) if content is not None else 0
        slope = slope if slope not in (None, 0.0) else (top_slope if top_slope not in (None, 0.0) else 1.0)
        intercept = intercept if intercept is not None else (top_intercept if top_intercept is not None else 0.0)
        frames.append(FrameInfo(
            frame=i, position=position, orientation=orientation if orientation is not None else top_orientation,
            pixel_spacing=spacing or top_spacing,
            slice_thickness=thickness if thickness is not None else top_thickness,
            spacing_between=between if between is not None else top_between,
            slope=slope, intercept=intercept,
            order_key=(frame_temporal, acquisition, instance, path, i), **common))
    _fill_multiframe_positions(frames, top_position)
    return frames


def _fill_multiframe_positions(frames: list[FrameInfo], top_position: np.ndarray | None) -> None:
    """Multi-frame files without per-frame positions: stack frames along the slice normal from the top-level
    position (legacy/NM convention), spacing from SpacingBetweenSlices, else SliceThickness. Anything still missing
    is left for the loader's documented fallback."""
    if all(f.position is not None for f in frames) or top_position is None:
        return
    first = frames[0]
    step = first.spacing_between or first.slice_thickness
    if first.orientation is None or not step:
        return
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    for i, f in enumerate(frames):
        f.position = top_position + i * step * normal
        f.fallback.append("frame positions stacked from the top-level ImagePositionPatient")
