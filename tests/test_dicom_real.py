"""Real scanner files through load_series: a Volume or a SeriesError and nothing else; where a dcm2niix reference
NIfTI exists, the shape, axis order and world geometry agree with it."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from kaggle_utils.dicom import SeriesError, Volume, load_series
from kaggle_utils.paths import dicom_real_dir

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the odd files on purpose

MAX_BYTES = 1_000_000  # larger pydicom test files only cost time (a 120-frame colour JPEG takes ~6 s)
REAL = dicom_real_dir()
needs_corpus = pytest.mark.skipif(REAL is None, reason="real DICOM corpus ../shared/dicom_real not found "
                                                       "(set KAGGLE_UTILS_DICOM_REAL to its folder)")


def check_volume(volume: Volume) -> None:
    """Invariants every returned volume must satisfy."""
    assert volume.array.dtype == np.float32 and volume.array.ndim == 3
    assert np.all(np.isfinite(volume.array))
    assert all(s > 0 for s in volume.spacing)
    np.testing.assert_allclose(np.linalg.norm(volume.affine[:3, :3], axis=0), volume.spacing, rtol=1e-6)
    directions = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    for j, lps_axis in enumerate((2, 1, 0)):  # z -> S, y -> P, x -> L
        assert int(np.argmax(np.abs(directions[:, j]))) == lps_axis
        assert directions[lps_axis, j] > 0
    assert len(volume.slice_sources) == volume.shape[volume.slice_axis]
    for sop, frame in volume.slice_sources[:3]:
        assert len(volume.voxel_of(sop, 0, 0, frame)) == 3


def load_or_error(path) -> Volume | SeriesError:
    try:
        volume = load_series(path)
    except SeriesError as exc:
        assert str(path) in str(exc)
        return exc
    check_volume(volume)
    return volume


def small_files(paths) -> list[str]:
    return sorted(p for p in set(paths) if os.path.isfile(p) and os.path.getsize(p) <= MAX_BYTES)


def test_every_small_pydicom_test_file_is_a_volume_or_a_series_error():
    own = [p for p in get_testdata_files() if "data_store" not in p]  # pydicom-data files: the next test
    outcomes = {Path(p).name: load_or_error(p) for p in small_files(own)}
    volumes = [v for v in outcomes.values() if isinstance(v, Volume)]
    assert len(outcomes) > 150 and len(volumes) >= 70
    assert outcomes["CT_small.dcm"].shape == (1, 128, 128) and outcomes["CT_small.dcm"].modality == "CT"
    assert "RTDOSE" in str(outcomes["rtdose.dcm"])
    assert "not a DICOM file" in str(outcomes["README.txt"])


def rescaled_reference(path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "JPEG-LL.dcm", "MR_small_bigendian.dcm",
                                  "JPGLosslessP14SV1_1s_1f_8b.dcm", "693_J2KR.dcm"])
def test_decoded_values_match_pydicom(name):
    """Same multiset of values as pydicom's own decode + rescale (orientation may permute them)."""
    path = get_testdata_file(name)
    volume = load_series(path)
    check_volume(volume)
    expected = rescaled_reference(path)
    assert volume.array.size == expected.size
    np.testing.assert_allclose(np.sort(volume.array.ravel()), np.sort(expected.ravel()), rtol=1e-5, atol=1e-3)


def test_pydicom_data_package_files():
    paths = [p for p in get_testdata_files() if "data_store" in p]
    if not paths:
        pytest.skip("pydicom-data package files not installed")
    outcomes = {Path(p).name: load_or_error(p) for p in small_files(paths)}
    assert sum(isinstance(v, Volume) for v in outcomes.values()) >= 5


# ------------------------------------------------------------------------------------------------- the real corpus

