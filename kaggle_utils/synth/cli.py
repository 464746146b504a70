"""``python -m kaggle_utils synth``: write a synthetic competition and print a short summary of it."""

from __future__ import annotations

import argparse

from kaggle_utils.synth.competition import make_competition, summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created; its parent must exist)")
    parser.add_argument("--n-series", type=int, required=True, help="number of train series (train.csv rows)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same bytes (default 0)")
    parser.add_argument("--n-test", type=int, default=0, help="held-out series under kaggle_evaluation/ (default 0)")
    parser.add_argument("--image-size", type=int, default=128, help="pixels per side of each slice (default 128)")
    parser.add_argument("--n-slices", type=int, default=64,
                        help="slices of a CTA series; MR series get fewer, as in the real data (default 64)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering series in parallel (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--no-cover-quirks", action="store_true",
                        help="draw quirks at their real rates only (by default each occurs at least once)")


def format_summary(root, summary: dict) -> str:
    """A few human-readable lines: counts per modality, positives, per location, quirks, size on disk."""
    lines = [f"synthetic competition in {root}: {summary['train']} train + {summary['test']} held-out series, "
             f"{summary['files']} files, {summary['bytes'] / 1e6:.1f} MB"]
    lines.append("  modality: " + ", ".join(f"{k} {v}" for k, v in summary["modality"].items()))
    lines.append(f"  positive series: {summary['positive']} ({summary['aneurysms']} aneurysms); "
                 f"segmentations: {summary['segmentations']}")
    lines.append("  per location: " + ", ".join(f"{k} {v}" for k, v in summary["location"].items() if v))
    lines.append("  quirks: " + ", ".join(f"{k} {v}" for k, v in summary["quirks"].items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    root = make_competition(args.out, n_series=args.n_series, seed=args.seed, n_test=args.n_test,
                            image_size=args.image_size, n_slices=args.n_slices, overwrite=args.overwrite,
                            cover_quirks=not args.no_cover_quirks, workers=max(1, args.workers), progress=True)
    print(format_summary(root, summarize(root)))
    return 0
