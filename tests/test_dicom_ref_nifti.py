"""The loader against every dcm2niix conversion that ships in ``../shared/dicom_real/*/Ref``: shape, the LPS position
of the 8 corner voxels, and the voxel values (correlation, and equality up to the linear scaling that dcm2niix and
the loader may choose differently).

Every Ref NIfTI and every Ref JSON sidecar of the corpus is listed below with what is compared, and a test fails when
one is added without being listed, so nothing is left out silently:

- ``FULL``: the loader's volume is the image in the Ref (for a 4D Ref, its first volume: the loader keeps the first
  frame at each position);
- ``GEOMETRY``: the Ref is another image at the same slice positions of a file whose first image the loader keeps
  (a second echo, a phase or field map image); shape and corners are compared, and the test checks that the file
  does hold several images per position and that the Ref's sidecar names another echo or image type than the
  ``FULL`` sibling it points to;
- JSON-only sidecars (no NIfTI beside them): the volume's axes against the sidecar's
  ``ImageOrientationPatientDICOM``.

Vendors covered by the shipped Refs: Canon (2 series, one 20 degrees oblique sagittal), Siemens (XA10 enhanced),
Philips (enhanced and classic). The corpus ships no Ref for any GE series; three GE series are compared with a
dcm2niix conversion pinned below (shape, affine, sampled voxel values). No file in the corpus is a Siemens mosaic
(``test_dicom_mosaic`` compares mosaics with dcm2niix).
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from kaggle_utils.dicom import Volume, load_series
from kaggle_utils.paths import dicom_real_dir

REAL = dicom_real_dir()
pytestmark = [
    pytest.mark.skipif(
        REAL is None,
        reason="real DICOM corpus ../shared/dicom_real not found (set KAGGLE_UTILS_DICOM_REAL to its folder)",
    ),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

CORNER_TOL_MM = 1e-3  # NIfTI stores its affine as float32: about 1e-5 mm at 200 mm
MIN_CORRELATION = 0.999
# After the best linear map (dcm2niix may scale Philips values differently), no voxel may be further off than this
# fraction of the value range.
MAX_LINEAR_RESIDUAL = 1e-4
FULL, GEOMETRY = "full", "geometry"

FMAP_801 = "dcm_qa_enh/In/Philips/IM_0027_fMAP.dcm"
FIELD_MAPPING_2001 = "dcm_qa_philips_enh/In/enh/2001_WIP_fcMRI_Field_Mapping_e2_phMag.dcm"
E1_2001 = "dcm_qa_philips_enh/Ref/2001_WIP_fcMRI_Field_Mapping_enh_e1.nii.gz"
E1_801 = "dcm_qa_enh/Ref/Philips_WIP_B0_NS_801_e1.nii"
# Ref NIfTI -> (DICOM file or folder; "*" picks files out of a folder that holds two series, how it is compared,
# for GEOMETRY the FULL Ref of the image the loader keeps instead)
REFERENCES = {
    "dcm_qa_canon_61/Ref/3000_DTI_PA-ortho_enh.nii.gz": ("dcm_qa_canon_61/In/enh/3000.dcm", FULL, None),
    "dcm_qa_canon_61/Ref/10000_SAG_DTI_PA-COR_20d_enh.nii.gz": ("dcm_qa_canon_61/In/enh/10000.dcm", FULL, None),
    "dcm_qa_enh/Ref/Siemens_REST1_w_SMS_PF7-8_6.nii": ("dcm_qa_enh/In/Siemens/XA10", FULL, None),
    E1_801: (FMAP_801, FULL, None),
    "dcm_qa_enh/Ref/Philips_WIP_B0_NS_801_e2_fieldmaphz.nii": (FMAP_801, GEOMETRY, E1_801),
    "dcm_qa_philips_enh/Ref/1901_WIP_3DpCASL_cl.nii.gz": ("dcm_qa_philips_enh/In/cl/1901_*", FULL, None),
    "dcm_qa_philips_enh/Ref/1901_WIP_3DpCASL_enh_real.nii.gz": (
        "dcm_qa_philips_enh/In/enh/1901_WIP_3DpCASL_real.dcm",
        FULL,
        None,
    ),
    "dcm_qa_philips_enh/Ref/1903_WIP_SOURCE_-_3DpCASL_enh.nii.gz": (
        "dcm_qa_philips_enh/In/enh/1903_WIP_SOURCE_-_3DpCASL.dcm",
        FULL,
        None,
    ),
    E1_2001: (FIELD_MAPPING_2001, FULL, None),  # the file holds echo 1 and 2, magnitude and phase, at 53 positions
    "dcm_qa_philips_enh/Ref/2001_WIP_fcMRI_Field_Mapping_enh_e1_ph.nii.gz": (FIELD_MAPPING_2001, GEOMETRY, E1_2001),
    "dcm_qa_philips_enh/Ref/2001_WIP_fcMRI_Field_Mapping_enh_e2.nii.gz": (FIELD_MAPPING_2001, GEOMETRY, E1_2001),
    "dcm_qa_philips_enh/Ref/2001_WIP_fcMRI_Field_Mapping_enh_e2_ph.nii.gz": (FIELD_MAPPING_2001, GEOMETRY, E1_2001),
}
# Ref JSON sidecars without a NIfTI -> their DICOM in the corpus. The enhanced MPRAGE file is not in the corpus; its
# classic files are the same acquisition (series 1301, the same ImageOrientationPatientDICOM in both sidecars).
JSON_ONLY = {
    "dcm_qa_philips_enh/Ref/1301_WIP_ADNI_Sag3D_MPRAGE_cl.json": "dcm_qa_philips_enh/In/cl/1301_*",
    "dcm_qa_philips_enh/Ref/1301_WIP_ADNI_Sag3D_MPRAGE_enh.json": "dcm_qa_philips_enh/In/cl/1301_*",
}


def _nifti_path(json_path: Path) -> Path | None:
    stem = json_path.name[: -len(".json")]
    found = [p for p in json_path.parent.iterdir() if p.name in (stem + ".nii", stem + ".nii.gz")]
    return found[0] if found else None


def test_every_reference_in_the_corpus_is_listed():
    niftis = {p.relative_to(REAL).as_posix() for p in REAL.glob("*/Ref/*.nii*")}
    json_only = {p.relative_to(REAL).as_posix() for p in REAL.glob("*/Ref/*.json") if _nifti_path(p) is None}
    assert niftis == set(REFERENCES)
    assert json_only == set(JSON_ONLY)


def _files(dicom_rel: str) -> list[Path]:
    source = REAL / dicom_rel
    return sorted(source.parent.glob(source.name)) if "*" in dicom_rel else [source]


@functools.lru_cache(maxsize=None)
def _load(dicom_rel: str, link_dir: Path) -> Volume:
    """One load per source for the whole module; a pattern's files are linked into a folder of their own."""
    if "*" not in dicom_rel:
        return load_series(REAL / dicom_rel)
    folder = link_dir / Path(dicom_rel).parent.name
    folder.mkdir(parents=True, exist_ok=True)
    for path in _files(dicom_rel):
        (folder / path.name).symlink_to(path)
    return load_series(folder)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    link_dir = tmp_path_factory.mktemp("ref_series")
    yield lambda dicom_rel: _load(dicom_rel, link_dir)
    _load.cache_clear()


