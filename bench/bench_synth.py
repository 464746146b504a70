"""Speed of the synthetic competition generator.

Prints (1) series/s for a default-size competition (128 px, 64 CTA slices) against a baseline that only writes the
same number of uncompressed slices with plain pydicom (no rendering), and (2) seconds for one realistic-size CTA
(512 x 512 x 300) per transfer syntax, plus one MRA, with the ratio to the uncompressed CTA.

    python bench/bench_synth.py            # full
    python bench/bench_synth.py --quick    # 256 px, 100 slices
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kaggle_utils.synth import make_competition, make_series  # noqa: E402


def baseline_write(folder: Path, n_files: int, size: int) -> float:
    """Seconds to write ``n_files`` uncompressed size x size CT slices with plain pydicom (the I/O floor)."""
    pixels = np.zeros((size, size), np.int16)
    start = time.perf_counter()
    for i in range(n_files):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(i)])
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.ImagePositionPatient = [0, 0, i]
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller realistic-size series (256 px, 100 slices)")
    parser.add_argument("--n-series", type=int, default=20, help="series in the default-size competition")
    args = parser.parse_args()
    size, slices = (256, 100) if args.quick else (512, 300)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        root = make_competition(tmp / "comp", n_series=args.n_series, seed=0)
        gen = time.perf_counter() - start
        n_files = sum(1 for _ in root.rglob("*.dcm"))
        (tmp / "base").mkdir()
        base = baseline_write(tmp / "base", n_files, 128)
        print(f"default size (128 px, 64 CTA slices): {args.n_series} series in {gen:.1f} s = "
              f"{args.n_series / gen:.2f} series/s ({n_files} files); plain pydicom write of the same file count: "
              f"{base:.1f} s; ratio generator / write-only = {gen / base:.2f}")
        timings = {}
        for name, modality, syntax in (("CTA uncompressed", "CTA", "explicit"), ("CTA RLE", "CTA", "rle"),
                                       ("CTA JPEG-LS", "CTA", "jpegls"), ("CTA JPEG 2000", "CTA", "jpeg2000"),
                                       ("MRA uncompressed", "MRA", "explicit")):
            out = tmp / name.replace(" ", "_")
            out.mkdir()
            start = time.perf_counter()
            make_series(out, modality=modality, image_size=size, n_slices=slices, transfer_syntax=syntax, seed=1,
                        aneurysms=["Anterior Communicating Artery"])
            timings[name] = time.perf_counter() - start
            mb = sum(f.stat().st_size for f in out.rglob("*.dcm")) / 1e6
            print(f"{name:18s} {size}x{size}x{slices}: {timings[name]:6.1f} s, {mb:6.1f} MB, "
                  f"ratio to CTA uncompressed {timings[name] / timings['CTA uncompressed']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
