"""The synthetic competition generator: layout, CSV schemas, DICOM validity and quirks, localizer geometry,
segmentations, determinism, bad input and the CLI. Geometry is checked here from the raw DICOM tags, independently
of the kit's loader."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from kaggle_utils import schema
from kaggle_utils.cli import main as cli_main
from kaggle_utils.synth import competition as comp
from kaggle_utils.synth import make_competition, make_series
from kaggle_utils.synth.phantom import Grid, Phantom, Pose, _waves, build_vessels, place_aneurysm, render

# The test set's tag allowlist (COMPETITION.md), spelled out again here on purpose, plus what a multi-frame file
# needs to be readable at all (frame count and functional groups).
ALLOWED = {
    "BitsAllocated", "BitsStored", "Columns", "FrameOfReferenceUID", "HighBit", "ImageOrientationPatient",
    "ImagePositionPatient", "InstanceNumber", "Modality", "PatientID", "PhotometricInterpretation",
    "PixelRepresentation", "PixelSpacing", "PlanarConfiguration", "RescaleIntercept", "RescaleSlope", "RescaleType",
    "Rows", "SOPClassUID", "SOPInstanceUID", "SamplesPerPixel", "SliceThickness", "SpacingBetweenSlices",
    "StudyInstanceUID", "PixelData", "SeriesInstanceUID",
}
MULTIFRAME_ALLOWED = {"NumberOfFrames", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
                      "PixelMeasuresSequence", "PlaneOrientationSequence", "PlanePositionSequence"}
COMPRESSED = {pydicom.uid.RLELossless, pydicom.uid.JPEGLSLossless, pydicom.uid.JPEG2000Lossless}


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def truth_of(root: Path) -> dict:
    return json.loads((root / "synth_truth.json").read_text())


def all_dicoms(root: Path) -> list[Path]:
    return sorted(root.glob("series/*/*.dcm")) + sorted(root.glob("kaggle_evaluation/series/*/*.dcm"))


def frame_geometry(ds: pydicom.Dataset, frame: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple] | None:
    """(IPP, row_dir, col_dir, PixelSpacing) of one image (or frame) from the raw tags; None if the file has none."""
    if frame is None:
        return (np.array(ds.ImagePositionPatient, float), np.array(ds.ImageOrientationPatient[:3], float),
                np.array(ds.ImageOrientationPatient[3:], float), tuple(float(v) for v in ds.PixelSpacing))
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return None
    per = ds.PerFrameFunctionalGroupsSequence[frame]
    shared = ds.SharedFunctionalGroupsSequence[0]

    def find(name):
        return per.get(name) or shared.get(name)

    ipp = find("PlanePositionSequence")[0].ImagePositionPatient
    iop = find("PlaneOrientationSequence")[0].ImageOrientationPatient
    ps = find("PixelMeasuresSequence")[0].PixelSpacing
    return (np.array(ipp, float), np.array(iop[:3], float), np.array(iop[3:], float), tuple(float(v) for v in ps))


# ---------------------------------------------------------------------------------------------------------------------
# Layout and schemas
# ---------------------------------------------------------------------------------------------------------------------
def test_layout_and_csv_schemas(tiny_competition):
    root = tiny_competition
    header, train = read_csv(root / "train.csv")
    assert header == list(schema.TRAIN_CSV_COLS)
    test_header, test_labels = read_csv(root / "test_labels.csv")
    assert test_header == list(schema.TRAIN_CSV_COLS)
    ids_header, test_ids = read_csv(root / "kaggle_evaluation" / "test.csv")
    assert ids_header == [schema.ID_COL]
    loc_header, _ = read_csv(root / "train_localizers.csv")
    assert loc_header == list(schema.LOCALIZER_CSV_COLS)
    assert len(train) == 10 and len(test_labels) == 4
    assert [r[schema.ID_COL] for r in test_ids] == [r[schema.ID_COL] for r in test_labels]
    train_ids = [r[schema.ID_COL] for r in train]
    assert len(set(train_ids) | {r[schema.ID_COL] for r in test_ids}) == 14  # unique across splits
    assert sorted(p.name for p in (root / "series").iterdir()) == sorted(train_ids)
    assert sorted(p.name for p in (root / "kaggle_evaluation" / "series").iterdir()) == sorted(
        r[schema.ID_COL] for r in test_ids)
    for row in train + test_labels:
        assert row["Modality"] in schema.MODALITIES and row["PatientSex"] in schema.SEXES
        assert 18 <= int(row["PatientAge"]) <= 90
        labels = [int(row[c]) for c in schema.LOCATION_COLS]
        assert set(labels) <= {0, 1}
        assert int(row[schema.PRESENT_COL]) == max(labels)
    # No stray temporary folders beside the output.
    assert [p.name for p in root.parent.iterdir()] == [root.name]


def test_truth_agrees_with_labels_and_localizers(tiny_competition):
    root = tiny_competition
    truth = truth_of(root)["series"]
    _, train = read_csv(root / "train.csv")
    _, test_labels = read_csv(root / "test_labels.csv")
    _, localizers = read_csv(root / "train_localizers.csv")
    for split, rows in (("train", train), ("test", test_labels)):
        for row in rows:
            t = truth[row[schema.ID_COL]]
            assert t["split"] == split and t["modality"] == row["Modality"]
            located = {a["location"] for a in t["aneurysms"]}
            assert located == {c for c in schema.LOCATION_COLS if row[c] == "1"}
            for a in t["aneurysms"]:
                assert 3.0 <= a["diameter_mm"] <= 13.5  # clinical range (x head scale)
                assert len(a["centre_lps"]) == 3
    n_train_aneurysms = sum(len(truth[r[schema.ID_COL]]["aneurysms"]) for r in train)
    assert len(localizers) == n_train_aneurysms
    assert any(len(truth[r[schema.ID_COL]]["aneurysms"]) == 2 for r in train + test_labels)
    positives = sum(r[schema.PRESENT_COL] == "1" for r in train + test_labels)
    assert 3 <= positives <= 9  # about 43% of 14
    for row in localizers:
        t = truth[row[schema.ID_COL]]
        assert t["split"] == "train"
        assert row["location"] in {a["location"] for a in t["aneurysms"]}


def test_left_right_anatomy_follows_labels(tiny_competition):
    """A 'Left' aneurysm lies on the patient's left (+x in LPS head coordinates), a 'Right' one on the right."""
    for t in truth_of(tiny_competition)["series"].values():
        rot = np.array(t["pose"]["rotation"])
        for a in t["aneurysms"]:
            head = (np.array(a["centre_lps"]) - np.array(t["pose"]["translation"])) @ rot / t["pose"]["scale"]
            if a["location"].startswith("Left "):
                assert head[0] > 3
            elif a["location"].startswith("Right "):
                assert head[0] < -3
            elif a["location"] in ("Anterior Communicating Artery", "Basilar Tip"):
                assert abs(head[0]) < 10  # midline structures
            assert a["location"] in schema.LOCATION_COLS