def canonical_axes(affine_lps: np.ndarray) -> tuple[list[int], list[bool]]:
    """For an array with this voxel -> LPS affine: which of its axes is canonical z, y, x, and which run backwards."""
    directions = affine_lps[:3, :3] / np.linalg.norm(affine_lps[:3, :3], axis=0)
    perm = [int(np.argmax(np.abs(directions[lps_axis]))) for lps_axis in (2, 1, 0)]  # canonical z, y, x
    assert sorted(perm) == [0, 1, 2], "reference axes are not distinct"
    flips = [bool(directions[lps_axis, perm[j]] < 0) for j, lps_axis in enumerate((2, 1, 0))]
    return perm, flips


def corners_lps(shape, affine_lps: np.ndarray) -> np.ndarray:
    """LPS mm of the 8 corner voxels of an array with ``affine_lps``, in the order of ``volume_corners``."""
    perm, flips = canonical_axes(affine_lps)
    corners = []
    for corner in itertools.product((0, 1), repeat=3):
        index = [0, 0, 0]
        for j in range(3):
            n = shape[perm[j]]
            index[perm[j]] = (n - 1) * (1 - corner[j]) if flips[j] else (n - 1) * corner[j]
        corners.append((affine_lps @ np.array([*index, 1.0]))[:3])
    return np.array(corners)


