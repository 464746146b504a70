"""``python -m kaggle_utils <command>``: one entry point, one module per command.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only when its command
runs, so ``--help`` stays fast and a missing optional dependency only affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kaggle_utils import __version__
from kaggle_utils.errors import KitError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("kaggle_utils.demo", "end-to-end demo on a built-in synthetic competition"),
    "synth": ("kaggle_utils.synth.cli", "write a synthetic competition with the real layout and DICOM quirks"),
    "preprocess": ("kaggle_utils.cache", "DICOM series -> cached ROI volumes + manifest.parquet (resumable)"),
    "folds": ("kaggle_utils.train.folds", "write multilabel-stratified folds once to a file"),
    "train": ("kaggle_utils.train.loop", "train a model config on the cache (one fold or all)"),
    "predict": ("kaggle_utils.infer", "batch prediction of a list of series with trained runs"),
    "serve": ("kaggle_utils.gateway", "serve predict() through the competition gateway (or the local stand-in)"),
    "evaluate": ("kaggle_utils.report.evaluate", "out-of-fold report: score, per-location AUC, curves (MD + HTML)"),
    "eda": ("kaggle_utils.report.eda", "exploratory figures of a competition folder"),
    "view": ("kaggle_utils.report.viewer", "render a series with its localizer points and ROI box"),
    "train-locator": ("kaggle_utils.locator_learned", "train the learned CoW locator on a competition folder"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like argparse but naming the command
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m kaggle_utils", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kaggle_utils {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(sp)
    return parser


def validate_config_args(args: argparse.Namespace) -> None:
    """Validate the whole resolved config (``--config`` + ``key=value`` overrides, registries included) before the
    command runs, so a typo stops it before it writes anything (a run folder, a cache tied to the bad value)."""
    if getattr(args, "config", None) is None and not getattr(args, "overrides", None):
        return
    from kaggle_utils.config import load_config

    load_config(getattr(args, "config", None), getattr(args, "overrides", None) or [])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        print(f"python -m kaggle_utils: error: unknown command {command!r}; choose from {list(COMMANDS)}",
              file=sys.stderr)
        return 2
    args = build_parser(command).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        validate_config_args(args)
        return int(module.run(args) or 0)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
