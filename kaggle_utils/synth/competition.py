"""A whole synthetic competition folder: train + held-out series, CSVs, segmentations and the ground truth.

The plan (who is positive, which modality, which DICOM quirks) is drawn first from the seed, then each series is
rendered from its own derived seed, so the output is byte-identical for the same arguments.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kaggle_utils.errors import KitError
from kaggle_utils.io import atomic_dir
from kaggle_utils.schema import (
    DICOM_MODALITY,
    ID_COL,
    LABEL_COLS,
    LOCALIZER_CSV_COLS,
    LOCATION_COLS,
    MODALITIES,
    MODALITY_FRACTIONS,
    SEXES,
    TRAIN_CSV_COLS,
)
from kaggle_utils.synth.dicom_write import series_disallowed_tags
from kaggle_utils.synth.series import derive_uid, make_series

# Aneurysms per location in the real training set (COMPETITION.md): the location distribution we draw from.
LOCATION_COUNTS: dict[str, int] = {
    "Anterior Communicating Artery": 376,
    "Left Supraclinoid Internal Carotid Artery": 343,
    "Right Middle Cerebral Artery": 304,
    "Right Supraclinoid Internal Carotid Artery": 287,
    "Left Middle Cerebral Artery": 225,
    "Other Posterior Circulation": 117,
    "Basilar Tip": 114,
    "Right Posterior Communicating Artery": 105,
    "Right Infraclinoid Internal Carotid Artery": 101,
    "Left Posterior Communicating Artery": 89,
    "Left Infraclinoid Internal Carotid Artery": 81,
    "Right Anterior Cerebral Artery": 58,
    "Left Anterior Cerebral Artery": 47,
}
POSITIVE_RATE = 0.43
TWO_ANEURYSM_RATE = 0.2  # of positive series (about 2,251 localizers over 1,862 positive series)
SEGMENTATION_RATE = 0.4  # of train series
# Slices relative to --n-slices (the CTA count): MR series are shorter, as in the real data.
SLICE_FACTOR: dict[str, float] = {"CTA": 1.0, "MRA": 1.0, "MRI T2": 0.75, "MRI T1post": 0.6}
# DICOM realities: rates (of eligible series) and the minimum count when quirk coverage is on.
QUIRK_RATES: dict[str, tuple[float, int]] = {
    "multiframe": (0.07, 3),  # of MR series; one per layout when covering
    "coronal": (0.02, 1),
    "sagittal": (0.015, 1),
    "monochrome1": (0.03, 1),  # of MR series
    "scout": (0.04, 1),
    "duplicate_slice": (0.02, 1),  # a second file at an existing slice position
    "oblique": (0.08, 1),  # image plane tilted 5-15 degrees about its row direction
    "descending": (0.3, 1),
    "no_spacing_between_slices": (0.2, 1),
}
SYNTAX_RATES: dict[str, float] = {"explicit": 0.70, "implicit": 0.08, "rle": 0.10, "jpegls": 0.06, "jpeg2000": 0.06}
INSTANCE_ORDER_RATES: dict[str, float] = {"sequential": 0.3, "reversed": 0.2, "shuffled": 0.5}
MULTIFRAME_LAYOUT_RATES: dict[str, float] = {"shared": 0.45, "perframe": 0.3, "bare": 0.25}


class SynthError(KitError, ValueError):
    """Bad arguments or an output folder the generator cannot use."""


@dataclass
class SeriesPlan:
    """Everything drawn for one series before rendering it."""

    split: str  # "train" | "test"
    index: int
    seed: list[int]
    series_uid: str
    modality: str
    locations: list[str]
    age: int
    sex: str
    plane: str = "axial"
    multiframe: str | None = None
    transfer_syntax: str = "explicit"
    pixel_signed: bool | None = None
    monochrome1: bool = False
    scout: bool = False
    duplicate_slice: bool = False
    tilt_deg: float = 0.0
    instance_order: str = "shuffled"
    descending: bool = False
    spacing_between_slices: bool = True
    segmentation: bool = False


# ---------------------------------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------------------------------
def _quota(fractions: dict[str, float], n: int, at_least_one: bool) -> dict[str, int]:
    """Integer counts summing to n, proportional to ``fractions`` (largest remainder), optionally >= 1 each."""
    names = list(fractions)
    raw = np.array([fractions[k] for k in names]) * n / sum(fractions.values())
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if at_least_one and n >= len(names):
        for i in range(len(names)):
            while counts[i] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] += 1
    return dict(zip(names, counts.tolist()))


def _pick(rng: np.random.Generator, eligible: list[int], rate: float, minimum: int, preferred: set[int],
          n_preferred: int | None = None) -> list[int]:
    """Indices drawn at ``rate`` (at least ``minimum``) from ``eligible``; the first ``n_preferred`` (default:
    ``minimum``) come from ``preferred`` where possible, the rest at random."""
    if not eligible:
        return []
    k = min(len(eligible), max(int(round(rate * len(eligible))), minimum))
    n_first = min(minimum if n_preferred is None else n_preferred, k)
    first_pool = [i for i in eligible if i in preferred] or list(eligible)
    first = [int(i) for i in rng.permutation(first_pool)[:n_first]]
    rest_pool = [i for i in eligible if i not in first]
    rest = [int(i) for i in rng.permutation(rest_pool)[: k - len(first)]]
    return first + rest


def _draw_locations(rng: np.random.Generator, n_aneurysms: int) -> list[str]:
    names = list(LOCATION_COUNTS)
    p = np.array([LOCATION_COUNTS[k] for k in names], float)
    picks = rng.choice(len(names), size=n_aneurysms, replace=False, p=p / p.sum())
    return [names[i] for i in picks]


def _split_plans(rng: np.random.Generator, split: str, n: int, seed: int, cover: bool) -> list[SeriesPlan]:
    """Modality mix, positives, aneurysm locations and demographics of one split."""
    quota = _quota(MODALITY_FRACTIONS, n, at_least_one=cover)
    modalities = [m for m in MODALITIES for _ in range(quota[m])]
    modalities = [modalities[i] for i in rng.permutation(n)]
    n_pos = int(round(POSITIVE_RATE * n))
    if n >= 2:
        n_pos = min(max(n_pos, 1), n - 1)
    positive = set(rng.permutation(n)[:n_pos].tolist())
    n_two = int(round(TWO_ANEURYSM_RATE * n_pos))
    if cover and n_pos >= 2:
        n_two = max(n_two, 1)
    two = set(rng.permutation(sorted(positive))[:n_two].tolist())
    plans = []
    split_code = 0 if split == "train" else 1
    for i in range(n):
        key = [int(seed), split_code, i]
        locations = _draw_locations(rng, (2 if i in two else 1) if i in positive else 0)
        age = int(np.clip(rng.normal(58, 14), 18, 89))
        sex = SEXES[0] if rng.random() < 0.65 else SEXES[1]
        plans.append(SeriesPlan(split, i, key, derive_uid("series", *key), modalities[i], locations, age, sex))
    return plans


def plan_competition(n_series: int, n_test: int, seed: int, cover_quirks: bool = True) -> list[SeriesPlan]:  # noqa: C901 - one draw per quirk, in a fixed order the seeds depend on
    """Draw every series' content and DICOM quirks. With ``cover_quirks`` each quirk occurs at least once (when
    an eligible series exists), so even a tiny competition exercises every loader path; at scale the rates rule."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
    plans = _split_plans(rng, "train", n_series, seed, cover_quirks) + _split_plans(rng, "test", n_test, seed,
                                                                                   cover_quirks)
    minimum = 1 if cover_quirks else 0
    idx = range(len(plans))
    train_pos = {i for i in idx if plans[i].split == "train" and plans[i].locations}
    train = {i for i in idx if plans[i].split == "train"}
    mr = [i for i in idx if DICOM_MODALITY[plans[i].modality] == "MR"]
    ct = [i for i in idx if DICOM_MODALITY[plans[i].modality] == "CT"]

    rate, cover_n = QUIRK_RATES["multiframe"]
    # One covering multi-frame series is a positive train series, so a localizer with a frame index 'f' exists.
    chosen = _pick(rng, mr, rate, cover_n if cover_quirks else 0, train_pos, n_preferred=minimum)
    layouts = list(MULTIFRAME_LAYOUT_RATES)
    for j, i in enumerate(chosen):
        covering = cover_quirks and j < len(layouts)
        plans[i].multiframe = layouts[j] if covering else str(
            rng.choice(layouts, p=list(MULTIFRAME_LAYOUT_RATES.values())))
    classic = [i for i in idx if plans[i].multiframe is None]
    taken: set[int] = set()
    for plane in ("coronal", "sagittal"):
        for i in _pick(rng, [i for i in classic if i not in taken], QUIRK_RATES[plane][0], minimum, train):
            plans[i].plane = plane
            taken.add(i)
    for i in _pick(rng, mr, QUIRK_RATES["monochrome1"][0], minimum, train):
        plans[i].monochrome1 = True
    for i in _pick(rng, classic, QUIRK_RATES["scout"][0], minimum, train):
        plans[i].scout = True
    for i in _pick(rng, classic, QUIRK_RATES["duplicate_slice"][0], minimum, train):
        plans[i].duplicate_slice = True
    geometric = [i for i in idx if plans[i].multiframe != "bare"]
    for i in _pick(rng, geometric, QUIRK_RATES["descending"][0], minimum, train):
        plans[i].descending = True
    for i in _pick(rng, geometric, QUIRK_RATES["oblique"][0], minimum, train):
        plans[i].tilt_deg = round(float(rng.uniform(5, 15) * rng.choice([-1, 1])), 2)
    for i in _pick(rng, classic, QUIRK_RATES["no_spacing_between_slices"][0], minimum, train):
        plans[i].spacing_between_slices = False

    syntaxes = list(SYNTAX_RATES)
    for p in plans:
        p.transfer_syntax = str(rng.choice(syntaxes, p=list(SYNTAX_RATES.values())))
        p.instance_order = str(rng.choice(list(INSTANCE_ORDER_RATES), p=list(INSTANCE_ORDER_RATES.values())))
        if DICOM_MODALITY[p.modality] == "CT":
            p.pixel_signed = bool(rng.integers(2))
    if cover_quirks:
        _ensure_each(rng, plans, classic, "transfer_syntax", syntaxes)
        _ensure_each(rng, plans, classic, "instance_order", list(INSTANCE_ORDER_RATES))
        _ensure_each(rng, plans, ct, "pixel_signed", [True, False])
    # No segmentation for a bare multi-frame series: without geometry tags its voxels cannot be put in world mm,
    # so a NIfTI in world mm could not be aligned with what any loader reconstructs.
    seg_eligible = sorted(i for i in train if plans[i].multiframe != "bare")
    for i in _pick(rng, seg_eligible, SEGMENTATION_RATE, minimum, train_pos):
        plans[i].segmentation = True
    return plans


