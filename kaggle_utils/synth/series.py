"""One synthetic series: a phantom subject scanned in one modality and written as DICOM, with its ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.uid import generate_uid

from kaggle_utils.io import atomic_dir, atomic_path
from kaggle_utils.schema import DICOM_MODALITY, LOCATION_COLS, MODALITIES
from kaggle_utils.synth.dicom_write import (
    MULTIFRAME_LAYOUTS,
    TRANSFER_SYNTAXES,
    PixelFormat,
    write_classic,
    write_multiframe,
)
from kaggle_utils.synth.phantom import (
    TISSUE_VALUES,
    Grid,
    Phantom,
    _waves,
    build_vessels,
    place_aneurysm,
    random_pose,
    render,
)

PLANES = ("axial", "coronal", "sagittal")
INSTANCE_ORDERS = ("sequential", "reversed", "shuffled")
# (row_dir = IOP[:3], col_dir = IOP[3:]) per acquisition plane, as scanners write them.
PLANE_IOP: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
}
# Field of view per modality: head-frame centre of the box and its extent along x, y, z (mm). CTA covers the head
# and skull base, TOF-MRA a slab around the circle, T2/T1 the whole brain.
FIELD_OF_VIEW: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # Whole-head boxes reach past the vertex (~112 mm above the head-frame origin, up to ~123 mm at head scale 1.1).
    # The centres follow the head's centre behind the CoW (generator version 2: y 15.5 mm).
    "CTA": ((0.0, 15.0, 38.0), (230.0, 230.0, 190.0)),
    "MRA": ((0.0, 4.0, 2.0), (200.0, 200.0, 90.0)),
    "MRI T2": ((0.0, 15.0, 47.0), (220.0, 220.0, 170.0)),
    "MRI T1post": ((0.0, 15.0, 47.0), (230.0, 230.0, 170.0)),
}
_GENERATOR_TAG = "kaggle_utils.synth.v1"


def derive_uid(*parts) -> str:
    """A valid DICOM UID that is a pure function of ``parts`` (so the same seed gives the same files)."""
    return str(generate_uid(entropy_srcs=[_GENERATOR_TAG, *map(str, parts)]))


def _tilt(row_dir: np.ndarray, col_dir: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the image plane about its row direction (an oblique, e.g. AC-PC aligned, acquisition); the direction
    cosines are rounded as a DICOM writer would print them."""
    if degrees == 0:
        return row_dir, col_dir
    a = np.deg2rad(degrees)
    normal = np.cross(row_dir, col_dir)
    tilted = np.cos(a) * col_dir + np.sin(a) * normal
    return row_dir, np.round(tilted, 6)


def make_grid(modality: str, plane: str, image_size: int, n_slices: int, centre_world: np.ndarray,
              descending: bool, fov_scale: float = 1.0, tilt_deg: float = 0.0) -> Grid:
    """The scanner grid: square matrix over the in-plane extent, ``n_slices`` over the extent along the normal,
    optionally tilted by ``tilt_deg`` about the row direction."""
    _, extent = FIELD_OF_VIEW[modality]
    row_dir, col_dir = (np.array(v, float) for v in PLANE_IOP[plane])
    normal = np.cross(row_dir, col_dir)
    ext = np.array(extent) * fov_scale
    fov = float(max(abs(row_dir) @ ext, abs(col_dir) @ ext))
    spacing = round(fov / image_size, 4)
    step = round(float(abs(normal) @ ext) / n_slices, 4) * (-1.0 if descending else 1.0)
    row_dir, col_dir = _tilt(row_dir, col_dir, tilt_deg)
    normal = np.cross(row_dir, col_dir)
    origin = (centre_world - (image_size - 1) / 2 * spacing * (row_dir + col_dir)
              - (n_slices - 1) / 2 * step * normal)
    return Grid(np.round(origin, 4), row_dir, col_dir, (spacing, spacing), step, (n_slices, image_size, image_size))


def _pixel_format(modality: str, rng: np.random.Generator, signed: bool | None, bits_stored: int | None,
                  monochrome1: bool) -> PixelFormat:
    """CT: HU via slope 1 and intercept 0 or -1024, signed or unsigned. MR: unsigned, rescale tags or not."""
    if modality == "CTA":
        if monochrome1:
            raise ValueError("MONOCHROME1 is only written for MR series (CT stays MONOCHROME2 with HU rescale)")
        signed = bool(rng.integers(2)) if signed is None else signed
        if signed:
            intercept = float(rng.choice([0.0, -1024.0]))
            return PixelFormat(True, bits_stored or 16, (1.0, intercept))
        return PixelFormat(False, bits_stored or int(rng.choice([12, 16])), (1.0, -1024.0))
    if signed:
        raise ValueError("MR series are written with unsigned pixels")
    rescale = (1.0, 0.0) if rng.integers(2) else None
    return PixelFormat(False, bits_stored or int(rng.choice([12, 16])), rescale, monochrome1)


