"""Schema constants, path resolution, atomic writes and the CLI front door."""

import os
import subprocess
import sys

import pytest

from kaggle_utils import paths, schema
from kaggle_utils.io import atomic_dir, atomic_write_text


def test_label_columns_exact():
    assert len(schema.LABEL_COLS) == 14 and schema.LABEL_COLS[-1] == "Aneurysm Present"
    assert schema.LABEL_COLS[0] == "Left Infraclinoid Internal Carotid Artery"
    assert schema.LABEL_COLS[12] == "Other Posterior Circulation"
    assert schema.TRAIN_CSV_COLS[:4] == ("SeriesInstanceUID", "PatientAge", "PatientSex", "Modality")
    assert sum(schema.MODALITY_FRACTIONS.values()) == pytest.approx(0.999, abs=2e-3)


def test_lr_swap_is_an_involution_pairing_left_and_right():
    perm = schema.LR_SWAP_PERM
    assert [perm[p] for p in perm] == list(range(14))
    for i, col in enumerate(schema.LABEL_COLS):
        other = schema.LABEL_COLS[perm[i]]
        if col.startswith("Left "):
            assert other == "Right " + col[5:]
        elif col.startswith("Right "):
            assert other == "Left " + col[6:]
        else:
            assert other == col
    assert sum(perm[i] != i for i in range(14)) == 10  # 5 L/R pairs


# Written out from COMPETITION.md (not derived from schema): the *_cowseg.nii vessel label values, the train.csv
# location columns in file order, and the value of the mirror-image vessel.
COWSEG_VALUES_FROM_COMPETITION_MD = {
    1: "Other Posterior Circulation",
    2: "Basilar Tip",
    3: "Right Posterior Communicating Artery",
    4: "Left Posterior Communicating Artery",
    5: "Right Infraclinoid Internal Carotid Artery",
    6: "Left Infraclinoid Internal Carotid Artery",
    7: "Right Supraclinoid Internal Carotid Artery",
    8: "Left Supraclinoid Internal Carotid Artery",
    9: "Right Middle Cerebral Artery",
    10: "Left Middle Cerebral Artery",
    11: "Right Anterior Cerebral Artery",
    12: "Left Anterior Cerebral Artery",
    13: "Anterior Communicating Artery",
}
TRAIN_CSV_LOCATIONS_FROM_COMPETITION_MD = (
    "Left Infraclinoid Internal Carotid Artery", "Right Infraclinoid Internal Carotid Artery",
    "Left Supraclinoid Internal Carotid Artery", "Right Supraclinoid Internal Carotid Artery",
    "Left Middle Cerebral Artery", "Right Middle Cerebral Artery", "Anterior Communicating Artery",
    "Left Anterior Cerebral Artery", "Right Anterior Cerebral Artery", "Left Posterior Communicating Artery",
    "Right Posterior Communicating Artery", "Basilar Tip", "Other Posterior Circulation",
)
# cowseg value -> train.csv location index, and cowseg value -> mirrored cowseg value (0 = background), by hand.
COWSEG_TO_TRAIN_INDEX = [-1, 12, 11, 10, 9, 1, 0, 3, 2, 5, 4, 8, 7, 6]
COWSEG_MIRROR = [0, 1, 2, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 13]


def test_cowseg_mapping_matches_the_competition_description():
    assert schema.LOCATION_COLS == TRAIN_CSV_LOCATIONS_FROM_COMPETITION_MD
    assert schema.COWSEG_LABEL_TO_COL == COWSEG_VALUES_FROM_COMPETITION_MD
    assert schema.COL_TO_COWSEG_LABEL == {c: v for v, c in COWSEG_VALUES_FROM_COMPETITION_MD.items()}
    assert schema.COWSEG_TO_LOCATION_INDEX.tolist() == COWSEG_TO_TRAIN_INDEX
    assert schema.COWSEG_LR_SWAP.tolist() == COWSEG_MIRROR
    # The hand-written tables agree with each other: index -> the right name, mirror -> the other side's name.
    for value, col in COWSEG_VALUES_FROM_COMPETITION_MD.items():
        assert TRAIN_CSV_LOCATIONS_FROM_COMPETITION_MD[COWSEG_TO_TRAIN_INDEX[value]] == col
        mirrored = COWSEG_VALUES_FROM_COMPETITION_MD[COWSEG_MIRROR[value]]
        assert mirrored == col.replace("Left ", "@").replace("Right ", "Left ").replace("@", "Right ")


def test_paths_argument_env_and_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_UTILS_DATA_DIR", raising=False)
    monkeypatch.setattr(paths, "KAGGLE_INPUT", tmp_path / "no_kaggle_here")
    with pytest.raises(paths.PathError, match="KAGGLE_UTILS_DATA_DIR"):
        paths.data_dir()
    monkeypatch.setenv("KAGGLE_UTILS_DATA_DIR", str(tmp_path))
    assert paths.data_dir() == tmp_path
    assert paths.data_dir(tmp_path / "x", must_exist=False) == tmp_path / "x"
    with pytest.raises(paths.PathError, match="does not exist"):
        paths.data_dir(tmp_path / "missing")
    monkeypatch.setenv("KAGGLE_UTILS_RUNS", os.pathsep.join([str(tmp_path), str(tmp_path)]))
    assert paths.run_dirs() == [tmp_path, tmp_path]
    monkeypatch.setenv("KAGGLE_UTILS_SHARE_DIR", str(tmp_path / "share"))
    assert paths.share_dir() == tmp_path / "share"


def test_atomic_writes_leave_nothing_half_written(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "part").write_text("x")
            raise RuntimeError("boom")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "part").write_text("x")
    assert (tmp_path / "out" / "part").read_text() == "x"
    with pytest.raises(FileExistsError):
        with atomic_dir(tmp_path / "out"):
            pass
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "no" / "b.txt", "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkstemp's 0600


def _run(*args):
    return subprocess.run([sys.executable, "-m", "kaggle_utils", *args], capture_output=True, text=True, timeout=120)


def test_cli_unknown_command_and_help():
    res = _run("frobnicate")
    assert res.returncode == 2 and "unknown command 'frobnicate'" in res.stderr
    res = _run("--help")
    assert res.returncode == 0 and "preprocess" in res.stdout and "train" in res.stdout


def test_submit_front_door_unknown_command():
    res = subprocess.run([sys.executable, "submit.py", "nope"], capture_output=True, text=True,
                         cwd=paths.REPO_ROOT, timeout=60)
    assert res.returncode == 2 and "unknown command 'nope'" in res.stderr