CORPUS_CASES = {
    # path under the corpus -> expected: ("volume", canonical shape[, text in a note]) or ("error", text in the message)
    "dcm_qa_philips_enh/In/cl": ("volume", (256, 256, 170), "folder holds 2 series"),  # sagittal MPRAGE kept
    "dicom_numpy_kits/tests/dupe-positions": ("volume", (10, 512, 512), "duplicate positions"),
    "dcmqi_samples/data/dcmqi/paramaps/701-ADCb500": ("volume", (20, 256, 256)),
    "dcmqi_samples/data/dcmqi/segmentations/ct-3slice": ("volume", (3, 512, 512)),
    "dcmqi_samples/data/dcmqi/segmentations/liver.dcm": ("error", "not an image (SEG object)"),
    "fodicom_testdata/Tests/FO-DICOM.Tests/Test Data/abd1": ("volume", (256, 5, 256),
                                                             "dropped 6 frame(s) with another geometry"),  # coronal
    "fodicom_testdata/Tests/FO-DICOM.Tests/Test Data/CR-MONO1-10-chest": ("volume", (1, 440, 440)),  # no file meta
    "fodicom_testdata/Tests/FO-DICOM.Tests/Test Data/D_CLUNIE_CT1_RLE_FRAGS.dcm": ("volume", (1, 512, 512)),
    "fodicom_testdata/Tests/FO-DICOM.Tests/Test Data/GH342.dcm": ("volume", (512, 1, 512)),  # coronal CT
    "fodicom_testdata/Tests/FO-DICOM.Tests/Test Data/GH177_D_CLUNIE_CT1_IVRLE_BigEndian_undefined_length.dcm":
        ("error", "not readable as DICOM"),
    "fodicom_testdata/Tests/FO-DICOM.Tests/Test Data/MOVEKNEE.dcm": ("error", "same position"),
    "fodicom_testdata/Tests/FO-DICOM.Tests/Test Data/HasFragmentSequence.dcm": ("volume", (96, 512, 512)),
}
CORNERSTONE = "cornerstone3D_testImages/packages/dicomImageLoader/testImages"
UNDECODABLE_SYNTAXES = ("1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55")  # retired JPEG processes


@needs_corpus
@pytest.mark.parametrize("relpath", list(CORPUS_CASES))
def test_corpus_series(relpath):
    kind, expected, *note = CORPUS_CASES[relpath]
    outcome = load_or_error(REAL / relpath)
    if kind == "volume":
        assert isinstance(outcome, Volume), outcome
        assert outcome.shape == expected
        assert not note or any(note[0] in n for n in outcome.notes), outcome.notes
    else:
        assert isinstance(outcome, SeriesError) and expected in str(outcome)


@needs_corpus
def test_cornerstone_transfer_syntaxes_decode_to_the_same_image():
    reference = load_series(REAL / CORNERSTONE / "CTImage.dcm")
    for path in sorted((REAL / CORNERSTONE).glob("CTImage.dcm_*")):
        outcome = load_or_error(path)
        if any(ts in path.name for ts in UNDECODABLE_SYNTAXES):
            assert isinstance(outcome, SeriesError) and "no pixel data decoder" in str(outcome)
            continue
        assert isinstance(outcome, Volume), outcome
        lossy = any(k in path.name for k in ("Process1T", "Process2_4", "Lossy", "2.4.91"))
        tolerance = 0.05 * float(np.ptp(reference.array)) if lossy else 1e-3
        np.testing.assert_allclose(outcome.array, reference.array, atol=tolerance, err_msg=path.name)
        np.testing.assert_allclose(outcome.affine, reference.affine, atol=1e-6)