# ---------------------------------------------------------------------------------------------------------------------
# DICOM files
# ---------------------------------------------------------------------------------------------------------------------
def test_every_dicom_decodes_and_carries_only_allowed_tags(tiny_competition):
    root = tiny_competition
    truth = truth_of(root)["series"]
    syntaxes = set()
    ct_max: dict[str, float] = {}
    for path in all_dicoms(root):
        ds = pydicom.dcmread(path)
        t = truth[path.parent.name]
        assert ds.SeriesInstanceUID == path.parent.name
        assert path.name == f"{ds.SOPInstanceUID}.dcm"
        assert ds.Modality == schema.DICOM_MODALITY[t["modality"]]
        assert ds.file_meta.TransferSyntaxUID == t["transfer_syntax"]
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        extra = MULTIFRAME_ALLOWED if "NumberOfFrames" in ds else set()
        bad = [e.keyword or str(e.tag) for e in ds.iterall() if (e.keyword or str(e.tag)) not in ALLOWED | extra]
        assert not bad, f"{path}: tags outside the allowlist: {bad}"
        arr = ds.pixel_array
        frames = int(ds.get("NumberOfFrames", 1))
        assert arr.shape == ((frames,) if frames > 1 else ()) + (ds.Rows, ds.Columns)
        assert arr.dtype == (np.int16 if ds.PixelRepresentation else np.uint16)
        assert ds.PhotometricInterpretation == ("MONOCHROME1" if "monochrome1" in t["quirks"] else "MONOCHROME2")
        if ds.Modality == "CT":
            assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) in (0.0, -1024.0)
            hu = arr * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            assert hu.min() >= -1100  # air is about -1000 HU, never the raw stored value
            ct_max[path.parent.name] = max(ct_max.get(path.parent.name, -2000.0), float(hu.max()))
    assert ct_max and min(ct_max.values()) > 700  # every CT series shows bone in HU
    assert COMPRESSED | {pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian} <= syntaxes


