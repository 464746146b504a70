"""A real ``python submit.py wheels`` run, as a user hits it: ``pip download`` of ``kaggle_wheels.txt`` from PyPI for
every Python the settings list, into a fresh folder. Prints (and with ``--json`` writes) per Python: wheel count,
size, every wheel's file name, and the time taken; exit status 1 when the kit's command fails or a set is incomplete.

    python bench/bench_wheels.py [--out DIR] [--python 3.11 3.12] [--json FILE] [--keep-cache] [--machine-pip-config]

Needs PyPI (a package registry); not part of the offline unit tests. By default pip runs as on a fresh machine: no pip
configuration files (extra indexes, find-links, constraints of this machine), no cache, PyPI only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kaggle_utils.kaggle_env import python_tag, wheel_sets  # noqa: E402
from kaggle_utils.kaggle_push import load_settings, missing_wheels  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="download folder (default: a temporary folder, removed afterwards)")
    p.add_argument("--python", nargs="+", metavar="X.Y", help="default: wheels.python_versions of kaggle.yaml")
    p.add_argument("--json", help="write the measured result here")
    p.add_argument("--keep-cache", action="store_true", help="let pip use its cache (default: off, a cold download)")
    p.add_argument("--machine-pip-config", action="store_true",
                   help="keep this machine's pip configuration (default: PyPI only, as a new user's machine)")
    args = p.parse_args(argv)
    settings = load_settings(REPO / "kaggle.yaml")
    versions = list(args.python or settings.wheels.python_versions)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_wheels_"))
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--out {out} is not empty: the benchmark needs a fresh folder")
    env = {**os.environ}
    if not args.machine_pip_config:
        env = {k: v for k, v in env.items() if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")}
        env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file at all
    if not args.keep_cache:
        env["PIP_NO_CACHE_DIR"] = "1"
    cmd = [sys.executable, str(REPO / "submit.py"), "wheels", "--wheels-dir", str(out), "--python", *versions]
    print("$ " + " ".join(cmd), flush=True)
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, check=False)
    seconds = time.perf_counter() - started
    req = REPO / settings.wheels.requirements
    sets = wheel_sets(out)
    report = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "pip": subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True).stdout.split(
            " from ")[0],
        "host_python": sys.version.split()[0],
        "exit_status": result.returncode,
        "seconds": round(seconds, 1),
        "pip_cache": args.keep_cache,
        "pip_config": "this machine's" if args.machine_pip_config else "none (PyPI only)",
        "sets": {},
    }
    ok = result.returncode == 0
    for version in versions:
        tag = python_tag(version)
        names = sets.get(tag, [])
        size = sum((out / tag / n).stat().st_size for n in names)
        missing = missing_wheels(req, out / tag)
        ok = ok and not missing and bool(names)
        report["sets"][tag] = {"python": version, "wheels": len(names), "mib": round(size / 2**20, 1),
                               "missing": missing, "files": names}
        print(f"{tag}: {len(names)} wheels, {size / 2**20:.1f} MiB, missing {missing or 'none'}")
        for name in names:
            print(f"  {name}")
    print(f"total {seconds:.1f} s, exit {result.returncode}, {'OK' if ok else 'FAILED'}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
