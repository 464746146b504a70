"""The preprocess stage on the tiny synthetic competition: layout, labels, ROI coverage, resume after SIGKILL, shards,
failures recorded, refusal to mix caches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import ndimage

from kaggle_utils.cache import (
    CACHE_VERSION,
    MANIFEST_SCHEMA,
    CacheError,
    build_cache,
    ensure_cache_info,
    format_summary,
    load_cache_entry,
    merge_shard_folders,
    parse_shard,
    part_files,
    read_cache_info,
    read_manifest,
    rows_to_frame,
    select_shard,
    write_npz,
)
from kaggle_utils.config import DataConfig, config_hash
from kaggle_utils.schema import ID_COL, LABEL_COLS

# Only data-independent columns are compared between runs (timings differ).
COMPARE = [c for c in MANIFEST_SCHEMA if c != "seconds"]


@pytest.fixture(scope="module")
def cache(tiny_competition, tmp_path_factory):
    """The tiny competition cached with the default DataConfig (anatomy locator), and the summary of a rerun over it
    (which must find every series done)."""
    out = tmp_path_factory.mktemp("default_cache") / "cache"
    build_cache(tiny_competition, out, DataConfig(), workers=1, progress=False)
    return out, build_cache(tiny_competition, out, DataConfig(), workers=1, progress=False)


def test_layout_manifest_and_labels(cache, tiny_competition):
    out, summary = cache
    train = pl.read_csv(tiny_competition / "train.csv", schema_overrides={ID_COL: pl.Utf8})
    manifest = read_manifest(out)
    assert set(manifest.columns) >= set(MANIFEST_SCHEMA)
    assert manifest.height == train.height == summary.selected == summary.skipped and summary.done == 0
    assert manifest["status"].to_list() == ["ok"] * train.height, manifest.select(ID_COL, "error")
    info = read_cache_info(out)
    assert info["cache_version"] == CACHE_VERSION and info["config_hash"] == config_hash(DataConfig())
    assert set(manifest["config_hash"]) == {info["config_hash"]}
    labels = pl.read_csv(out / "train.csv", schema_overrides={ID_COL: pl.Utf8})
    assert sorted(labels[ID_COL]) == sorted(train[ID_COL])
    assert list(labels.columns[-len(LABEL_COLS) :]) == list(LABEL_COLS)
    cfg = DataConfig()
    for row in manifest.iter_rows(named=True):
        entry = load_cache_entry(out, row[ID_COL])
        assert entry["image"].dtype == np.uint8 and entry["image"].shape == (len(cfg.ct_windows), *cfg.out_shape)
        assert list(entry["image"].shape) == row["shape"] and entry["affine"].shape == (4, 4)
        assert (out / row["file"]).stat().st_size == row["nbytes"]
        has_seg = (tiny_competition / "segmentations" / f"{row[ID_COL]}_cowseg.nii").is_file()
        assert row["has_cowseg"] == has_seg == ("cowseg" in entry)
        if has_seg:
            assert entry["cowseg"].shape == tuple(cfg.out_shape) and entry["cowseg"].max() > 0
    assert "projected cache size for the full 4,348-series dataset" in format_summary(summary)
    assert not list(out.rglob(".*.tmp*"))  # no temporary file left behind


def test_localizer_points_and_truth_centres_fall_inside_the_roi(cache, tiny_competition):
    """ROI coverage on the fixture: every aneurysm of the ground truth lies inside the cached crop."""
    out, _ = cache
    truth = json.loads((tiny_competition / "synth_truth.json").read_text())["series"]
    localizers = pl.read_csv(tiny_competition / "train_localizers.csv", infer_schema=False)
    manifest = read_manifest(out)
    n_inside = n_total = 0
    for row in manifest.iter_rows(named=True):
        uid = row[ID_COL]
        entry = load_cache_entry(out, uid)
        inv = np.linalg.inv(entry["affine"])
        series_truth = next(t for t in truth.values() if t["series_uid"] == uid)
        for an in series_truth["aneurysms"]:
            v = inv[:3, :3] @ np.array(an["centre_lps"]) + inv[:3, 3]
            n_total += 1
            n_inside += bool(np.all((v >= -0.5) & (v <= np.array(row["shape"][1:]) - 0.5)))
        # Every localizer row became a point in cache voxels, next to the truth centre of its location.
        n_rows = localizers.filter(pl.col(ID_COL) == uid).height
        assert len(row["points"]) == n_rows and row["points_missing"] == 0
        for p in row["points"]:
            centres = [an["centre_lps"] for an in series_truth["aneurysms"] if an["location"] == p["location"]]
            lps = entry["affine"][:3, :3] @ [p["z"], p["y"], p["x"]] + entry["affine"][:3, 3]
            assert min(np.linalg.norm(lps - np.array(c)) for c in centres) < 4.0  # mm; the sac radius scale
    assert n_total > 0
    print(f"ROI coverage on the tiny fixture: {n_inside}/{n_total}")
    assert n_inside == n_total


def test_cowseg_labels_align_with_the_vessels(cache, tiny_competition):
    """Cached vessel labels sit on the vessels of the cached image: bright in CTA/MRA/T1post, flow voids in T2."""
    out, _ = cache
    series = json.loads((tiny_competition / "synth_truth.json").read_text())["series"]
    truth = {t["series_uid"]: t for t in series.values()}
    manifest = read_manifest(out).filter(pl.col("has_cowseg"))
    assert manifest.height > 0
    for uid in manifest[ID_COL]:
        entry = load_cache_entry(out, uid)
        seg, vessel = entry["cowseg"] > 0, entry["image"][0].astype(np.float64)
        assert seg.sum() > 100, uid
        # Against the tissue right around the vessels (a 3-voxel shell), not the whole box: the anatomy-shaped box
        # holds dark background at its sides, which would pull a whole-box mean towards a T2 flow void.
        shell = ndimage.binary_dilation(seg, iterations=3) & ~seg
        contrast = vessel[seg].mean() - vessel[shell].mean()
        sign = -1.0 if truth[uid]["modality"] == "MRI T2" else 1.0
        assert sign * contrast > 20.0, (uid, truth[uid]["modality"], truth[uid]["quirks"], contrast)


def test_resume_after_sigkill_equals_an_uninterrupted_run(cache, tiny_competition, tmp_path):
    ref_out, _ = cache
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "kaggle_utils", "preprocess", "--data-dir", str(tiny_competition), "--out", str(out),
           "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(part_files(out)) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.stem for p in part_files(out)}
    assert 3 <= len(done_before) < 10, "the kill must land mid-run"
    # Every finished part has its complete array file; nothing half-written sits under a final name.
    for uid in done_before:
        assert load_cache_entry(out, uid)["image"].dtype == np.uint8
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done_before)} already done" in resumed.stdout and "projected cache size" in resumed.stdout
    got, ref = read_manifest(out).select(COMPARE), read_manifest(ref_out).select(COMPARE)
    assert got.equals(ref)
    for uid in ref[ID_COL]:
        a, b = load_cache_entry(out, uid), load_cache_entry(ref_out, uid)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not list(out.rglob(".*.tmp*"))


def test_shards_merge_into_one_manifest(cache, tiny_competition, tmp_path):
    ref = read_manifest(cache[0]).select(COMPARE)
    dirs = [tmp_path / "s0", tmp_path / "s1"]
    for i, d in enumerate(dirs):
        build_cache(tiny_competition, d, DataConfig(), limit=2, shard=(i, 2), progress=False)
    merged = read_manifest(dirs)
    assert merged.height == 4 and merged[ID_COL].n_unique() == 4
    same_rows = ref.filter(pl.col(ID_COL).is_in(merged[ID_COL].to_list())).drop("file")
    assert merged.select(COMPARE).drop("file").equals(same_rows)
    assert all(Path(f).is_file() for f in merged["file"])  # absolute paths into the shard folders
    out = tmp_path / "merged"
    merge_shard_folders(dirs, out)
    again = read_manifest(out)
    assert again.height == 4 and all(Path(f).is_file() for f in again["file"])
    assert pl.read_csv(out / "train.csv", schema_overrides={ID_COL: pl.Utf8}).height == 4
    assert not (out / "series").exists()  # the merged folder holds no arrays: every entry is read from its shard
    for uid in again[ID_COL]:
        a, b = load_cache_entry(out, uid), load_cache_entry(cache[0], uid)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    from kaggle_utils.train.dataset import load_image, open_training_cache

    training = open_training_cache(out)  # training resolves the same files (cache.entry_path)
    assert len(training.files) == 4
    for uid, path in zip(training.uids, training.files):
        assert np.array_equal(load_image(path), load_cache_entry(cache[0], uid)["image"])


def test_load_cache_entry_reads_the_file_its_manifest_row_names(tmp_path):
    """A hand-made merged cache: entries in two other folders under names that are not ``series/<uid>.npz``, one
    relative and one absolute path; each must come back with its own array, a missing or failed one with its uid."""
    out = tmp_path / "merged"
    (out / "elsewhere").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    ensure_cache_info(out, DataConfig())
    images = {f"uid{i}": np.full((2, 3, 4, 5), i + 1, np.uint8) for i in range(2)}
    files = {"uid0": str((tmp_path / "a" / "shard_a.npz").resolve()), "uid1": "elsewhere/shard_b.npz"}
    for uid, file in files.items():
        target = Path(file) if Path(file).is_absolute() else out / file
        write_npz(target, {"image": images[uid], "affine": np.eye(4)})
    info_hash = read_cache_info(out)["config_hash"]
    rows = [{**{k: None for k in MANIFEST_SCHEMA}, ID_COL: uid, "status": "ok", "file": file,
             "cache_version": CACHE_VERSION, "config_hash": info_hash} for uid, file in files.items()]
    rows.append({**rows[0], ID_COL: "bad", "status": "error", "file": None, "error": "SeriesError: no pixels"})
    rows_to_frame(rows).write_parquet(out / "manifest.parquet")
    for uid, image in images.items():
        assert np.array_equal(load_cache_entry(out, uid)["image"], image)
    manifest = read_manifest(out)
    assert np.array_equal(load_cache_entry(out, "uid1", manifest)["image"], images["uid1"])
    with pytest.raises(CacheError, match="bad.*no pixels"):
        load_cache_entry(out, "bad")
    with pytest.raises(CacheError, match="missing.*not in the manifest"):
        load_cache_entry(out, "missing")
    (out / "elsewhere" / "shard_b.npz").unlink()
    with pytest.raises(CacheError, match="uid1.*shard_b.npz"):
        load_cache_entry(out, "uid1")


def test_shard_selection_is_a_deterministic_partition():
    uids = [f"u{i:02d}" for i in range(11)]
    parts = [select_shard(uids, (i, 3), None) for i in range(3)]
    assert sorted(sum(parts, [])) == uids and all(abs(len(p) - 11 / 3) < 1 for p in parts)
    assert select_shard(uids, (1, 3), 2) == ["u01", "u04"]
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) == (0, 1)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(CacheError):
            parse_shard(bad)


def test_failing_series_are_recorded_not_fatal(tmp_path):
    data = tmp_path / "data"
    (data / "series" / "garbage").mkdir(parents=True)
    (data / "series" / "garbage" / "x.dcm").write_bytes(b"not a dicom file at all")
    (data / "series" / "empty").mkdir()
    pl.DataFrame({ID_COL: ["empty", "garbage", "missing"]}).write_csv(data / "train.csv")
    out = tmp_path / "cache"
    summary = build_cache(data, out, DataConfig(), progress=False)
    manifest = read_manifest(out)
    assert manifest["status"].to_list() == ["error"] * 3 and summary.status["error"] == 3
    errors = dict(zip(manifest[ID_COL], manifest["error"]))
    assert "empty" in errors["empty"] and "SeriesError" in errors["garbage"]
    assert "does not exist" in errors["missing"] and not summary.unexpected
    # A rerun skips recorded failures unless asked to retry them.
    assert build_cache(data, out, DataConfig(), progress=False).skipped == 3
    assert build_cache(data, out, DataConfig(), retry_errors=True, progress=False).done == 3


def test_refuses_to_mix_cache_versions_and_configs(tmp_path):
    ensure_cache_info(tmp_path, DataConfig())
    other = DataConfig(out_shape=(16, 64, 64))
    with pytest.raises(CacheError) as err:
        ensure_cache_info(tmp_path, other)
    assert config_hash(DataConfig()) in str(err.value) and config_hash(other) in str(err.value)
    assert "out_shape" in str(err.value)
    second = tmp_path / "b"
    second.mkdir()
    ensure_cache_info(second, other)
    with pytest.raises(CacheError, match="cannot mix caches"):
        read_manifest([tmp_path, second])
    with pytest.raises(CacheError, match="not a preprocessed cache"):
        read_manifest(tmp_path / "nowhere")


def test_cli_errors_are_one_line(tmp_path):
    env = {**os.environ}
    res = subprocess.run([sys.executable, "-m", "kaggle_utils", "preprocess", "--data-dir", str(tmp_path / "no"),
                          "--out", str(tmp_path / "c")], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2 and res.stderr.strip().startswith("error:") and "does not exist" in res.stderr


def test_an_unreadable_cowseg_is_a_note_not_a_lost_series(tiny_competition, tmp_path):
    import shutil

    uid = sorted(p.name for p in (tiny_competition / "series").iterdir())[0]
    data = tmp_path / "data"
    shutil.copytree(tiny_competition / "series" / uid, data / "series" / uid)
    (data / "segmentations").mkdir()
    (data / "segmentations" / f"{uid}_cowseg.nii").write_bytes(b"garbage")
    out = tmp_path / "cache"
    build_cache(data, out, DataConfig(), progress=False)
    row = read_manifest(out).row(0, named=True)
    assert row["status"] == "ok" and not row["has_cowseg"]
    assert any(n.startswith("cowseg not cached") and "cannot read" in n for n in row["notes"])
    assert "cowseg" not in load_cache_entry(out, uid)


def test_default_cache_is_placed_by_the_anatomy_locator(cache):
    out, _ = cache
    ok = read_manifest(out, ok_only=True)
    methods = set(ok["roi_method"])
    assert methods <= {"registration", "vessels", "fallback:heuristic"} and "registration" in methods, methods
    assert ok.filter(pl.col("roi_method") == "registration")["roi_confidence"].min() >= DataConfig().locator_min_dice
