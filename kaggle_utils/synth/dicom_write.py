"""Writing synthetic series as DICOM files that look like the competition's test set: only the test-set tag
allowlist, classic one-file-per-slice or enhanced multi-frame, uncompressed or lossless-compressed pixel data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from kaggle_utils.synth.phantom import Grid

# Tags the competition's test files carry besides PixelData and SeriesInstanceUID (COMPETITION.md).
ALLOWED_TAGS: frozenset[str] = frozenset({
    "BitsAllocated", "BitsStored", "Columns", "FrameOfReferenceUID", "HighBit", "ImageOrientationPatient",
    "ImagePositionPatient", "InstanceNumber", "Modality", "PatientID", "PhotometricInterpretation",
    "PixelRepresentation", "PixelSpacing", "PlanarConfiguration", "RescaleIntercept", "RescaleSlope", "RescaleType",
    "Rows", "SOPClassUID", "SOPInstanceUID", "SamplesPerPixel", "SliceThickness", "SpacingBetweenSlices",
    "StudyInstanceUID", "TransferSyntaxUID", "PixelData", "SeriesInstanceUID",
})
# An enhanced multi-frame file cannot be read without its frame count; its geometry (when present) lives in the
# functional group sequences.
MULTIFRAME_TAGS: frozenset[str] = frozenset({
    "NumberOfFrames", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    "PixelMeasuresSequence", "PlaneOrientationSequence", "PlanePositionSequence",
})

TRANSFER_SYNTAXES: dict[str, str] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}
# Encoder plugin per compressed syntax ("" = pydicom's choice); pylibjpeg-rle is far faster than pydicom's own RLE.
_ENCODER_PLUGIN = {"rle": "pylibjpeg", "jpegls": "", "jpeg2000": ""}

SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "MR_ENHANCED": "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
}
MULTIFRAME_LAYOUTS = ("shared", "perframe", "bare")


@dataclass(frozen=True)
class PixelFormat:
    """How real-world values become stored pixels: sign, bit depth, rescale, photometric interpretation."""

    signed: bool
    bits_stored: int
    rescale: tuple[float, float] | None  # (slope, intercept), None = no rescale tags
    monochrome1: bool = False

    def to_stored(self, values: np.ndarray) -> np.ndarray:
        """Real-world float values -> stored integers (clipped to the bit depth; inverted for MONOCHROME1)."""
        slope, intercept = self.rescale or (1.0, 0.0)
        stored = np.rint((values - np.float32(intercept)) / np.float32(slope))
        if self.signed:
            lo, hi = -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        else:
            lo, hi = 0, 2**self.bits_stored - 1
        stored = np.clip(stored, lo, hi)
        if self.monochrome1:  # displayed inverted: the stored value of a bright voxel is low
            stored = hi + lo - stored
        return stored.astype(np.int16 if self.signed else np.uint16)

    def to_real(self, stored: np.ndarray) -> np.ndarray:
        """Inverse of ``to_stored`` (up to clipping/rounding): what a correct loader must recover."""
        s = stored.astype(np.float64)
        if self.monochrome1:
            lo, hi = (-(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1) if self.signed \
                else (0, 2**self.bits_stored - 1)
            s = hi + lo - s
        slope, intercept = self.rescale or (1.0, 0.0)
        return s * slope + intercept

    def as_dict(self) -> dict:
        return {"signed": self.signed, "bits_stored": self.bits_stored,
                "rescale": list(self.rescale) if self.rescale else None, "monochrome1": self.monochrome1}


def _ds_str(value: float) -> str:
    """A DS value string within 16 characters that round-trips the (already rounded) float."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text[:16]


def _ds_list(values) -> list[str]:
    return [_ds_str(float(v)) for v in values]


def _pixel_tags(ds: Dataset, rows: int, cols: int, fmt: PixelFormat) -> None:
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if fmt.monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = fmt.bits_stored
    ds.HighBit = fmt.bits_stored - 1
    ds.PixelRepresentation = int(fmt.signed)


def _series_tags(ds: Dataset, ids: dict[str, str], dicom_modality: str, fmt: PixelFormat) -> None:
    ds.StudyInstanceUID = ids["study"]
    ds.SeriesInstanceUID = ids["series"]
    ds.FrameOfReferenceUID = ids["frame_of_reference"]
    ds.PatientID = ids["patient"]
    ds.Modality = dicom_modality
    if fmt.rescale is not None:
        ds.RescaleSlope = _ds_str(fmt.rescale[0])
        ds.RescaleIntercept = _ds_str(fmt.rescale[1])
        if dicom_modality == "CT":
            ds.RescaleType = "HU"


