"""The synthetic artery sites must stay inside the real CoW landmark envelope (MNI152 table, real heads)."""

import numpy as np

from kaggle_utils.schema import LOCATION_COLS
from kaggle_utils.synth import phantom

# Envelope around the CoW centre (LPS-like head frame: +x left, +y posterior, +z superior), mm, from the landmark
# table in ../shared/real_anatomy/mni152 and the real-anatomy README: +-44 LR, 30 anterior, 24 posterior,
# 30 down (basilar trunk / vertebrals; 18 for the cavernous ICA), 10 up.
_LR, _ANT, _POST, _DOWN, _UP = 44.0, 30.0, 24.0, 30.0, 10.0


def _sites_and_centre():
    vessels = phantom.build_vessels(np.random.default_rng(0), [])
    main = {}
    for v in vessels:
        main.setdefault(v.location, v)
    centre = np.mean([main["Anterior Communicating Artery"].points.mean(0), main["Basilar Tip"].points[-1],
                      main["Left Supraclinoid Internal Carotid Artery"].points[-1],
                      main["Right Supraclinoid Internal Carotid Artery"].points[-1]], axis=0)
    sites = {}
    for col in LOCATION_COLS:
        lo, hi = phantom._ANEURYSM_ARC[col.replace("Left ", "").replace("Right ", "")]
        sites[col] = np.array([phantom._arc_point(main[col], f)[0] for f in np.linspace(lo, hi, 21)]) - centre
    return sites, centre


def test_all_13_locations_inside_landmark_envelope():
    sites, _ = _sites_and_centre()
    assert set(sites) == set(LOCATION_COLS)
    for col, p in sites.items():
        assert np.all(np.abs(p[:, 0]) <= _LR), col
        assert np.all(p[:, 1] >= -_ANT) and np.all(p[:, 1] <= _POST), col
        assert np.all(p[:, 2] >= -_DOWN) and np.all(p[:, 2] <= _UP), col
    # MCA sites reach the real MCA width (landmarks +-37-44 mm), not a narrower synthetic one.
    assert sites["Left Middle Cerebral Artery"][:, 0].max() >= 37.0
    assert sites["Right Middle Cerebral Artery"][:, 0].min() <= -37.0
    # Posterior circulation reaches behind and below the CoW like the PCA / basilar landmarks.
    assert sites["Other Posterior Circulation"][:, 1].max() >= 18.0


def test_cow_depth_below_vertex_and_brain_centre():
    _, centre = _sites_and_centre()
    vertex_z = phantom.BRAIN_CENTRE[2] + phantom.BRAIN_AXES[2] + phantom.SCALP_SHELL_MM
    assert 105.0 <= vertex_z - centre[2] <= 112.0
    assert 25.0 <= phantom.BRAIN_CENTRE[2] - centre[2] <= 35.0


def _head_mask(image: np.ndarray) -> np.ndarray:
    """Largest hole-filled component above a fifth of the 99th percentile: the head with its scalp."""
    from scipy import ndimage

    mask = ndimage.binary_fill_holes(image > 0.2 * np.percentile(image, 99))
    lab, n = ndimage.label(mask)
    return lab == 1 + int(np.argmax(ndimage.sum(mask, lab, range(1, n + 1))))


def _extents_from_cow(mask: np.ndarray, origin_zyx: np.ndarray, spacing: float, cow_zyx: np.ndarray) -> dict:
    """Scalp top above the CoW, and at the CoW's level (10 mm below to 30 mm above) how far the head reaches in
    front, behind and to each side, mm."""
    pts = np.argwhere(mask) * spacing + origin_zyx - cow_zyx
    level = pts[(pts[:, 0] > -10) & (pts[:, 0] < 30)]
    return {"top": pts[:, 0].max(), "front": -level[:, 1].min(), "back": level[:, 1].max(),
            "half_width": (level[:, 2].max() - level[:, 2].min()) / 2}


def test_cow_position_in_the_head_matches_the_mni152_template():
    """Render the synthetic head on the shipped MNI152 4 mm template's grid, its CoW on the template's CoW, and
    compare the heads. Generator version 1 ended 16 mm short behind the CoW and 12 mm narrow a side (Dice 0.78)."""
    from kaggle_utils.locator import load_template

    tpl = load_template()
    image, origin, spacing, cow = tpl.image, tpl.origin, tpl.spacing, tpl.cow_lps  # LPS (z, y, x)
    # Head frame -> LPS (x, y, z): identity rotation and scale, the head frame's origin (its CoW) on the template's.
    pose = phantom.Pose(np.eye(3), 1.0, cow[::-1].copy())
    grid = phantom.Grid(origin[::-1].copy(), np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]),
                        (spacing, spacing), spacing, image.shape)  # voxel (k, r, c) = canonical (z, y, x)
    subject = phantom.Phantom(phantom.build_vessels(np.random.default_rng(0), []), [], pose)
    synthetic, _ = phantom.render(grid, subject, "MRI T1post", np.random.default_rng(0))

    real_mask, synth_mask = _head_mask(image), _head_mask(synthetic)
    real = _extents_from_cow(real_mask, origin, spacing, cow)
    synth = _extents_from_cow(synth_mask, origin, spacing, cow)
    for key in ("top", "front", "back"):
        assert abs(synth[key] - real[key]) <= 8.0, (key, synth[key], real[key])
    # The template's head touches its grid's left and right faces, so its width is a lower bound.
    assert synth["half_width"] >= 0.9 * real["half_width"], (synth["half_width"], real["half_width"])
    dice = 2 * (real_mask & synth_mask).sum() / (real_mask.sum() + synth_mask.sum())
    assert dice >= 0.8, dice
