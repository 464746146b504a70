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
