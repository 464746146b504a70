"""A learnable head phantom: skull, brain, CSF and the arterial tree around the Circle of Willis, rendered with
partial volume onto any DICOM-style voxel grid, in any of the four competition modalities.

Coordinates: the "head frame" is patient LPS millimetres (x -> Left, y -> Posterior, z -> Superior) with its origin
at the centre of the Circle of Willis of an average head. A per-series pose (small rotation, translation, scale) maps
the head frame into scanner LPS world coordinates. Everything is analytic (ellipsoids, tapered capsules, spheres),
evaluated with numpy broadcasting: no per-voxel Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kaggle_utils.schema import COL_TO_COWSEG_LABEL, LOCATION_COLS

# ---------------------------------------------------------------------------------------------------------------------
# Anatomy template (head frame, mm). Left-side vessels are listed once and mirrored (x -> -x) for the right side.
# Each entry: (location column without side, polyline points, radius at first point, radius at last point).
# ---------------------------------------------------------------------------------------------------------------------
_LEFT_VESSELS: tuple[tuple[str, tuple[tuple[float, float, float], ...], float, float], ...] = (
    # Petrous -> cavernous -> clinoid: rises from the skull base, runs forwards in the cavernous sinus, turns up.
    ("Infraclinoid Internal Carotid Artery",
     ((15, 4, -52), (17, 2, -38), (18, -3, -24), (17, -9, -15), (15, -9, -7), (14, -4, -3)), 2.4, 2.1),
    # Supraclinoid ICA up to the terminus where MCA and ACA split.
    ("Supraclinoid Internal Carotid Artery", ((14, -4, -3), (13.5, -1, 2), (12.5, 0, 6)), 2.0, 1.8),
    # M1 runs laterally to the bifurcation near +-37 mm, M2 turns up in the Sylvian fissure near +-43 mm
    # (MNI152 landmark table: bifurcation 3 mm below, M2 10 mm above the CoW centre).
    ("Middle Cerebral Artery",
     ((12.5, 0, 6), (20, -2, 6), (29, -4, 5), (37, -6, 3), (41, -3, 9), (43.5, 2, 15), (44, 5, 22)), 1.6, 1.1),
    # A1 goes medially and forwards to the ACom, A2 rises anterior-superior along the midline.
    ("Anterior Cerebral Artery",
     ((12.5, 0, 6), (8, -7, 9), (2, -14, 11), (2.5, -20, 18), (3, -26, 30), (3, -24, 44), (3, -14, 56)), 1.3, 0.9),
    # PCom runs backwards from the supraclinoid ICA to the PCA.
    ("Posterior Communicating Artery", ((13.5, -1, 2), (12, 6, 0), (10, 12, -1)), 0.8, 0.8),
    # PCA (P1 from the basilar tip, P2 around the midbrain).
    ("Other Posterior Circulation",
     ((0, 14, -2), (5, 12, -2), (10, 12, -1), (16, 17, 1), (22, 26, 4), (26, 38, 8), (27, 52, 12)), 1.2, 0.9),
    # Superior cerebellar artery.
    ("Other Posterior Circulation", ((0.5, 15, -7), (7, 16, -8), (14, 20, -8), (19, 28, -6)), 0.8, 0.7),
    # Vertebral artery joining the basilar at the midline.
    ("Other Posterior Circulation", ((10, 26, -62), (8, 24, -50), (4, 20, -41), (0.5, 18, -35)), 1.7, 1.6),
)
_MIDLINE_VESSELS: tuple[tuple[str, tuple[tuple[float, float, float], ...], float, float], ...] = (
    ("Other Posterior Circulation", ((0, 18, -35), (0, 17, -20), (0, 15, -8)), 1.8, 1.6),  # basilar trunk
    ("Basilar Tip", ((0, 15, -8), (0, 14.5, -4.5), (0, 14, -2)), 1.6, 1.5),
    ("Anterior Communicating Artery", ((-2, -14, 11), (2, -14, 11)), 0.9, 0.9),
)
# Where along a location's main vessel (fraction of its arc length) aneurysms sit: bifurcations and junctions.
_ANEURYSM_ARC: dict[str, tuple[float, float]] = {
    "Infraclinoid Internal Carotid Artery": (0.55, 0.95),  # cavernous / clinoid part, not the petrous bone
    "Supraclinoid Internal Carotid Artery": (0.0, 1.0),
    "Middle Cerebral Artery": (0.08, 0.75),  # M1 to the M2 landmark
    "Anterior Cerebral Artery": (0.2, 0.33),  # A1 and proximal A2 (<= 10 mm above the CoW)
    "Posterior Communicating Artery": (0.0, 0.35),
    "Other Posterior Circulation": (0.1, 0.47),  # P1-P2, within 24 mm behind the CoW
    "Basilar Tip": (0.8, 1.0),
    "Anterior Communicating Artery": (0.3, 0.7),
}

# Head tissues (head frame, mm): brain ellipsoid; skull, CSF and scalp are shells around it.
# Real heads (MNI152, real T1post): the CoW lies ~30 mm below the brain's centre and ~105-112 mm below the vertex.
# Generator version 2: the head is longer and wider and reaches further behind the CoW, as the MNI152 head does
# (scalp ~83-87 mm in front of the CoW, ~121 mm behind it, >= 84 mm a side; tests/test_synth_anatomy.py). Version 1
# (centre y 8, axes 63 x 80) ended 16 mm short behind the CoW and 12 mm narrow a side.
BRAIN_CENTRE = np.array([0.0, 15.5, 35.0])
BRAIN_AXES = np.array([70.0, 87.5, 64.0])
CSF_SHELL_MM = 2.0
SKULL_SHELL_MM = 8.0  # outer skull surface offset from the brain surface
SCALP_SHELL_MM = 13.0
# (centre, semi-axes) of extra CSF spaces: lateral ventricles and the basal (suprasellar) cistern around the circle.
_CSF_BLOBS = (
    ((9.0, 6.0, 51.0), (6.0, 20.0, 9.0)),
    ((-9.0, 6.0, 51.0), (6.0, 20.0, 9.0)),
    ((0.0, 2.0, 0.0), (24.0, 20.0, 9.0)),
)
# (centre, semi-axes) of bone: skull base and the upper cervical spine; neck = soft tissue cylinder below the head.
_BONE_BLOBS = (((0.0, 10.0, -44.0), (55.0, 48.0, 7.0)),)
_FORAMEN = ((0.0, 22.0), 16.0)  # (x, y) centre and radius of the hole in the skull base for the brainstem
_SPINE = ((0.0, 36.0), 10.0, -50.0)  # (x, y) centre, radius, top z of the cervical spine cylinder
_NECK = ((0.0, 14.0), (46.0, 44.0), -20.0)  # (x, y) centre, semi-axes, top z of the neck cylinder

# Tissue values per modality, in real-world units (CT: HU after rescale; MR: arbitrary signal).
# vessel: contrast of arteries AND of aneurysms on them (an aneurysm is lumen, never brighter than its vessel).
TISSUE_VALUES: dict[str, dict[str, float]] = {
    "CTA": {"air": -1000, "scalp": 40, "bone": 1150, "csf": 6, "brain": 36, "vessel": 380, "noise": 9, "texture": 5},
    "MRA": {"air": 0, "scalp": 260, "bone": 40, "csf": 60, "brain": 180, "vessel": 720, "noise": 12, "texture": 10},
    "MRI T2": {"air": 0, "scalp": 340, "bone": 30, "csf": 950, "brain": 420, "vessel": 70, "noise": 16,
               "texture": 25},
    "MRI T1post": {"air": 0, "scalp": 560, "bone": 40, "csf": 120, "brain": 380, "vessel": 660, "noise": 15,
                   "texture": 20},
}


@dataclass(frozen=True)
class Vessel:
    """One labelled polyline with a linearly tapering radius; ``label`` is the cowseg value of its location."""

    location: str
    label: int
    points: np.ndarray  # (k, 3) head-frame mm
    radii: np.ndarray  # (k,) mm


@dataclass(frozen=True)
class Aneurysm:
    """A saccular aneurysm: a sphere attached to the wall of the vessel of its location."""

    location: str
    label: int
    centre: np.ndarray  # head-frame mm
    diameter_mm: float


@dataclass(frozen=True)
class Pose:
    """Head frame -> world LPS: ``world = rotation @ (scale * head) + translation``."""

    rotation: np.ndarray  # (3, 3)
    scale: float
    translation: np.ndarray  # (3,)

    def to_world(self, head_pts: np.ndarray) -> np.ndarray:
        return (self.scale * np.asarray(head_pts, float)) @ self.rotation.T + self.translation

    def to_head(self, world_pts: np.ndarray) -> np.ndarray:
        return ((np.asarray(world_pts, float) - self.translation) @ self.rotation) / self.scale

    def as_dict(self) -> dict:
        return {"rotation": self.rotation.round(6).tolist(), "scale": round(self.scale, 6),
                "translation": self.translation.round(4).tolist()}


@dataclass(frozen=True)
class Grid:
    """A DICOM-style voxel grid: voxel (k, r, c) -> LPS ``origin + c*col_step*row_dir + r*row_step*col_dir +
    k*slice_step*normal`` (``row_dir`` = IOP[:3], the direction of increasing column index, as in DICOM)."""

    origin: np.ndarray  # LPS of voxel (0, 0, 0), i.e. ImagePositionPatient of slice k = 0
    row_dir: np.ndarray  # IOP[:3]
    col_dir: np.ndarray  # IOP[3:]
    pixel_spacing: tuple[float, float]  # (between rows, between columns) as in DICOM PixelSpacing
    slice_step: float
    shape: tuple[int, int, int]  # (n_slices, rows, columns)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    def voxel_to_world(self) -> np.ndarray:
        """4x4 matrix mapping (k, r, c, 1) to LPS mm."""
        m = np.eye(4)
        m[:3, 0] = self.normal * self.slice_step
        m[:3, 1] = self.col_dir * self.pixel_spacing[0]
        m[:3, 2] = self.row_dir * self.pixel_spacing[1]
        m[:3, 3] = self.origin
        return m

    def slice_origin(self, k: int) -> np.ndarray:
        return self.origin + k * self.slice_step * self.normal

    def world_to_voxel(self, pts: np.ndarray) -> np.ndarray:
        """(n, 3) LPS -> (n, 3) fractional (k, r, c)."""
        inv = np.linalg.inv(self.voxel_to_world())
        pts = np.atleast_2d(np.asarray(pts, float))
        return pts @ inv[:3, :3].T + inv[:3, 3]


@dataclass
class Phantom:
    """One subject: anatomy in the head frame plus the pose that places it in the scanner."""

    vessels: list[Vessel]
    aneurysms: list[Aneurysm]
    pose: Pose
    warp: list[tuple[np.ndarray, float, float]] = field(default_factory=list)  # smooth anatomy jitter (wave terms)
    texture: list[tuple[np.ndarray, float, float]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------------
# Building a subject
# ---------------------------------------------------------------------------------------------------------------------
def rotation_matrix(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    """Rotation about x (nodding), then y (roll), then z (turning), angles in degrees."""
    ax, ay, az = np.deg2rad([rx_deg, ry_deg, rz_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_pose(rng: np.random.Generator, table_offset: np.ndarray) -> Pose:
    """Per-series jitter: rotations of a few degrees, a few mm of translation, head size +-10%."""
    rot = rotation_matrix(rng.uniform(-8, 8), rng.uniform(-4, 4), rng.uniform(-6, 6))
    return Pose(rot, float(rng.uniform(0.9, 1.1)), np.asarray(table_offset, float) + rng.uniform(-6, 6, size=3))


def _waves(rng: np.random.Generator, n: int, wavelength: tuple[float, float], amplitude: float):
    """Random plane waves (direction / wavelength, phase, amplitude) for smooth fields."""
    out = []
    for _ in range(n):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        k = d * (2 * np.pi / rng.uniform(*wavelength))
        out.append((k, float(rng.uniform(0, 2 * np.pi)), float(amplitude * rng.uniform(0.5, 1.0))))
    return out


def _apply_warp(points: np.ndarray, warp) -> np.ndarray:
    """Smooth displacement of anatomy points: connected vessels stay connected because junctions move together."""
    disp = np.zeros_like(points)
    for i, (k, phase, amp) in enumerate(warp):
        disp[:, i % 3] += amp * np.sin(points @ k + phase)
    return points + disp


def build_vessels(rng: np.random.Generator, warp) -> list[Vessel]:
    """The arterial tree of one subject: template + smooth warp + a global radius factor."""
    radius_factor = float(rng.uniform(0.85, 1.15))
    vessels = []
    specs = []
    for name, pts, r0, r1 in _LEFT_VESSELS:
        for side, sign in (("Left", 1.0), ("Right", -1.0)):
            col = f"{side} {name}" if f"{side} {name}" in LOCATION_COLS else name
            p = np.array(pts, float)
            p[:, 0] *= sign
            specs.append((col, p, r0, r1))
    for name, pts, r0, r1 in _MIDLINE_VESSELS:
        specs.append((name, np.array(pts, float), r0, r1))
    for col, p, r0, r1 in specs:
        p = _apply_warp(p, warp)
        radii = np.linspace(r0, r1, len(p)) * radius_factor * float(rng.uniform(0.88, 1.12))
        vessels.append(Vessel(col, COL_TO_COWSEG_LABEL[col], p, radii))
    return vessels


def _arc_point(vessel: Vessel, frac: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Point, unit tangent and radius at a fraction of the polyline's arc length."""
    seg = np.diff(vessel.points, axis=0)
    lengths = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    s = frac * cum[-1]
    i = int(np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1))
    t = (s - cum[i]) / lengths[i]
    point = vessel.points[i] + t * seg[i]
    radius = vessel.radii[i] + t * (vessel.radii[i + 1] - vessel.radii[i])
    return point, seg[i] / lengths[i], float(radius)


