"""Competition constants: label columns, ID column, modalities, vessel-label mapping, left/right pairing.

Everything that spells a column name or a label order lives here so the rest of the kit never retypes it.
"""

from __future__ import annotations

import numpy as np

COMPETITION_SLUG = "rsna-intracranial-aneurysm-detection"
ID_COL = "SeriesInstanceUID"
SOP_COL = "SOPInstanceUID"

LOCATION_COLS: tuple[str, ...] = (
    "Left Infraclinoid Internal Carotid Artery",
    "Right Infraclinoid Internal Carotid Artery",
    "Left Supraclinoid Internal Carotid Artery",
    "Right Supraclinoid Internal Carotid Artery",
    "Left Middle Cerebral Artery",
    "Right Middle Cerebral Artery",
    "Anterior Communicating Artery",
    "Left Anterior Cerebral Artery",
    "Right Anterior Cerebral Artery",
    "Left Posterior Communicating Artery",
    "Right Posterior Communicating Artery",
    "Basilar Tip",
    "Other Posterior Circulation",
)
PRESENT_COL = "Aneurysm Present"
# The submission's 14 columns, in the order the official scorer expects.
LABEL_COLS: tuple[str, ...] = (*LOCATION_COLS, PRESENT_COL)
N_LOCATIONS = len(LOCATION_COLS)
N_LABELS = len(LABEL_COLS)
# Official weights: 13 for Aneurysm Present, 1 for each location.
LABEL_WEIGHTS: tuple[float, ...] = (1.0,) * N_LOCATIONS + (13.0,)

TRAIN_CSV_COLS: tuple[str, ...] = (ID_COL, "PatientAge", "PatientSex", "Modality", *LABEL_COLS)
LOCALIZER_CSV_COLS: tuple[str, ...] = (ID_COL, SOP_COL, "coordinates", "location")

# train.csv's four-way modality; the DICOM Modality tag only says CT or MR.
MODALITIES: tuple[str, ...] = ("CTA", "MRA", "MRI T2", "MRI T1post")
MODALITY_FRACTIONS: dict[str, float] = {"CTA": 0.415, "MRA": 0.288, "MRI T2": 0.226, "MRI T1post": 0.070}
DICOM_MODALITY: dict[str, str] = {"CTA": "CT", "MRA": "MR", "MRI T2": "MR", "MRI T1post": "MR"}
SEXES: tuple[str, ...] = ("Female", "Male")

# Values in segmentations/<uid>_cowseg.nii (NOT the train.csv order) -> location column.
COWSEG_LABEL_TO_COL: dict[int, str] = {
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
COL_TO_COWSEG_LABEL: dict[str, int] = {col: value for value, col in COWSEG_LABEL_TO_COL.items()}
# cowseg value -> index into LOCATION_COLS (0 = background maps to -1).
COWSEG_TO_LOCATION_INDEX = np.array(
    [-1] + [LOCATION_COLS.index(COWSEG_LABEL_TO_COL[v]) for v in range(1, N_LOCATIONS + 1)], dtype=np.int64
)


def _mirror_name(col: str) -> str:
    if col.startswith("Left "):
        return "Right " + col[len("Left ") :]
    if col.startswith("Right "):
        return "Left " + col[len("Right ") :]
    return col


# LR_SWAP_PERM[i] is the label index that label i becomes after a left/right flip of the image:
# flipped_labels = labels[..., LR_SWAP_PERM]. Midline labels map to themselves.
LR_SWAP_PERM: tuple[int, ...] = tuple(LABEL_COLS.index(_mirror_name(c)) for c in LABEL_COLS)
LR_SWAP_PERM_LOCATIONS: tuple[int, ...] = LR_SWAP_PERM[:N_LOCATIONS]
# Same pairing in cowseg label values (index = value): 3<->4, 5<->6, 7<->8, 9<->10, 11<->12.
COWSEG_LR_SWAP = np.array(
    [0] + [COL_TO_COWSEG_LABEL[_mirror_name(COWSEG_LABEL_TO_COL[v])] for v in range(1, N_LOCATIONS + 1)],
    dtype=np.int64,
)

