"""Build ``mni152_4mm.npz`` (the template the ``anatomy`` ROI locator registers heads to) from the MNI152 T1 2 mm
NIfTI and the Circle of Willis landmark table.

    python -m kaggle_utils.anatomy.build_template --mni ../shared/real_anatomy/mni152/MNI152_T1_2mm.nii.gz \
        --landmarks ../shared/real_anatomy/mni152/cow_landmarks_lps_mm.csv

The template is stored in the kit's canonical voxel order (z, y, x) increasing towards Superior, Posterior, Left,
averaged over 2x2x2 blocks to 4 mm and scaled to uint8 (about 25 KB compressed). ``origin_lps_zyx`` is the LPS mm
position (z, y, x) of voxel (0, 0, 0); axes are aligned with LPS, so voxel ``i`` lies at ``origin + 4 * i``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TEMPLATE_PATH = Path(__file__).with_name("mni152_4mm.npz")
BLOCK = 2  # 2 mm voxels -> 4 mm


def canonical_from_ras_nifti(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI array indexed (i, j, k) with a diagonal RAS affine -> canonical (z S, y P, x L) array and the LPS
    position (z, y, x) of its voxel 0. Only axis flips are handled (the MNI152 affine is diagonal)."""
    diag = np.diag(affine)[:3]
    if not np.allclose(affine[:3, :3], np.diag(diag)):
        raise ValueError("expected a diagonal (axis-aligned) NIfTI affine")
    arr = np.transpose(np.asarray(data, dtype=np.float32), (2, 1, 0))  # (k, j, i) = (z, y, x) in RAS directions
    ras_to_lps = np.array([-1.0, -1.0, 1.0])  # per (x, y, z)
    origin = np.empty(3)  # LPS (z, y, x)
    for axis_zyx, axis_xyz in ((0, 2), (1, 1), (2, 0)):
        step_lps = diag[axis_xyz] * ras_to_lps[axis_xyz]
        start_lps = affine[axis_xyz, 3] * ras_to_lps[axis_xyz]
        n = arr.shape[axis_zyx]
        if step_lps < 0:  # flip so the index increases along +LPS
            arr = np.flip(arr, axis=axis_zyx)
            start_lps = start_lps + step_lps * (n - 1)
        origin[axis_zyx] = start_lps
    return np.ascontiguousarray(arr), origin


def block_mean(arr: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Mean over non-overlapping blocks (the trailing partial block of each axis is dropped)."""
    f = [int(k) for k in factors]
    n = [s // k for s, k in zip(arr.shape, f)]
    cut = arr[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    return cut.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean(axis=(1, 3, 5), dtype=np.float32)


def build(mni: Path, landmarks: Path, out: Path = TEMPLATE_PATH) -> Path:
    import nibabel as nib

    img = nib.load(str(mni))
    arr, origin = canonical_from_ras_nifti(np.asanyarray(img.dataobj), img.affine)
    step = float(abs(img.affine[0, 0]))
    coarse = block_mean(arr, (BLOCK,) * 3)
    # a block's centre lies half a fine voxel past its first voxel
    origin = origin + 0.5 * step * (BLOCK - 1)
    scaled = np.clip(np.rint(coarse / coarse.max() * 255.0), 0, 255).astype(np.uint8)
    table = np.loadtxt(landmarks, delimiter=",", skiprows=1, dtype=np.float64)  # columns x, y, z (LPS mm)
    np.savez_compressed(out, image=scaled, origin_lps_zyx=origin, spacing=np.float64(step * BLOCK),
                        landmarks_lps_zyx=table[:, ::-1].copy())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mni", type=Path, required=True, help="MNI152_T1_2mm.nii.gz")
    parser.add_argument("--landmarks", type=Path, required=True, help="cow_landmarks_lps_mm.csv (x, y, z LPS mm)")
    parser.add_argument("--out", type=Path, default=TEMPLATE_PATH)
    args = parser.parse_args(argv)
    path = build(args.mni, args.landmarks, args.out)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