def _ensure_each(rng: np.random.Generator, plans: list[SeriesPlan], eligible: list[int], attr: str, values) -> None:
    """Give every value of ``attr`` at least one eligible series, taking series whose value is over-represented."""
    for value in values:
        have = [i for i in eligible if getattr(plans[i], attr) == value]
        if have or not eligible:
            continue
        counts = {v: sum(getattr(plans[i], attr) == v for i in eligible) for v in values}
        donors = [i for i in eligible if counts[getattr(plans[i], attr)] > 1]
        if donors:
            setattr(plans[int(rng.choice(donors))], attr, value)


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------
def _render_one(args: tuple[SeriesPlan, str, int, int, str | None]) -> dict:
    """Worker: write one planned series (top-level so a process pool can run it)."""
    plan, series_root, image_size, n_slices, seg_dir = args
    truth = make_series(
        series_root, modality=plan.modality, image_size=image_size,
        n_slices=max(8, int(round(n_slices * SLICE_FACTOR[plan.modality]))), transfer_syntax=plan.transfer_syntax,
        plane=plan.plane, multiframe=plan.multiframe, seed=plan.seed, aneurysms=plan.locations,
        pixel_signed=plan.pixel_signed, monochrome1=plan.monochrome1, scout=plan.scout,
        duplicate_slice=plan.duplicate_slice, tilt_deg=plan.tilt_deg,
        instance_order=plan.instance_order, descending=plan.descending,
        spacing_between_slices=plan.spacing_between_slices, segmentation_dir=seg_dir if plan.segmentation else None,
        series_uid=plan.series_uid)
    series_dir = truth.pop("path")
    if plan.split == "test":  # the competition's test files are stripped to an allowlist: ours must match it
        bad = series_disallowed_tags(series_dir)
        if bad:
            name, tags = next(iter(bad.items()))
            raise SynthError(f"test series {plan.series_uid}: {len(bad)} file(s) carry tags outside the test-set "
                             f"allowlist (dicom_write.ALLOWED_TAGS), e.g. {name}: {tags}")
    return truth