def test_series_files_follow_their_quirks(tiny_competition):
    root = tiny_competition
    for uid, t in truth_of(root)["series"].items():
        files = sorted((root / t["folder"]).glob("*.dcm"))
        assert len(files) == t["n_files"]
        if t["multiframe"]:
            ds = pydicom.dcmread(files[0])
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.1" and int(ds.NumberOfFrames) == t["shape"][0]
            assert "ImagePositionPatient" not in ds and "PixelSpacing" not in ds  # geometry only in groups
            layout = t["multiframe_layout"]
            if layout == "bare":
                assert "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds
            else:
                shared = ds.SharedFunctionalGroupsSequence[0]
                per = ds.PerFrameFunctionalGroupsSequence
                assert len(per) == t["shape"][0]
                assert ("PixelMeasuresSequence" in shared) == (layout == "shared")
                assert ("PixelMeasuresSequence" in per[0]) == (layout == "perframe")
            continue
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        extras = {t["scout_sop_uid"], t["duplicate_sop_uid"]}
        images = [h for h in headers if h.SOPInstanceUID not in extras]
        assert len(images) == t["shape"][0]
        iop = np.array(images[0].ImageOrientationPatient, float)
        expected = {"axial": [1, 0, 0, 0, 1, 0], "coronal": [1, 0, 0, 0, 0, -1], "sagittal": [0, 1, 0, 0, 0, -1]}
        if "oblique" in t["quirks"]:
            tilt = np.degrees(np.arccos(np.clip(iop[3:] @ np.array(expected[t["plane"]][3:]), -1, 1)))
            assert np.allclose(iop[:3], expected[t["plane"]][:3]) and 4.9 < tilt < 15.1
            assert abs(iop[:3] @ iop[3:]) < 1e-5 and abs(np.linalg.norm(iop[3:]) - 1) < 1e-5
        else:
            assert np.allclose(iop, expected[t["plane"]])
        normal = np.cross(iop[:3], iop[3:])
        pos = np.array([np.array(h.ImagePositionPatient, float) @ normal for h in images])
        numbers = np.array([int(h.InstanceNumber) for h in images])
        steps = np.diff(np.sort(pos))
        assert np.allclose(steps, abs(t["geometry"]["slice_step"]), atol=1e-3)  # regular, no duplicates
        by_position = numbers[np.argsort(pos)]
        if t["instance_order"] == "sequential":
            assert np.all(np.diff(by_position) == (-1 if t["geometry"]["slice_step"] < 0 else 1))
        elif t["instance_order"] == "reversed":
            assert np.all(np.diff(by_position) == (1 if t["geometry"]["slice_step"] < 0 else -1))
        assert ("SpacingBetweenSlices" in images[0]) == ("no_spacing_between_slices" not in t["quirks"])
        if t["duplicate_sop_uid"]:
            dup = next(h for h in headers if h.SOPInstanceUID == t["duplicate_sop_uid"])
            assert np.min(np.abs(pos - np.array(dup.ImagePositionPatient, float) @ normal)) < 1e-4
        if t["scout_sop_uid"]:
            scout = next(h for h in headers if h.SOPInstanceUID == t["scout_sop_uid"])
            assert (scout.Rows, scout.Columns) != (images[0].Rows, images[0].Columns)
            assert not np.allclose(np.array(scout.ImageOrientationPatient, float), iop)


def test_quirks_are_covered_by_the_tiny_fixture(tiny_competition):
    seen = {q for t in truth_of(tiny_competition)["series"].values() for q in t["quirks"]}
    wanted = {"coronal", "sagittal", "multiframe_shared", "multiframe_perframe", "multiframe_bare", "monochrome1",
              "scout", "duplicate_slice", "ct_signed", "ct_unsigned", "instance_reversed", "instance_shuffled",
              "syntax_rle", "syntax_jpegls", "syntax_jpeg2000", "syntax_implicit", "descending_positions",
              "no_spacing_between_slices", "oblique"}
    assert wanted <= seen, f"missing: {wanted - seen}"


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_quirk_coverage_holds_across_seeds(seed):
    plans = comp.plan_competition(10, 4, seed)
    assert {p.multiframe for p in plans} >= {"shared", "perframe", "bare"}
    assert {p.plane for p in plans} == {"axial", "coronal", "sagittal"}
    assert {p.transfer_syntax for p in plans} == set(comp.SYNTAX_RATES)
    assert any(p.monochrome1 for p in plans) and any(p.scout for p in plans) and any(p.duplicate_slice for p in plans)
    assert any(p.multiframe and p.locations and p.split == "train" for p in plans)  # a localizer with 'f'
    assert {p.modality for p in plans if p.split == "train"} == set(schema.MODALITIES)
    assert any(p.segmentation for p in plans) and not any(p.segmentation for p in plans if p.split == "test")