def sample_diameter(rng: np.random.Generator) -> float:
    """Clinical size range 3-12 mm, most between 4 and 7 mm."""
    return float(np.clip(3.0 + rng.gamma(shape=2.6, scale=0.95), 3.0, 12.0))


def place_aneurysm(rng: np.random.Generator, vessels: list[Vessel], location: str,
                   diameter_mm: float | None = None) -> Aneurysm:
    """A sphere on the wall of the location's vessel: centre just outside the lumen, overlapping the wall."""
    # Posterior aneurysms sit on the PCA, SCA or upper basilar trunk, not on the vertebrals low in the neck.
    candidates = [v for v in vessels if v.location == location and v.points[:, 2].max() > -20.0]
    vessel = candidates[int(rng.integers(len(candidates)))]
    generic = location.removeprefix("Left ").removeprefix("Right ")
    lo, hi = _ANEURYSM_ARC[generic]
    point, tangent, radius = _arc_point(vessel, float(rng.uniform(lo, hi)))
    d = sample_diameter(rng) if diameter_mm is None else float(diameter_mm)
    if generic == "Basilar Tip":  # apex aneurysms point up
        direction = np.array([0.0, 0.0, 1.0]) + 0.4 * rng.normal(size=3)
    else:
        direction = rng.normal(size=3)
    direction -= direction.dot(tangent) * tangent  # perpendicular to the vessel
    direction /= np.linalg.norm(direction)
    centre = point + direction * (radius + 0.3 * d)  # sac overlaps the wall: attached, not floating
    return Aneurysm(location, vessel.label, centre, d)