def _contrast(modality: str, rng: np.random.Generator) -> dict[str, float]:
    """Per-series contrast: CTA bolus strength and noise; MR receiver gain (all MR values scale together)."""
    values = dict(TISSUE_VALUES[modality])
    if modality == "CTA":
        values["vessel"] = float(rng.uniform(300, 480))
        values["noise"] = float(rng.uniform(6, 13))
        return values
    gain = float(rng.uniform(0.6, 1.6))
    scaled = {k: v * gain for k, v in values.items() if k != "texture"}
    scaled["texture"] = values["texture"] * gain
    scaled["vessel"] *= float(rng.uniform(0.9, 1.1))
    return scaled


def _inside(grid: Grid, world: np.ndarray, margin_mm: float) -> bool:
    """Is ``world`` inside the grid with a margin (so the whole sac and its localizer slice are in the image)?"""
    k, r, c = grid.world_to_voxel(world)[0]
    mk = 1 + margin_mm / abs(grid.slice_step)
    mp = margin_mm / grid.pixel_spacing[0]
    nk, nr, nc = grid.shape
    return bool(mk <= k <= nk - 1 - mk and mp <= r <= nr - 1 - mp and mp <= c <= nc - 1 - mp)


def _instance_numbers(n: int, order: str, rng: np.random.Generator) -> list[int]:
    if order == "sequential":
        return list(range(1, n + 1))
    if order == "reversed":
        return list(range(n, 0, -1))
    return [int(i) + 1 for i in rng.permutation(n)]


def _scout_grid(grid: Grid, plane: str, size: int) -> Grid:
    """A single orthogonal localizer image through the volume centre, of another matrix size."""
    scout_plane = "sagittal" if plane != "sagittal" else "coronal"
    row_dir, col_dir = (np.array(v, float) for v in PLANE_IOP[scout_plane])
    centre = grid.voxel_to_world() @ np.array([(s - 1) / 2 for s in grid.shape] + [1.0])
    spacing = round(grid.pixel_spacing[0] * grid.shape[1] * 1.2 / size, 4)
    origin = centre[:3] - (size - 1) / 2 * spacing * (row_dir + col_dir)
    return Grid(np.round(origin, 4), row_dir, col_dir, (spacing, spacing), 1.0, (1, size, size))


def nifti_affine(grid: Grid) -> np.ndarray:
    """RAS+ affine of a NIfTI array indexed (column, row, slice) = the DICOM grid's (c, r, k)."""
    v2w = grid.voxel_to_world()  # (k, r, c) -> LPS
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = v2w[:3, 2], v2w[:3, 1], v2w[:3, 0], v2w[:3, 3]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def write_segmentation(seg_dir: Path, uid: str, real: np.ndarray, labels: np.ndarray, grid: Grid) -> list[Path]:
    """``<uid>.nii`` (real-world intensities, int16) and ``<uid>_cowseg.nii`` (uint8 vessel labels)."""
    affine = nifti_affine(grid)
    paths = []
    for name, data in ((f"{uid}.nii", np.rint(real).astype(np.int16)), (f"{uid}_cowseg.nii", labels)):
        img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
        img.header.set_xyzt_units("mm")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        with atomic_path(seg_dir / name) as tmp:
            nib.save(img, tmp)
        paths.append(seg_dir / name)
    return paths