def ras_to_lps(affine_ras) -> np.ndarray:
    """NIfTI affines map to RAS+; LPS is RAS with x and y negated."""
    affine = np.vstack([np.asarray(affine_ras, dtype=np.float64)[:3], [0.0, 0.0, 0.0, 1.0]])
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def reference_in_canonical_frame(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The NIfTI's first volume permuted/flipped to (S, P, L)-ascending, and the LPS mm of its 8 corner voxels."""
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float64)
    data = data[..., 0] if data.ndim > 3 else data
    affine_lps = ras_to_lps(img.affine)
    perm, flips = canonical_axes(affine_lps)
    canonical = data.transpose(perm)
    canonical = canonical[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    return canonical, corners_lps(data.shape, affine_lps)


def volume_corners(volume: Volume) -> np.ndarray:
    z, y, x = (s - 1 for s in volume.shape)
    return volume.voxel_to_lps([[cz * z, cy * y, cx * x] for cz, cy, cx in itertools.product((0, 1), repeat=3)])


def _check_geometry(volume: Volume, reference: np.ndarray, corners: np.ndarray) -> float:
    assert volume.shape == reference.shape
    error = float(np.max(np.abs(volume_corners(volume) - corners)))
    assert error < CORNER_TOL_MM, f"corner {error:.3g} mm from the reference"
    return error


FULL_REFS = [n for n, (_, how, _) in REFERENCES.items() if how == FULL]
GEOMETRY_REFS = [n for n, (_, how, _) in REFERENCES.items() if how == GEOMETRY]


def _id(nifti_rel: str) -> str:
    return Path(nifti_rel).name.split(".")[0]


@pytest.mark.parametrize("nifti_rel", FULL_REFS, ids=[_id(n) for n in FULL_REFS])
def test_volume_matches_reference(loaded, nifti_rel):
    dicom_rel, _, _ = REFERENCES[nifti_rel]
    volume = loaded(dicom_rel)
    reference, corners = reference_in_canonical_frame(REAL / nifti_rel)
    _check_geometry(volume, reference, corners)
    ours = volume.array.astype(np.float64).ravel()
    theirs = reference.ravel()
    assert np.corrcoef(ours, theirs)[0, 1] > MIN_CORRELATION
    # Same values up to one linear map: catches a swapped or shifted slice that correlation alone could let pass.
    design = np.stack([ours, np.ones_like(ours)], axis=1)
    coef, *_ = np.linalg.lstsq(design, theirs, rcond=None)
    residual = np.max(np.abs(design @ coef - theirs)) / np.ptp(theirs)
    assert residual < MAX_LINEAR_RESIDUAL, f"largest voxel off by {residual:.3g} of the range after a linear map"


def _sidecar(nifti_rel: str) -> dict:
    name = Path(nifti_rel).name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]
    return json.loads((REAL / nifti_rel).with_name(stem + ".json").read_text())


@pytest.mark.parametrize("nifti_rel", GEOMETRY_REFS, ids=[_id(n) for n in GEOMETRY_REFS])
def test_geometry_matches_reference_of_another_image_at_the_same_positions(loaded, nifti_rel):
    dicom_rel, _, kept_rel = REFERENCES[nifti_rel]
    volume = loaded(dicom_rel)
    reference, corners = reference_in_canonical_frame(REAL / nifti_rel)
    _check_geometry(volume, reference, corners)
    # The stated reason for not comparing voxels, checked: the file holds several images at each position, the
    # loader keeps the first, and this Ref is another echo or image type than the Ref of the kept image.
    assert any(note.startswith("4D: ") and "frames per position" in note for note in volume.notes), volume.notes
    assert REFERENCES[kept_rel][:2] == (dicom_rel, FULL)
    ours, kept = _sidecar(nifti_rel), _sidecar(kept_rel)
    assert (ours.get("EchoNumber"), ours["ImageType"]) != (kept.get("EchoNumber"), kept["ImageType"])


@pytest.mark.parametrize("json_rel", list(JSON_ONLY), ids=[Path(j).stem for j in JSON_ONLY])
def test_json_only_reference_orientation(loaded, json_rel):
    sidecar = json.loads((REAL / json_rel).read_text())
    dicom_rel = JSON_ONLY[json_rel]
    assert str(sidecar["SeriesNumber"]) == str(
        pydicom.dcmread(_files(dicom_rel)[0], stop_before_pixels=True).SeriesNumber
    )
    volume = loaded(dicom_rel)
    row_col = np.asarray(sidecar["ImageOrientationPatientDICOM"], dtype=np.float64).reshape(2, 3)
    directions = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    for vector in row_col:
        vector = vector / np.linalg.norm(vector)
        assert np.max(np.abs(directions.T @ vector)) > 1 - 1e-4, f"{vector} is not an axis of the volume"