# ---------------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------------
def _head_coords_affine(grid: Grid, pose: Pose) -> np.ndarray:
    """4x4 matrix mapping voxel (k, r, c, 1) to head-frame mm."""
    world_to_head = np.eye(4)
    world_to_head[:3, :3] = pose.rotation.T / pose.scale
    world_to_head[:3, 3] = -pose.rotation.T @ pose.translation / pose.scale
    return world_to_head @ grid.voxel_to_world()


def _coords(m: np.ndarray, ks: np.ndarray, rs: np.ndarray, cs: np.ndarray) -> list[np.ndarray]:
    """Head-frame x, y, z of the voxel block ks x rs x cs (float32, broadcast outer sums)."""
    k = ks.astype(np.float32)[:, None, None]
    r = rs.astype(np.float32)[None, :, None]
    c = cs.astype(np.float32)[None, None, :]
    return [np.float32(m[i, 3]) + np.float32(m[i, 0]) * k + np.float32(m[i, 1]) * r + np.float32(m[i, 2]) * c
            for i in range(3)]


def _soft(signed_dist: np.ndarray, width: float, inplace: bool = False) -> np.ndarray:
    """Partial-volume fraction inside a surface from a signed distance (negative inside), linear over ``width``."""
    out = signed_dist if inplace else np.empty_like(signed_dist)
    np.multiply(signed_dist, np.float32(-1.0 / width), out=out)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def _ellipsoid_dist(x, y, z, centre, axes) -> np.ndarray:
    """Approximate signed distance to an ellipsoid surface (exact for spheres; good enough for soft edges)."""
    q = np.subtract(x, np.float32(centre[0]))
    q *= np.float32(1.0 / axes[0])
    np.square(q, out=q)
    for coord, c, a in ((y, centre[1], axes[1]), (z, centre[2], axes[2])):
        t = np.subtract(coord, np.float32(c))
        t *= np.float32(1.0 / a)
        np.square(t, out=t)
        q += t
    np.sqrt(q, out=q)
    q -= np.float32(1.0)
    q *= np.float32(min(axes))
    return q