def make_series(out_dir: str | Path, *, modality: str = "CTA", image_size: int = 128, n_slices: int = 64,
                transfer_syntax: str = "explicit", plane: str = "axial", multiframe: str | bool | None = None,
                seed: int | Sequence[int] = 0, aneurysms: Sequence[str] = (), diameters: Sequence[float] | None = None,
                pixel_signed: bool | None = None, bits_stored: int | None = None, monochrome1: bool = False,
                scout: bool = False, duplicate_slice: bool = False, instance_order: str = "shuffled",
                descending: bool = False, tilt_deg: float = 0.0,
                spacing_between_slices: bool = True, segmentation_dir: str | Path | None = None,
                series_uid: str | None = None, patient_id: str | None = None) -> dict:
    """Write one series folder ``out_dir/<SeriesInstanceUID>/`` and return its ground truth.

    ``aneurysms`` lists the location column of each aneurysm to place (sizes drawn, or ``diameters``);
    ``multiframe`` is None (one file per slice) or a layout of ``dicom_write.MULTIFRAME_LAYOUTS`` (MR only;
    "bare" has no spacing/orientation/position and is written axial with frame 0 the most inferior slice);
    ``transfer_syntax`` is a key of ``dicom_write.TRANSFER_SYNTAXES`` ("explicit", "implicit", "rle", "jpegls",
    "jpeg2000") or its UID. ``seed`` (an int or a sequence of ints) fixes every byte, UIDs included.
    """
    out_dir = Path(out_dir)
    if isinstance(multiframe, bool):  # multiframe=True means the common layout
        multiframe = "shared" if multiframe else None
    by_uid = {str(uid): name for name, uid in TRANSFER_SYNTAXES.items()}
    transfer_syntax = by_uid.get(str(transfer_syntax), transfer_syntax)  # a UID works as well as a short name
    _check_series_args(modality, plane, multiframe, transfer_syntax, instance_order, aneurysms, image_size, n_slices)
    key = tuple(np.atleast_1d(np.asarray(seed, dtype=np.int64)).tolist())
    rng = np.random.default_rng(np.random.SeedSequence(list(key)))
    series_uid = series_uid or derive_uid("series", *key)
    ids = {"study": derive_uid("study", *key), "series": series_uid, "frame_of_reference": derive_uid("for", *key),
           "patient": patient_id or f"ID_{derive_uid('patient', *key).split('.')[-1][:12]}"}
    if multiframe == "bare":
        plane, descending, tilt_deg = "axial", False, 0.0  # the only geometry a loader can assume without tags

    table = np.array([rng.uniform(-5, 5), rng.uniform(-15, 25), rng.uniform(-200, 50)])
    pose = random_pose(rng, table)
    warp = _waves(rng, 6, (60.0, 160.0), 1.5)
    phantom = Phantom(build_vessels(rng, warp), [], pose, warp, _waves(rng, 5, (15.0, 50.0), 1.0))
    fov_centre_head, _ = FIELD_OF_VIEW[modality]
    centre_world = pose.to_world(np.array(fov_centre_head)) + rng.uniform(-5, 5, size=3)
    grid = make_grid(modality, plane, image_size, n_slices, centre_world, descending,
                     fov_scale=float(rng.uniform(0.95, 1.08)), tilt_deg=tilt_deg)
    for i, location in enumerate(aneurysms):
        for _attempt in range(200):
            diameter = None if diameters is None else diameters[i]
            an = place_aneurysm(rng, phantom.vessels, location, diameter)
            if _inside(grid, pose.to_world(an.centre[None])[0], an.diameter_mm * pose.scale / 2 + 2.0):
                break
        else:
            raise RuntimeError(f"could not place a {location} aneurysm inside the {modality} field of view")
        phantom.aneurysms.append(an)

    values, labels = render(grid, phantom, modality, rng, _contrast(modality, rng))
    fmt = _pixel_format(modality, rng, pixel_signed, bits_stored, monochrome1)
    stored = fmt.to_stored(values)
    dicom_modality = DICOM_MODALITY[modality]
    thickness = round(abs(grid.slice_step) * float(rng.choice([1.0, 1.0, 1.25])), 4)
    sop_uids = [derive_uid("sop", *key, k) for k in range(grid.shape[0])]

    with atomic_dir(out_dir / series_uid) as tmp:
        if multiframe:
            sop_uids = [derive_uid("sop", *key, "multiframe")] * grid.shape[0]
            write_multiframe(tmp / f"{sop_uids[0]}.dcm", stored, grid, fmt, ids, sop_uids[0], multiframe,
                             transfer_syntax, thickness)
            numbers = [1]
        else:
            numbers = _instance_numbers(grid.shape[0], instance_order, rng)
            write_classic(tmp, stored, grid, fmt, ids, sop_uids, numbers, dicom_modality, transfer_syntax, thickness,
                          spacing_between_slices)
        duplicate_uid = None
        if duplicate_slice and not multiframe:  # a second file at an existing position (same pixels)
            kd = int(rng.integers(grid.shape[0]))
            duplicate_uid = derive_uid("sop", *key, "duplicate")
            dgrid = Grid(grid.slice_origin(kd), grid.row_dir, grid.col_dir, grid.pixel_spacing, grid.slice_step,
                         (1, *grid.shape[1:]))
            write_classic(tmp, stored[kd: kd + 1], dgrid, fmt, ids, [duplicate_uid], [len(numbers) + 2],
                          dicom_modality, transfer_syntax, thickness, spacing_between_slices)
        scout_uid = None
        if scout:
            sgrid = _scout_grid(grid, plane, max(32, image_size // 2 + 16))
            svalues, _ = render(sgrid, phantom, modality, rng, _contrast(modality, rng))
            scout_uid = derive_uid("sop", *key, "scout")
            write_classic(tmp, fmt.to_stored(svalues), sgrid, fmt, ids, [scout_uid], [len(numbers) + 1],
                          dicom_modality, transfer_syntax, 1.0, False)

    if segmentation_dir is not None:
        write_segmentation(Path(segmentation_dir), series_uid, fmt.to_real(stored), labels, grid)

    truth_aneurysms = []
    for an in phantom.aneurysms:
        centre = pose.to_world(an.centre[None])[0]
        k, r, c = grid.world_to_voxel(centre)[0]
        kk = int(np.clip(np.rint(k), 0, grid.shape[0] - 1))
        truth_aneurysms.append({
            "location": an.location, "centre_lps": np.round(centre, 3).tolist(),
            "diameter_mm": round(an.diameter_mm * pose.scale, 3), "sop_uid": sop_uids[kk],
            "x": round(float(c), 2), "y": round(float(r), 2), "frame": kk if multiframe else None,
        })
    quirks = _quirk_names(plane, multiframe, fmt, scout, duplicate_uid is not None, instance_order, transfer_syntax,
                          descending, spacing_between_slices, dicom_modality)
    if tilt_deg:
        quirks.insert(0, "oblique")
    return {
        "series_uid": series_uid, "path": str(out_dir / series_uid), "modality": modality,
        "dicom_modality": dicom_modality, "plane": plane, "multiframe": bool(multiframe),
        "multiframe_layout": multiframe, "transfer_syntax": str(TRANSFER_SYNTAXES[transfer_syntax]),
        "transfer_syntax_name": transfer_syntax, "quirks": quirks, "pixel_format": fmt.as_dict(),
        "instance_order": instance_order if not multiframe else None, "scout_sop_uid": scout_uid,
        "duplicate_sop_uid": duplicate_uid,
        "n_files": (1 if multiframe else grid.shape[0]) + int(scout) + int(duplicate_uid is not None),
        "shape": list(grid.shape),
        "geometry": {"origin_lps": grid.origin.tolist(), "row_dir": grid.row_dir.tolist(),
                     "col_dir": grid.col_dir.tolist(), "pixel_spacing": list(grid.pixel_spacing),
                     "slice_step": grid.slice_step, "slice_thickness": thickness, "tilt_deg": tilt_deg},
        "pose": pose.as_dict(), "aneurysms": truth_aneurysms, "segmentation": segmentation_dir is not None,
    }


def _quirk_names(plane, multiframe, fmt: PixelFormat, scout, duplicate, instance_order, syntax, descending,  # noqa: C901 - one flat check per quirk
                 spacing_between, dicom_modality) -> list[str]:
    """The DICOM realities this series exercises, as short names (counted in the CLI summary)."""
    q = []
    if plane != "axial":
        q.append(plane)
    if multiframe:
        q.append(f"multiframe_{multiframe}")
    elif instance_order != "sequential":
        q.append(f"instance_{instance_order}")
    if descending:
        q.append("descending_positions")
    if not spacing_between and not multiframe:
        q.append("no_spacing_between_slices")
    if fmt.monochrome1:
        q.append("monochrome1")
    if dicom_modality == "CT":
        q.append("ct_signed" if fmt.signed else "ct_unsigned")
    elif fmt.rescale is None:
        q.append("mr_no_rescale")
    if fmt.bits_stored == 12:
        q.append("bits_stored_12")
    if scout:
        q.append("scout")
    if duplicate:
        q.append("duplicate_slice")
    if syntax != "explicit":
        q.append(f"syntax_{syntax}")
    return q


def _check_series_args(modality, plane, multiframe, syntax, instance_order, aneurysms, image_size, n_slices) -> None:
    """Programming errors in make_series arguments fail loudly with the valid choices."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; valid: {MODALITIES}")
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; valid: {PLANES}")
    if multiframe is not None and multiframe not in MULTIFRAME_LAYOUTS:
        raise ValueError(f"unknown multi-frame layout {multiframe!r}; valid: {MULTIFRAME_LAYOUTS} or None")
    if multiframe and DICOM_MODALITY[modality] != "MR":
        raise ValueError("multi-frame files are written for MR series only")
    if syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {syntax!r}; valid: {list(TRANSFER_SYNTAXES)}")
    if instance_order not in INSTANCE_ORDERS:
        raise ValueError(f"unknown instance order {instance_order!r}; valid: {INSTANCE_ORDERS}")
    for loc in aneurysms:
        if loc not in LOCATION_COLS:
            raise ValueError(f"unknown aneurysm location {loc!r}; valid: {LOCATION_COLS}")
    if image_size < 32 or n_slices < 8:
        raise ValueError(f"image_size must be >= 32 and n_slices >= 8 (got {image_size}, {n_slices})")