def test_rates_rule_at_scale():
    plans = comp.plan_competition(600, 300, seed=0)
    n = len(plans)
    frac = {m: sum(p.modality == m for p in plans) / n for m in schema.MODALITIES}
    for m, f in schema.MODALITY_FRACTIONS.items():
        assert abs(frac[m] - f) < 0.01
    assert abs(sum(bool(p.locations) for p in plans) / n - 0.43) < 0.01
    mr = [p for p in plans if schema.DICOM_MODALITY[p.modality] == "MR"]
    assert 0.05 < sum(bool(p.multiframe) for p in mr) / len(mr) < 0.09
    assert sum(p.plane != "axial" for p in plans) / n < 0.06
    counts = {c: sum(c in p.locations for p in plans) for c in schema.LOCATION_COLS}
    assert counts["Anterior Communicating Artery"] > counts["Left Anterior Cerebral Artery"]


# ---------------------------------------------------------------------------------------------------------------------
# Localizer geometry
# ---------------------------------------------------------------------------------------------------------------------
def test_every_localizer_lands_on_its_aneurysm(tiny_competition):
    root = tiny_competition
    truth = truth_of(root)["series"]
    _, localizers = read_csv(root / "train_localizers.csv")
    assert localizers
    checked_frames = 0
    for row in localizers:
        t = truth[row[schema.ID_COL]]
        point = ast.literal_eval(row["coordinates"])
        assert set(point) == ({"x", "y", "f"} if t["multiframe"] else {"x", "y"})
        path = root / t["folder"] / f"{row[schema.SOP_COL]}.dcm"
        ds = pydicom.dcmread(path)
        frame = point.get("f")
        geo = frame_geometry(ds, frame)
        if geo is None:  # bare multi-frame: the geometry exists only in the truth (frame f = slice f)
            g = t["geometry"]
            row_dir, col_dir = np.array(g["row_dir"]), np.array(g["col_dir"])
            ipp = np.array(g["origin_lps"]) + frame * g["slice_step"] * np.cross(row_dir, col_dir)
            geo = (ipp, row_dir, col_dir, tuple(g["pixel_spacing"]))
            checked_frames += 1
        elif frame is not None:
            checked_frames += 1
        ipp, row_dir, col_dir, (row_spacing, col_spacing) = geo
        mm = ipp + point["x"] * col_spacing * row_dir + point["y"] * row_spacing * col_dir
        matches = [a for a in t["aneurysms"] if a["location"] == row["location"]]
        centre = np.array(matches[0]["centre_lps"])
        normal = np.cross(row_dir, col_dir)
        off = centre - mm
        out_of_plane = abs(off @ normal)
        in_plane = np.linalg.norm(off - (off @ normal) * normal)
        assert out_of_plane <= abs(t["geometry"]["slice_step"]) / 2 + 1e-3, row
        assert in_plane <= 0.02 * max(row_spacing, col_spacing) + 1e-3, row
        image = ds.pixel_array if frame is None else ds.pixel_array[frame]
        assert 0 <= point["x"] <= image.shape[1] - 1 and 0 <= point["y"] <= image.shape[0] - 1
    assert checked_frames >= 1


