#!/usr/bin/env python
"""Front door for the Kaggle side of the kit.

  python submit.py smoke  [--data-dir DIR] [--models RUN ...] [--limit N]   local submission smoke test
  python submit.py push   {code,wheels,cache,runs,pretrained,kernels,meta,all} [--dry-run]
                                                                          stage and push datasets / kernels
  python submit.py wheels [--python X.Y ...]                               offline wheels, one set per Python
  python submit.py submit --kernel USER/SLUG --version N -m MSG             submit a code-competition kernel
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> module whose main(argv) handles it (push/wheels/submit get their own name as argv[0]).
COMMANDS = {
    "smoke": "kaggle_utils.smoke",
    "push": "kaggle_utils.kaggle_push",
    "wheels": "kaggle_utils.kaggle_push",
    "submit": "kaggle_utils.kaggle_push",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command = argv[0]
    if command not in COMMANDS:
        print(f"submit.py: error: unknown command {command!r}; choose from {list(COMMANDS)}", file=sys.stderr)
        return 2
    from kaggle_utils.errors import KitError

    module = importlib.import_module(COMMANDS[command])
    try:
        return int(module.main(argv[1:] if command == "smoke" else argv) or 0)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