def _finish_and_write(ds: Dataset, path: Path, pixels: np.ndarray, syntax: str) -> None:
    """Attach file meta and pixel data (compressing if asked) and write atomically."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = TRANSFER_SYNTAXES[syntax]
    ds.file_meta = meta
    pixels = np.ascontiguousarray(pixels)
    if syntax in _ENCODER_PLUGIN:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(TRANSFER_SYNTAXES[syntax], pixels, encoding_plugin=_ENCODER_PLUGIN[syntax],
                    generate_instance_uid=False)
    else:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
    # Callers write into a temporary series folder that is renamed into place whole (io.atomic_dir).
    ds.save_as(path, enforce_file_format=True)


def write_classic(out_dir: Path, stored: np.ndarray, grid: Grid, fmt: PixelFormat, ids: dict[str, str],
                  sop_uids: list[str], instance_numbers: list[int], dicom_modality: str, syntax: str,
                  slice_thickness: float, write_spacing_between: bool = True) -> list[Path]:
    """One file per slice, named ``<SOPInstanceUID>.dcm``; slice k of ``stored`` sits at ``grid.slice_origin(k)``."""
    paths = []
    # One dataset reused for every slice: only the per-slice tags and the pixels change (pydicom's per-element
    # overhead dominates writing small slices).
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASS[dicom_modality]
    ds.SOPInstanceUID = sop_uids[0]
    _series_tags(ds, ids, dicom_modality, fmt)
    ds.InstanceNumber = instance_numbers[0]
    ds.ImagePositionPatient = _ds_list(grid.slice_origin(0))
    ds.ImageOrientationPatient = _ds_list(np.concatenate([grid.row_dir, grid.col_dir]))
    ds.PixelSpacing = _ds_list(grid.pixel_spacing)
    ds.SliceThickness = _ds_str(slice_thickness)
    if write_spacing_between:
        ds.SpacingBetweenSlices = _ds_str(abs(grid.slice_step))
    _pixel_tags(ds, stored.shape[1], stored.shape[2], fmt)
    for k in range(stored.shape[0]):
        ds.SOPInstanceUID = sop_uids[k]
        ds.InstanceNumber = instance_numbers[k]
        ds.ImagePositionPatient = _ds_list(grid.slice_origin(k))
        path = out_dir / f"{sop_uids[k]}.dcm"
        _finish_and_write(ds, path, stored[k], syntax)
        paths.append(path)
    return paths


def write_multiframe(path: Path, stored: np.ndarray, grid: Grid, fmt: PixelFormat, ids: dict[str, str],
                     sop_uid: str, layout: str, syntax: str, slice_thickness: float) -> Path:
    """One enhanced MR file; frame f is slice k = f of ``grid``.

    layout "shared": PixelMeasures + PlaneOrientation in the shared group, PlanePosition per frame;
    "perframe": all three per frame; "bare": no functional groups at all (no spacing, orientation or position).
    """
    if layout not in MULTIFRAME_LAYOUTS:
        raise ValueError(f"unknown multi-frame layout {layout!r}; valid: {MULTIFRAME_LAYOUTS}")
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASS["MR_ENHANCED"]
    ds.SOPInstanceUID = sop_uid
    _series_tags(ds, ids, "MR", fmt)
    ds.InstanceNumber = 1
    ds.NumberOfFrames = stored.shape[0]
    _pixel_tags(ds, stored.shape[1], stored.shape[2], fmt)
    if layout != "bare":
        measures = Dataset()
        measures.PixelSpacing = _ds_list(grid.pixel_spacing)
        measures.SliceThickness = _ds_str(slice_thickness)
        measures.SpacingBetweenSlices = _ds_str(abs(grid.slice_step))
        orientation = Dataset()
        orientation.ImageOrientationPatient = _ds_list(np.concatenate([grid.row_dir, grid.col_dir]))
        frames = []
        for k in range(stored.shape[0]):
            position = Dataset()
            position.ImagePositionPatient = _ds_list(grid.slice_origin(k))
            frame = Dataset()
            frame.PlanePositionSequence = Sequence([position])
            if layout == "perframe":
                frame.PixelMeasuresSequence = Sequence([measures])
                frame.PlaneOrientationSequence = Sequence([orientation])
            frames.append(frame)
        shared = Dataset()
        if layout == "shared":
            shared.PixelMeasuresSequence = Sequence([measures])
            shared.PlaneOrientationSequence = Sequence([orientation])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    _finish_and_write(ds, path, stored, syntax)
    return path


def disallowed_tags(ds: Dataset) -> list[str]:
    """Keywords (or tag numbers) in ``ds`` (nested sequences included) outside the test-set allowlist."""
    allowed = ALLOWED_TAGS | MULTIFRAME_TAGS
    bad = []
    for elem in ds.iterall():
        name = elem.keyword or str(elem.tag)
        if name not in allowed:
            bad.append(name)
    return bad


def series_disallowed_tags(series_dir: str | Path) -> dict[str, list[str]]:
    """File name -> tags outside the test-set allowlist, for every file of a written series folder (empty: clean).

    Reads the files back from disk, so it sees what a loader sees, whatever the writer did on the way."""
    bad = {}
    for path in sorted(Path(series_dir).iterdir()):
        tags = disallowed_tags(pydicom.dcmread(path, stop_before_pixels=True))
        if tags:
            bad[path.name] = sorted(set(tags))
    return bad