@pytest.mark.parametrize("modality", schema.MODALITIES)
def test_aneurysm_is_visible_at_its_localizer(tmp_path, modality):
    """A 7 mm aneurysm shows the vessel contrast of its modality at the localizer pixel (bright, or dark for T2)."""
    t = make_series(tmp_path, modality=modality, image_size=96, n_slices=48, seed=11,
                    aneurysms=["Right Middle Cerebral Artery"], diameters=[7.0], instance_order="sequential")
    a = t["aneurysms"][0]
    ds = pydicom.dcmread(Path(t["path"]) / f"{a['sop_uid']}.dcm")
    img = ds.pixel_array.astype(float) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    y, x = int(round(a["y"])), int(round(a["x"]))
    window = img[y - 1: y + 2, x - 1: x + 2]
    around = np.median(img[y - 12: y + 13, x - 12: x + 13])
    if modality == "CTA":
        assert window.max() > 250 and around < 100  # contrast-filled lumen in brain/CSF
    elif modality == "MRI T2":
        assert window.min() < 0.4 * around  # flow void
    elif modality == "MRA":
        assert window.max() > 2.5 * around  # TOF: bright flow
    else:
        assert window.max() > 1.3 * around  # T1 post-contrast: moderately bright


def test_aneurysm_contrast_equals_its_vessel():
    """Noise-free render: the sac has exactly the vessel value (never brighter), and sits on the vessel wall."""
    rng = np.random.default_rng(0)
    warp = _waves(rng, 6, (60.0, 160.0), 1.5)
    phantom = Phantom(build_vessels(rng, warp), [], Pose(np.eye(3), 1.0, np.zeros(3)))
    an = place_aneurysm(rng, phantom.vessels, "Anterior Communicating Artery", 6.0)
    phantom.aneurysms.append(an)
    grid = Grid(an.centre - 12.0, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0.5, 0.5), 0.5, (49, 49, 49))
    values, labels = render(grid, phantom, "CTA", rng, {"noise": 0.0, "texture": 0.0})
    vessel = 380.0
    assert values.max() <= vessel + 1e-3
    assert values[24, 24, 24] == pytest.approx(vessel)  # the sac centre is lumen
    assert labels[24, 24, 24] == schema.COL_TO_COWSEG_LABEL["Anterior Communicating Artery"]
    # Attached: the straight path from the sac centre to the nearest ACom centreline point stays inside lumen.
    acom = next(v for v in phantom.vessels if v.location == "Anterior Communicating Artery")
    seg = acom.points[1] - acom.points[0]
    t = np.clip((an.centre - acom.points[0]) @ seg / (seg @ seg), 0, 1)
    for f in np.linspace(0, 1, 9):
        p = an.centre + f * (acom.points[0] + t * seg - an.centre)
        k, r, c = np.rint(grid.world_to_voxel(p)[0]).astype(int)
        assert values[k, r, c] > 0.5 * vessel


# ---------------------------------------------------------------------------------------------------------------------
# Segmentations
# ---------------------------------------------------------------------------------------------------------------------
def test_segmentations_match_dicom_geometry(tiny_competition):
    root = tiny_competition
    truth = truth_of(root)["series"]
    seg_uids = {uid for uid, t in truth.items() if t["segmentation"]}
    assert seg_uids and all(truth[u]["split"] == "train" for u in seg_uids)
    assert all(truth[u]["multiframe_layout"] != "bare" for u in seg_uids)  # unalignable without geometry
    assert sorted(p.name for p in (root / "segmentations").iterdir()) == sorted(
        [f"{u}.nii" for u in seg_uids] + [f"{u}_cowseg.nii" for u in seg_uids])
    # The aneurysms of the segmented series as train.csv labels them (the fixture, seed 0, has 3 of them).
    _, train = read_csv(root / "train.csv")
    labelled = {(row[schema.ID_COL], c) for row in train if row[schema.ID_COL] in seg_uids
                for c in schema.LOCATION_COLS if row[c] == "1"}
    assert len(labelled) >= 1, "the fixture must segment at least one series with an aneurysm"
    checked = set()
    for uid in seg_uids:
        t = truth[uid]
        image = nib.load(root / "segmentations" / f"{uid}.nii")
        cowseg = nib.load(root / "segmentations" / f"{uid}_cowseg.nii")
        assert np.allclose(image.affine, cowseg.affine)
        nk, nr, nc = t["shape"]
        assert image.shape == cowseg.shape == (nc, nr, nk)
        labels = np.asarray(cowseg.dataobj)
        assert set(np.unique(labels)) <= set(range(14)) and len(np.unique(labels)) >= 8
        # Voxel (0, 0, 0) is the first pixel of slice k=0: RAS = diag(-1, -1, 1) * LPS.
        g = t["geometry"]
        assert np.allclose(image.affine[:3, 3], np.array(g["origin_lps"]) * [-1, -1, 1], atol=1e-3)
        for a in t["aneurysms"]:
            ras = np.array(a["centre_lps"]) * [-1, -1, 1]
            ijk = np.rint(np.linalg.inv(cowseg.affine) @ np.append(ras, 1.0))[:3].astype(int)
            assert labels[tuple(ijk)] == schema.COL_TO_COWSEG_LABEL[a["location"]]
            checked.add((uid, a["location"]))
    assert checked == labelled  # every labelled aneurysm sits on its artery's cowseg label


