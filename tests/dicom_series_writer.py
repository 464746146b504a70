"""Test helper: write a stack of stored pixel values as a DICOM series with exactly the geometry asked for.

Classic (one file per slice) or enhanced multi-frame (one file, per-frame functional groups), any orientation,
optional compression, and the quirks the loader must survive (shuffled names and instance numbers, missing geometry,
no file meta). Not a general DICOM writer: only the attributes the competition's test files carry, plus the
functional groups of an enhanced multi-frame file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


@dataclass
class SeriesSpec:
    """Geometry and encoding of a synthetic series; ``stored`` is ``(slices, rows, cols)`` stored pixel values."""

    stored: np.ndarray
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    pixel_spacing: tuple[float, float] = (0.5, 0.5)  # (between rows, between columns)
    first_position: Sequence[float] = (0.0, 0.0, 0.0)
    step: Sequence[float] | None = None  # slice-to-slice vector; default: the normal times slice_spacing
    slice_spacing: float = 1.0
    modality: str = "CT"
    slope: float = 1.0
    intercept: float = 0.0
    photometric: str = "MONOCHROME2"
    transfer_syntax: str = ExplicitVRLittleEndian
    multiframe: bool = False
    write_geometry: bool = True  # False: no orientation, spacing or positions (multi-frame fallback case)
    file_meta: bool = True
    series_uid: str = field(default_factory=generate_uid)
    seed: int = 0  # shuffles file names and instance numbers
    instance_numbers: Sequence[int] | None = None  # per slice k; default: shuffled 1..n
    name_prefix: str = ""

    def step_vector(self) -> np.ndarray:
        if self.step is not None:
            return np.asarray(self.step, dtype=np.float64)
        o = np.asarray(self.orientation, dtype=np.float64)
        return np.cross(o[:3], o[3:]) * self.slice_spacing

    def position(self, k: int) -> np.ndarray:
        return np.asarray(self.first_position, dtype=np.float64) + k * self.step_vector()

    def affine_acq(self) -> np.ndarray:
        """Acquisition voxel ``(k, r, c, 1)`` -> LPS mm."""
        o = np.asarray(self.orientation, dtype=np.float64)
        a = np.eye(4)
        a[:3, 0] = self.step_vector()
        a[:3, 1] = o[3:] * self.pixel_spacing[0]
        a[:3, 2] = o[:3] * self.pixel_spacing[1]
        a[:3, 3] = self.first_position
        return a


def _ds(v) -> str:
    return f"{float(v):.6f}"


def _base_dataset(spec: SeriesSpec, sop_uid: str, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = spec.series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.PatientID = "synthetic"
    ds.Modality = spec.modality
    ds.Rows, ds.Columns = int(spec.stored.shape[1]), int(spec.stored.shape[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    signed = np.issubdtype(spec.stored.dtype, np.signedinteger)
    bits = spec.stored.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    return ds


def _meta(ds: Dataset, spec: SeriesSpec) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta


def _save(ds: Dataset, spec: SeriesSpec, path: Path) -> None:
    """Set pixels, compress when asked, write (without file meta when asked: implicit VR, no preamble)."""
    ts = UID(spec.transfer_syntax)
    if ts.is_compressed:
        ds.compress(ts, **({"encoding_plugin": "pylibjpeg"} if "2000" in ts.name else {}))
    if spec.file_meta:
        ds.save_as(path, enforce_file_format=True)
    else:
        del ds.file_meta
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)


def write_series(spec: SeriesSpec, out_dir: str | Path) -> list[tuple[str, int | None]]:
    """Write ``spec`` into ``out_dir``; returns ``(SOPInstanceUID, frame)`` for each acquisition slice ``k``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.multiframe:
        return _write_multiframe(spec, out_dir)
    rng = np.random.default_rng(spec.seed)
    n = spec.stored.shape[0]
    names = rng.permutation(n)
    instances = rng.permutation(n) + 1 if spec.instance_numbers is None else np.asarray(spec.instance_numbers)
    sop_class = CT_IMAGE_STORAGE if spec.modality == "CT" else MR_IMAGE_STORAGE
    out = []
    for k in range(n):
        sop = generate_uid()
        ds = _base_dataset(spec, sop, sop_class)
        ds.InstanceNumber = int(instances[k])
        if spec.write_geometry:
            ds.ImagePositionPatient = [_ds(v) for v in spec.position(k)]
            ds.ImageOrientationPatient = [_ds(v) for v in spec.orientation]
            ds.PixelSpacing = [_ds(v) for v in spec.pixel_spacing]
            ds.SliceThickness = _ds(np.linalg.norm(spec.step_vector()))
        ds.RescaleSlope, ds.RescaleIntercept = _ds(spec.slope), _ds(spec.intercept)
        _meta(ds, spec)
        ds.PixelData = np.ascontiguousarray(spec.stored[k]).tobytes()
        _save(ds, spec, out_dir / f"{spec.name_prefix}{int(names[k]):04d}.dcm")
        out.append((sop, None))
    return out


def _item(**attrs) -> DicomSequence:
    item = Dataset()
    for name, value in attrs.items():
        setattr(item, name, value)
    return DicomSequence([item])


def _write_multiframe(spec: SeriesSpec, out_dir: Path) -> list[tuple[str, int | None]]:
    n = spec.stored.shape[0]
    sop = generate_uid()
    sop_class = ENHANCED_CT_STORAGE if spec.modality == "CT" else ENHANCED_MR_STORAGE
    ds = _base_dataset(spec, sop, sop_class)
    ds.InstanceNumber = 1
    ds.NumberOfFrames = n
    shared = Dataset()
    shared.PixelValueTransformationSequence = _item(
        RescaleSlope=_ds(spec.slope), RescaleIntercept=_ds(spec.intercept), RescaleType="US")
    per_frame = []
    for k in range(n):
        frame = Dataset()
        frame.FrameContentSequence = _item(InStackPositionNumber=k + 1, TemporalPositionIndex=1)
        if spec.write_geometry:
            frame.PlanePositionSequence = _item(ImagePositionPatient=[_ds(v) for v in spec.position(k)])
        per_frame.append(frame)
    if spec.write_geometry:
        shared.PlaneOrientationSequence = _item(ImageOrientationPatient=[_ds(v) for v in spec.orientation])
        shared.PixelMeasuresSequence = _item(PixelSpacing=[_ds(v) for v in spec.pixel_spacing],
                                             SliceThickness=_ds(np.linalg.norm(spec.step_vector())))
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    _meta(ds, spec)
    ds.PixelData = np.ascontiguousarray(spec.stored).tobytes()
    _save(ds, spec, out_dir / f"{sop}.dcm")
    return [(sop, k) for k in range(n)]