def _csv_text(header, rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _label_row(plan: SeriesPlan) -> list:
    present = [int(loc in plan.locations) for loc in LOCATION_COLS]
    return [plan.series_uid, plan.age, plan.sex, plan.modality, *present, int(bool(plan.locations))]


def localizer_coordinates(x: float, y: float, frame: int | None) -> str:
    """The competition's dict-string: "{'x': 258.36, 'y': 261.36}", plus 'f' (0-based frame) for multi-frame."""
    point = {"x": round(float(x), 2), "y": round(float(y), 2)}
    if frame is not None:
        point["f"] = int(frame)
    return str(point)


def _check_args(out: Path, n_series, n_test, image_size, n_slices, overwrite: bool) -> None:
    """Bad input -> one-line SynthError before anything is written."""
    for name, value, low in (("n_series", n_series, 1), ("n_test", n_test, 0), ("image_size", image_size, 32),
                             ("n_slices", n_slices, 8)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise SynthError(f"{name} must be an integer >= {low} (got {value!r})")
    if not out.parent.is_dir():
        raise SynthError(f"cannot create {out}: parent folder {out.parent} does not exist")
    if out.exists() and not out.is_dir():
        raise SynthError(f"cannot create {out}: a file with that name exists")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SynthError(f"{out} already exists and is not empty (pass overwrite / --overwrite to replace it)")
    try:  # probe: an unwritable parent fails here, before any rendering
        probe = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent))
    except OSError as exc:
        raise SynthError(f"cannot write into {out.parent}: {exc.strerror or exc}") from None
    shutil.rmtree(probe)