def _blend(img: np.ndarray, frac: np.ndarray, value) -> None:
    """Alpha-composite ``value`` (scalar or array) with coverage ``frac`` onto ``img`` in place."""
    t = np.subtract(value, img, dtype=np.float32)
    t *= frac
    img += t


def _texture_planes(m: np.ndarray, texture, rows: np.ndarray, cols: np.ndarray):
    """Brain texture as a sum of plane waves, separable in voxel indices: sin(a*k + phase(r, c)) = sin(a*k) *
    cos(phase) + cos(a*k) * sin(phase), so a chunk is one small matrix product instead of a sin per voxel."""
    freqs, planes = [], []
    for kvec, phase, amp in texture:
        a = kvec @ m[:3, :3]  # phase change per unit k, r, c
        base = (a[1] * rows[:, None] + a[2] * cols[None, :] + kvec @ m[:3, 3] + phase).astype(np.float64)
        freqs.append(a[0])
        planes.append(amp * np.cos(base))
        planes.append(amp * np.sin(base))
    return np.array(freqs), np.stack(planes).astype(np.float32) if planes else None


def _texture_chunk(freqs: np.ndarray, planes: np.ndarray, ks: np.ndarray) -> np.ndarray:
    ang = np.outer(ks, freqs)  # (nk, W)
    coef = np.empty((len(ks), 2 * len(freqs)), np.float32)
    coef[:, 0::2] = np.sin(ang)
    coef[:, 1::2] = np.cos(ang)
    # Explicit multiply-adds rather than a BLAS matmul: BLAS thread pools stall on a busy 2-core machine.
    out = np.zeros((len(ks), *planes.shape[1:]), np.float32)
    for j in range(len(planes)):
        out += coef[:, j, None, None] * planes[j]
    return out