# GE series have no Ref in the corpus. These were converted once with dcm2niix v1.0.20260724 (not a dependency):
# the NIfTI shape and affine (RAS+, 3x4), and stored values at 10 voxels (i, j, k) drawn at random from the
# non-background ones. Its voxels equalled the loader's exactly when these were taken.
DCM2NIIX_PINNED = {
    "dcmqi_samples/data/dcmqi/paramaps/701-ADCb500": dict(  # oblique MR, 20 slices
        shape=(256, 256, 20),
        affine=[
            [-0.703086674, -0.00379790156, 0.00895101298, 90.9909668],
            [-0.00336886151, 0.692381501, 0.521619022, -68.0952835],
            [0.00272514555, -0.122241713, 2.95419097, -12.8031635],
        ],
        # Its positions are written to 0.001 mm: the loader's median step and dcm2niix's differ by 0.0004 mm, which
        # adds up to 0.007 mm over 19 steps.
        corner_tol_mm=0.01,
        samples=[
            (7, 177, 8, 290),
            (15, 127, 4, 329),
            (25, 92, 2, 544),
            (51, 114, 12, 129),
            (72, 169, 7, 1078),
            (81, 83, 2, 1265),
            (127, 182, 14, 2599),
            (156, 110, 2, 1633),
            (196, 96, 5, 1277),
            (205, 54, 14, 1424),
        ],
    ),
    "dcmqi_samples/data/dcmqi/segmentations/ct-3slice": dict(  # axial CT
        shape=(512, 512, 3),
        affine=[
            [-0.810546994, 0.0, 0.0, 235.199997],
            [0.0, 0.810546994, 0.0, -187.389511],
            [0.0, 0.0, 1.0, -128.690002],
        ],
        corner_tol_mm=CORNER_TOL_MM,
        samples=[
            (23, 252, 2, -884),
            (43, 230, 2, -105),
            (65, 349, 1, -897),
            (118, 210, 0, 65),
            (161, 87, 2, 64),
            (177, 214, 2, 63),
            (260, 249, 0, -56),
            (311, 281, 1, 32),
            (388, 116, 0, -579),
            (406, 130, 1, -754),
        ],
    ),
    "fodicom_testdata/Tests/FO-DICOM.Tests/Test Data/GH342.dcm": dict(  # one coronal CT slice
        shape=(512, 512, 1),
        affine=[[-0.9765625, 0.0, 0.0, 250.0], [0.0, 0.0, -0.75, -90.0], [0.0, 0.9765625, 0.0, -499.123444]],
        corner_tol_mm=CORNER_TOL_MM,
        samples=[
            (10, 207, 0, -771),
            (22, 428, 0, -780),
            (40, 135, 0, -456),
            (91, 143, 0, 96),
            (139, 178, 0, 512),
            (158, 355, 0, 566),
            (262, 44, 0, 224),
            (326, 37, 0, 240),
            (415, 383, 0, -108),
            (434, 485, 0, -138),
        ],
    ),
}


@pytest.mark.parametrize("dicom_rel", list(DCM2NIIX_PINNED), ids=[Path(d).name for d in DCM2NIIX_PINNED])
def test_ge_series_match_pinned_dcm2niix_conversion(dicom_rel):
    pinned = DCM2NIIX_PINNED[dicom_rel]
    volume = load_series(REAL / dicom_rel)
    affine_lps = ras_to_lps(pinned["affine"])
    perm, _ = canonical_axes(affine_lps)
    assert volume.shape == tuple(pinned["shape"][a] for a in perm)
    error = float(np.max(np.abs(volume_corners(volume) - corners_lps(pinned["shape"], affine_lps))))
    assert error < pinned["corner_tol_mm"], f"corner {error:.3g} mm from dcm2niix"
    for i, j, k, value in pinned["samples"]:  # the voxel at dcm2niix's (i, j, k) world position holds its value
        voxel = volume.lps_to_voxel((affine_lps @ [i, j, k, 1.0])[:3])[0]
        assert np.allclose(voxel, np.rint(voxel), atol=0.02), voxel
        assert volume.array[tuple(np.rint(voxel).astype(int))] == value