def nifti_in_canonical_frame(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The NIfTI's first volume permuted/flipped to (S, P, L)-ascending, and the LPS positions of its 8 corners."""
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    data = data[..., 0] if data.ndim > 3 else data
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine  # RAS+ -> LPS
    directions = affine_lps[:3, :3] / np.linalg.norm(affine_lps[:3, :3], axis=0)
    perm = [int(np.argmax(np.abs(directions[lps_axis]))) for lps_axis in (2, 1, 0)]
    flips = [directions[lps_axis, perm[j]] < 0 for j, lps_axis in enumerate((2, 1, 0))]
    canonical = data.transpose(perm)
    for j, flip in enumerate(flips):
        if flip:
            canonical = np.flip(canonical, j)
    corners = []
    for corner in itertools.product((0, 1), repeat=3):
        index = [0, 0, 0]
        for j in range(3):
            n = data.shape[perm[j]]
            u = corner[j] * (n - 1)
            index[perm[j]] = n - 1 - u if flips[j] else u
        corners.append((affine_lps @ np.array([*index, 1.0]))[:3])
    return canonical, np.array(corners)


REFERENCE_PAIRS = [
    ("dcm_qa_enh/In/Philips/IM_0027_fMAP.dcm", "dcm_qa_enh/Ref/Philips_WIP_B0_NS_801_e1.nii"),
    ("dcm_qa_enh/In/Siemens/XA10", "dcm_qa_enh/Ref/Siemens_REST1_w_SMS_PF7-8_6.nii"),
    ("dcm_qa_canon_61/In/enh/3000.dcm", "dcm_qa_canon_61/Ref/3000_DTI_PA-ortho_enh.nii.gz"),
    ("dcm_qa_canon_61/In/enh/10000.dcm", "dcm_qa_canon_61/Ref/10000_SAG_DTI_PA-COR_20d_enh.nii.gz"),  # 20 deg oblique
    ("dcm_qa_philips_enh/In/enh/1901_WIP_3DpCASL_real.dcm", "dcm_qa_philips_enh/Ref/1901_WIP_3DpCASL_enh_real.nii.gz"),
    ("dcm_qa_philips_enh/In/enh/1903_WIP_SOURCE_-_3DpCASL.dcm",
     "dcm_qa_philips_enh/Ref/1903_WIP_SOURCE_-_3DpCASL_enh.nii.gz"),
    ("dcm_qa_philips_enh/In/enh/2001_WIP_fcMRI_Field_Mapping_e2_phMag.dcm",
     "dcm_qa_philips_enh/Ref/2001_WIP_fcMRI_Field_Mapping_enh_e2.nii.gz"),
    ("dcm_qa_philips_enh/In/cl/1901_*", "dcm_qa_philips_enh/Ref/1901_WIP_3DpCASL_cl.nii.gz"),
]


@needs_corpus
@pytest.mark.parametrize("dicom_rel,nifti_rel", REFERENCE_PAIRS, ids=[Path(n).name.split(".")[0]
                                                                      for _, n in REFERENCE_PAIRS])
def test_matches_dcm2niix_reference(tmp_path, dicom_rel, nifti_rel):
    source = REAL / dicom_rel
    if "*" in dicom_rel:  # one series out of a folder that holds two: link its files into a folder of their own
        for path in source.parent.glob(source.name):
            (tmp_path / path.name).symlink_to(path)
        source = tmp_path
    volume = load_series(source)
    check_volume(volume)
    reference, corners = nifti_in_canonical_frame(REAL / nifti_rel)
    assert volume.shape == reference.shape
    ours = volume.voxel_to_lps([[cz * (volume.shape[0] - 1), cy * (volume.shape[1] - 1), cx * (volume.shape[2] - 1)]
                                for cz, cy, cx in itertools.product((0, 1), repeat=3)])
    np.testing.assert_allclose(ours, corners, atol=0.01)  # same world position for every corner: no flip, no swap
    # The kept volume is the reference's first volume (or, for a magnitude/phase file, highly correlated with it).
    correlation = np.corrcoef(volume.array.ravel(), reference.astype(np.float64).ravel())[0, 1]
    assert correlation > 0.95


@needs_corpus
@pytest.mark.parametrize("relpath", [
    f"{CORNERSTONE}/CTImage.dcm_JPEGProcess14SV1TransferSyntax_1.2.840.10008.1.2.4.70.dcm",
    f"{CORNERSTONE}/CTImage.dcm_JPEGProcess14TransferSyntax_1.2.840.10008.1.2.4.57.dcm",
    "fodicom_testdata/Tests/FO-DICOM.Tests/Test Data/IM-0001-0001-0001.dcm",
])
def test_jpeg_lossless_decodes_with_gdcm_first_and_the_same_values(relpath):
    """gdcm is first for JPEG lossless because it measured faster on these real files; being lossless, its values
    must equal pylibjpeg-libjpeg's exactly (the switch changes no cached array)."""
    from kaggle_utils.dicom_decode import plugin_order

    path = REAL / relpath
    ds = pydicom.dcmread(path)
    assert plugin_order(ds.file_meta.TransferSyntaxUID)[0] == "gdcm"
    decoded = {}
    for plugin in ("gdcm", "pylibjpeg"):
        ds = pydicom.dcmread(path)
        ds.pixel_array_options(decoding_plugin=plugin)
        decoded[plugin] = ds.pixel_array
    np.testing.assert_array_equal(decoded["gdcm"], decoded["pylibjpeg"])
    np.testing.assert_allclose(load_series(path).array[0], rescaled_reference(path), atol=1e-3)


@needs_corpus
@pytest.mark.parametrize("relpath", [p for p, case in CORPUS_CASES.items() if case[0] == "volume"])
def test_header_geometry_equals_the_loaded_volume_on_real_series(relpath):
    """EDA reports ``read_header_geometry``; on real scanner series it must give the loader's spacing and slice
    count without decoding a pixel (enhanced multi-frame, dropped frames and duplicate positions included)."""
    from kaggle_utils.dicom import read_header_geometry

    volume = load_or_error(REAL / relpath)
    header = read_header_geometry(REAL / relpath)
    assert header.spacing == pytest.approx(tuple(float(s) for s in volume.spacing), abs=1e-6)
    assert header.slices == volume.shape[volume.slice_axis]
    assert header.slices * header.rows * header.cols == volume.array.size