# ---------------------------------------------------------------------------------------------------------------------
# Determinism, bad input, CLI
# ---------------------------------------------------------------------------------------------------------------------
def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    kwargs = dict(n_series=3, n_test=1, image_size=48, n_slices=16)
    a = tree_hash(make_competition(tmp_path / "a", seed=7, **kwargs))
    b = tree_hash(make_competition(tmp_path / "b", seed=7, **kwargs))
    c = tree_hash(make_competition(tmp_path / "c", seed=8, **kwargs))
    assert a == b and len(a) > 10
    assert set(a) != set(c)  # other seed: other UIDs, other files


@pytest.mark.parametrize("n_series", [0, -3])
def test_bad_series_count_is_one_line_error_and_writes_nothing(tmp_path, n_series):
    with pytest.raises(comp.SynthError, match="n_series") as err:
        make_competition(tmp_path / "out", n_series=n_series, seed=0)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_parent_and_non_empty_output_are_refused(tmp_path):
    with pytest.raises(comp.SynthError, match="does not exist"):
        make_competition(tmp_path / "nope" / "out", n_series=2, seed=0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(comp.SynthError, match="not empty"):
        make_competition(out, n_series=2, seed=0)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_empty_output_folder_is_used_and_overwrite_replaces(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    kwargs = dict(n_series=1, image_size=48, n_slices=16)
    make_competition(out, seed=0, **kwargs)
    first = set(tree_hash(out))
    assert "train.csv" in first
    with pytest.raises(comp.SynthError, match="not empty"):
        make_competition(out, seed=1, **kwargs)
    make_competition(out, seed=1, overwrite=True, **kwargs)
    assert set(tree_hash(out)) != first and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_make_series_rejects_unknown_choices(tmp_path):
    for bad in (dict(modality="PET"), dict(plane="oblique"), dict(transfer_syntax="jpeg-xl"),
                dict(modality="CTA", multiframe="shared"), dict(aneurysms=["Left Toe"])):
        with pytest.raises(ValueError, match="valid|only"):
            make_series(tmp_path, **bad)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_refused(tmp_path):
    if os.geteuid() != 0:
        parent = tmp_path / "locked"
        parent.mkdir()
        parent.chmod(0o500)
    else:  # root ignores permission bits; sysfs refuses new folders even to root
        parent = Path("/sys")
    with pytest.raises(comp.SynthError, match="cannot write"):
        make_competition(parent / "out", n_series=2, seed=0)
    assert not (parent / "out").exists()


def test_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def exploding(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    real = comp.make_series
    monkeypatch.setattr(comp, "make_series", exploding)
    with pytest.raises(RuntimeError, match="disk on fire"):
        make_competition(tmp_path / "out", n_series=3, seed=0, image_size=48, n_slices=16)
    assert list(tmp_path.iterdir()) == []


def test_cli_help_error_and_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["synth", "--help"])
    assert exit_info.value.code == 0
    assert "--n-series" in capsys.readouterr().out
    assert cli_main(["synth", "--out", str(tmp_path / "x"), "--n-series", "0", "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "n_series" in err and "\n" not in err
    assert not (tmp_path / "x").exists()
    rc = cli_main(["synth", "--out", str(tmp_path / "y"), "--n-series", "2", "--seed", "3", "--n-test", "1",
                   "--image-size", "48", "--n-slices", "16"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 train + 1 held-out" in out and "modality:" in out and "quirks:" in out and "MB" in out
    assert (tmp_path / "y" / "train.csv").is_file()


def test_make_series_accepts_multiframe_true_and_a_syntax_uid(tmp_path):
    t = make_series(tmp_path, modality="MRA", multiframe=True, transfer_syntax=str(pydicom.uid.JPEGLSLossless),
                    image_size=48, n_slices=16, seed=3)
    assert t["multiframe_layout"] == "shared" and t["transfer_syntax_name"] == "jpegls"
    (path,) = Path(t["path"]).glob("*.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless and ds.pixel_array.shape == (16, 48, 48)