def make_competition(out: str | Path, n_series: int, seed: int, n_test: int = 0, *, image_size: int = 128,
                     n_slices: int = 64, overwrite: bool = False, cover_quirks: bool = True, workers: int = 1,
                     progress: bool = False) -> Path:
    """Write a synthetic competition to ``out`` (atomically: a temporary sibling renamed at the end) and return it.

    ``n_series`` train series (train.csv, localizers, segmentations for ~40%) plus ``n_test`` held-out series under
    ``kaggle_evaluation/`` (labels in test_labels.csv). ``n_slices`` is the CTA slice count; MR series are shorter.
    """
    out = Path(out).expanduser()
    _check_args(out, n_series, n_test, image_size, n_slices, overwrite)
    plans = plan_competition(int(n_series), int(n_test), int(seed), cover_quirks)
    with atomic_dir(out, overwrite=out.exists()) as tmp:
        train_root, test_root, seg_root = tmp / "series", tmp / "kaggle_evaluation" / "series", tmp / "segmentations"
        for d in (train_root, test_root, seg_root):
            d.mkdir(parents=True)
        jobs = [(p, str(train_root if p.split == "train" else test_root), image_size, n_slices, str(seg_root))
                for p in plans]
        truths = _run_jobs(jobs, workers, progress)
        _write_tables(tmp, plans, truths, dict(seed=int(seed), n_series=int(n_series), n_test=int(n_test),
                                               image_size=int(image_size), n_slices=int(n_slices),
                                               cover_quirks=bool(cover_quirks)))
    return out