def _tissue_chunk(x, y, z, values: dict[str, float], width: float, texture: np.ndarray | None) -> np.ndarray:
    """Scalp, skull, CSF shell, brain (with texture) and neck for a chunk of head-frame coordinates."""
    img = np.full(x.shape, values["air"], np.float32)
    d_brain = _ellipsoid_dist(x, y, z, BRAIN_CENTRE, BRAIN_AXES)
    (nx, ny), (na, nb), ntop = _NECK
    if float(z.min()) < ntop + 2 * width:  # the neck only exists below the head
        neck = _ellipsoid_dist(x, y, z, (nx, ny, 0.0), (na, nb, 1e9))  # an infinite elliptic cylinder
        np.maximum(neck, z - np.float32(ntop), out=neck)
        np.minimum(neck, d_brain - np.float32(SCALP_SHELL_MM), out=neck)
        head = neck
    else:
        head = d_brain - np.float32(SCALP_SHELL_MM)
    _blend(img, _soft(head, width, inplace=True), values["scalp"])
    _blend(img, _soft(d_brain - np.float32(SKULL_SHELL_MM), width), values["bone"])
    _blend(img, _soft(d_brain - np.float32(CSF_SHELL_MM), width), values["csf"])
    brain_value = np.float32(values["brain"])
    if texture is not None:
        texture *= np.float32(values["texture"])
        texture += brain_value
        brain_value = texture
    _blend(img, _soft(d_brain, width, inplace=True), brain_value)
    return img