def _run_jobs(jobs: list, workers: int, progress: bool) -> list[dict]:
    """Render every series, in order, on ``workers`` processes (results do not depend on the worker count)."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="synth series", unit="series")
    results = []
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for truth in pool.map(_render_one, jobs):
                results.append(truth)
                if bar is not None:
                    bar.update()
    else:
        for job in jobs:
            results.append(_render_one(job))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return results


def _write_tables(root: Path, plans: list[SeriesPlan], truths: list[dict], settings: dict) -> None:
    """train.csv, train_localizers.csv, kaggle_evaluation/test.csv, test_labels.csv and synth_truth.json."""
    train = [p for p in plans if p.split == "train"]
    test = [p for p in plans if p.split == "test"]
    (root / "train.csv").write_text(_csv_text(TRAIN_CSV_COLS, [_label_row(p) for p in train]))
    (root / "test_labels.csv").write_text(_csv_text(TRAIN_CSV_COLS, [_label_row(p) for p in test]))
    (root / "kaggle_evaluation" / "test.csv").write_text(_csv_text([ID_COL], [[p.series_uid] for p in test]))
    loc_rows = []
    series_truth = {}
    for plan, truth in zip(plans, truths):
        if plan.split == "train":
            for an in truth["aneurysms"]:
                loc_rows.append([plan.series_uid, an["sop_uid"], localizer_coordinates(an["x"], an["y"], an["frame"]),
                                 an["location"]])
        folder = "series" if plan.split == "train" else "kaggle_evaluation/series"
        series_truth[plan.series_uid] = {"split": plan.split, "folder": f"{folder}/{plan.series_uid}",
                                         "age": plan.age, "sex": plan.sex, "seed": plan.seed, **truth}
    (root / "train_localizers.csv").write_text(_csv_text(LOCALIZER_CSV_COLS, loc_rows))
    # version 2: the head's shape and the CoW's place in it follow the MNI152 head (see phantom.BRAIN_CENTRE).
    truth_doc = {"generator": "kaggle_utils.synth", "version": 2, **settings,
                 "label_cols": list(LABEL_COLS), "series": series_truth}
    (root / "synth_truth.json").write_text(json.dumps(truth_doc, indent=1, sort_keys=False) + "\n")


def summarize(root: str | Path) -> dict:
    """Counts a user wants after generation: per split and modality, positives, per location, quirks, disk size."""
    root = Path(root)
    doc = json.loads((root / "synth_truth.json").read_text())
    series = doc["series"].values()
    summary = {"train": sum(s["split"] == "train" for s in series), "test": sum(s["split"] == "test" for s in series),
               "modality": {m: sum(s["modality"] == m for s in series) for m in MODALITIES},
               "positive": sum(bool(s["aneurysms"]) for s in series),
               "aneurysms": sum(len(s["aneurysms"]) for s in series),
               "location": {c: sum(any(a["location"] == c for a in s["aneurysms"]) for s in series)
                            for c in LOCATION_COLS},
               "segmentations": sum(s["segmentation"] for s in series)}
    quirks: dict[str, int] = {}
    for s in series:
        for q in s["quirks"]:
            quirks[q] = quirks.get(q, 0) + 1
    summary["quirks"] = dict(sorted(quirks.items()))
    summary["files"] = sum(len(files) for _, _, files in os.walk(root))
    summary["bytes"] = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return summary