def _local_structures(grid_shape, m: np.ndarray, img: np.ndarray, values: dict[str, float], width: float) -> None:
    """Ventricles, basal cistern, skull base and spine, each evaluated only inside its own voxel box."""
    m_inv = np.linalg.inv(m)
    margin = 2 * width
    for centre, axes in _CSF_BLOBS:
        c, a = np.array(centre), np.array(axes)
        box = _index_box(m_inv, c - a - margin, c + a + margin, grid_shape)
        if box is not None:
            x, y, z = _coords(m, *box)
            sl = np.ix_(*box)
            block = img[sl]
            _blend(block, _soft(_ellipsoid_dist(x, y, z, c, a), width, inplace=True), values["csf"])
            img[sl] = block
    (fx, fy), fr = _FORAMEN
    for centre, axes in _BONE_BLOBS:
        c, a = np.array(centre), np.array(axes)
        box = _index_box(m_inv, c - a - margin, c + a + margin, grid_shape)
        if box is not None:
            x, y, z = _coords(m, *box)
            hole = np.float32(fr) - np.sqrt((x - fx) ** 2 + (y - fy) ** 2)
            d = np.maximum(_ellipsoid_dist(x, y, z, c, a), hole)
            sl = np.ix_(*box)
            block = img[sl]
            _blend(block, _soft(d, width, inplace=True), values["bone"])
            img[sl] = block
    (sx, sy), sr, stop = _SPINE
    lo = np.array([sx - sr - margin, sy - sr - margin, -400.0])
    hi = np.array([sx + sr + margin, sy + sr + margin, stop + margin])
    box = _index_box(m_inv, lo, hi, grid_shape)
    if box is not None:
        x, y, z = _coords(m, *box)
        d = np.maximum(np.sqrt((x - sx) ** 2 + (y - sy) ** 2) - np.float32(sr), z - np.float32(stop))
        sl = np.ix_(*box)
        block = img[sl]
        _blend(block, _soft(d, width, inplace=True), values["bone"])
        img[sl] = block


def _index_box(m_inv: np.ndarray, lo: np.ndarray, hi: np.ndarray, shape) -> list[np.ndarray] | None:
    """Voxel index ranges covering the head-frame box [lo, hi] (None if it misses the grid)."""
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    vox = corners @ m_inv[:3, :3].T + m_inv[:3, 3]
    start = np.maximum(np.floor(vox.min(axis=0)).astype(int), 0)
    stop = np.minimum(np.ceil(vox.max(axis=0)).astype(int) + 1, shape)
    if np.any(stop <= start):
        return None
    return [np.arange(a, b) for a, b in zip(start, stop)]


def render_vessels(grid: Grid, phantom: Phantom, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Vessel + aneurysm coverage (float32 in [0, 1]) and the cowseg label of the dominant vessel per voxel.

    Each tapered capsule is evaluated only inside its own bounding box (analytic distance to the segment).
    """
    m = _head_coords_affine(grid, phantom.pose)
    m_inv = np.linalg.inv(m)
    occ = np.zeros(grid.shape, np.float32)
    label = np.zeros(grid.shape, np.uint8)
    shapes = []
    for v in phantom.vessels:
        for i in range(len(v.points) - 1):
            shapes.append(("seg", v.label, v.points[i], v.points[i + 1], v.radii[i], v.radii[i + 1]))
    for a in phantom.aneurysms:
        r = a.diameter_mm / 2
        shapes.append(("ball", a.label, a.centre, a.centre, r, r))
    for _kind, lab, p0, p1, r0, r1 in shapes:
        margin = max(r0, r1) + 2 * width
        box = _index_box(m_inv, np.minimum(p0, p1) - margin, np.maximum(p0, p1) + margin, grid.shape)
        if box is None:
            continue
        x, y, z = _coords(m, *box)
        d = (p1 - p0).astype(np.float32)
        dd = float(d @ d)
        if dd > 0:
            t = ((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / np.float32(dd)
            t = np.clip(t, 0.0, 1.0)
        else:
            t = np.zeros_like(x)
        dist = np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2)
        frac = _soft(dist - (np.float32(r0) + t * np.float32(r1 - r0)), width)
        sl = np.ix_(*box)
        cur = occ[sl]
        better = frac > cur
        label_block = label[sl]
        label_block[better & (frac >= 0.5)] = lab
        label[sl] = label_block
        occ[sl] = np.maximum(cur, frac)
    return occ, label


def render(grid: Grid, phantom: Phantom, modality: str, rng: np.random.Generator,
           contrast: dict[str, float] | None = None, chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Real-world intensities (float32, (k, r, c)) with noise, and the cowseg label map (uint8) on ``grid``."""
    values = dict(TISSUE_VALUES[modality])
    if contrast:
        values.update(contrast)
    # Partial-volume edge width in head-frame mm: about one in-plane voxel.
    width = float(np.mean(grid.pixel_spacing)) / phantom.pose.scale
    m = _head_coords_affine(grid, phantom.pose)
    nk, nr, nc = grid.shape
    img = np.empty(grid.shape, np.float32)
    rows, cols = np.arange(nr), np.arange(nc)
    freqs, planes = _texture_planes(m, phantom.texture, rows, cols)
    for k0 in range(0, nk, chunk):
        ks = np.arange(k0, min(nk, k0 + chunk))
        tex = _texture_chunk(freqs, planes, ks) if planes is not None else None
        img[ks[0]: ks[-1] + 1] = _tissue_chunk(*_coords(m, ks, rows, cols), values, width, tex)
    _local_structures(grid.shape, m, img, values, width)
    occ, label = render_vessels(grid, phantom, width)
    vessel_value = np.float32(values["vessel"])
    noise_sd = np.float32(values["noise"])
    for k0 in range(0, nk, chunk):
        sl = slice(k0, min(nk, k0 + chunk))
        block = img[sl]
        block += occ[sl] * (vessel_value - block)
        block += noise_sd * rng.standard_normal(block.shape, dtype=np.float32)
        if modality != "CTA":  # magnitude images: no negative signal
            np.abs(block, out=block)
    return img, label
