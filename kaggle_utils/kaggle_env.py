"""The one notebook bootstrap: ``from kaggle_utils.kaggle_env import bootstrap; env = bootstrap()``.

Every notebook's first code cell puts the code dataset on ``sys.path`` and calls ``bootstrap()``, which
1. finds the attached inputs by their files (``kaggle_utils.paths``; any Kaggle mount layout),
2. on Kaggle installs the offline wheels built for the running Python (``<wheels>/cpXY/``) with
   ``pip install --no-index --find-links``, and stops with a clear error when no set matches this Python,
3. puts the kit's folder first on ``sys.path`` and returns a ``KitEnv``: resolved paths and the notebook settings.

Standard library only at module level: this module runs before the wheels it installs exist.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kaggle_utils import paths
from kaggle_utils.errors import KitError

PIP_COMMAND: tuple[str, ...] = (sys.executable, "-m", "pip")  # tests point this at a recording fake
REBUILD_COMMAND = "python submit.py wheels && python submit.py push wheels"


def _process_age_s() -> float:
    """Seconds since this process (the notebook's kernel) started; 0 where /proc cannot tell (not Linux)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


# When the notebook's kernel started, on the time.monotonic() clock: the gateway's 15-minute start limit counts from
# there (the bootstrap cell runs seconds after the kernel starts).
STARTED_AT = time.monotonic() - _process_age_s()


class BootstrapError(KitError):
    """The notebook cannot be set up (wheels for another Python, an input missing); the message says what to do."""


def running_python() -> tuple[int, int, int]:
    """The running interpreter's version (one function, so tests can stand in for another Python)."""
    return tuple(sys.version_info[:3])


def python_tag(version: str | tuple[int, int] | None = None) -> str:
    """``"3.12"`` / ``(3, 12)`` / None (the running interpreter) -> ``"cp312"``, the wheels' sub-folder name."""
    if version is None:
        version = running_python()[:2]
    if isinstance(version, str):
        major, _, minor = version.partition(".")
        if not (major.isdigit() and minor.isdigit()):
            raise ValueError(f"python version {version!r} must look like 3.12")
        version = (int(major), int(minor))
    return f"cp{version[0]}{version[1]}"


def wheel_sets(wheels_root: Path) -> dict[str, list[str]]:
    """The per-Python wheel folders of a wheels dataset: ``{"cp311": [wheel names], ...}``."""
    if not wheels_root.is_dir():
        return {}
    return {d.name: sorted(p.name for p in d.glob("*.whl"))
            for d in sorted(wheels_root.glob("cp*")) if d.is_dir() and any(d.glob("*.whl"))}


def wheels_for_this_python(wheels_root: Path, version: str | tuple[int, int] | None = None) -> Path:
    """The folder of wheels built for the running Python; none -> an error naming the Python, the sets found and the
    command that rebuilds them."""
    tag = python_tag(version)
    sets = wheel_sets(wheels_root)
    if tag in sets:
        return wheels_root / tag
    running = ".".join(str(v) for v in running_python()) if version is None else str(version)
    short = f"{tag[2]}.{tag[3:]}"
    found = ", ".join(f"{t} ({len(names)} wheels)" for t, names in sets.items()) or "none"
    loose = sorted(p.name for p in wheels_root.glob("*.whl"))
    if loose:
        found += f"; loose wheels at the top: {loose[:6]}{' ...' if len(loose) > 6 else ''}"
    raise BootstrapError(
        f"no wheels for Python {running} ({tag}) in {wheels_root}: wheel sets found: {found}. "
        f"List \"{short}\" in wheels.python_versions of kaggle.yaml, then rebuild and upload them: {REBUILD_COMMAND}"
    )


def install_command(wheel_folder: Path, requirements: Path) -> list[str]:
    """Offline install (internet is off): only the given folder is looked in."""
    return [*PIP_COMMAND, "install", "--no-index", "--find-links", str(wheel_folder), "-r", str(requirements)]


def install_wheels(wheels_root: Path, version: str | tuple[int, int] | None = None) -> list[str]:
    """Install the wheels set that matches this Python; returns the command that ran."""
    folder = wheels_for_this_python(wheels_root, version)
    requirements = wheels_root / paths.WHEELS_LIST
    if not requirements.is_file():
        raise BootstrapError(f"wheels dataset {wheels_root} has no {paths.WHEELS_LIST} ({REBUILD_COMMAND})")
    cmd = install_command(folder, requirements)
    print("$ " + shlex.join(cmd), flush=True)
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise BootstrapError(f"offline install of {folder} failed (exit {result.returncode}); see pip's output above")
    return cmd


def _int_env(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise BootstrapError(f"{name}={raw!r} must be a whole number") from None


@dataclass
class KitEnv:
    """What a notebook needs: where things are (resolved on first use, so a notebook that attaches no competition
    does not fail for it) and the notebook settings (KAGGLE_UTILS_* variables, documented in ``paths``)."""

    input_dir: Path
    code_dir: Path
    work_dir: Path
    on_kaggle: bool
    python: str
    wheels_dir: Path | None = None  # the wheel set installed (None: nothing installed)
    started_at: float = STARTED_AT  # time.monotonic() at the kernel's start (gateway.serve(started_at=...))
    workers: int = 1  # preprocess processes (decoding holds the GIL)
    shard: str = ""  # preprocess: e.g. "0/2" = every 2nd series starting at 0
    limit: int | None = None  # preprocess: a quick trial on the first N series
    config: str | None = None  # an experiment config, relative to the kit's folder
    run_name: str = "baseline"  # train: the run folder name (runs.names in kaggle.yaml)
    fold: str = "all"  # train: "all", a fold index, or -1 for a full fit
    train_overrides: list[str] = field(default_factory=list)  # train: dotted key=value overrides

    @property
    def data_dir(self) -> Path:
        return paths.data_dir()

    @property
    def cache_dir(self) -> Path:
        return paths.cache_dir()

    @property
    def run_dirs(self) -> list[Path]:
        return paths.run_dirs()

    @property
    def share_dir(self) -> Path:
        return paths.serving_share_dir()

    def config_path(self, default: str | None = None) -> Path | None:
        """KAGGLE_UTILS_CONFIG (else ``default``) resolved against the kit's folder; None when neither is set."""
        name = self.config or default
        if not name:
            return None
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.code_dir / path

    def __repr__(self) -> str:
        installed = self.wheels_dir if self.wheels_dir is not None else "none installed"
        return (f"KitEnv(python {self.python}, on Kaggle: {self.on_kaggle}, code {self.code_dir}, wheels "
                f"{installed}, work {self.work_dir}; inputs {paths.describe_inputs(self.input_dir)})")


def bootstrap(install: bool | None = None, input_dir: str | os.PathLike | None = None) -> KitEnv:
    """Set a notebook up (see the module doc). ``install``: install the wheels (default: on Kaggle only)."""
    root = paths.input_root(input_dir)
    if input_dir is not None:
        os.environ[paths.INPUT_ENV] = str(root)  # the package's later look-ups search the same root
    on_kaggle = paths.on_kaggle()
    install = on_kaggle if install is None else install
    code_dir = Path(__file__).resolve().parent.parent  # the copy of the kit this notebook imported
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    wheels_dir = None
    if install:
        wheels_root = paths.find_input("wheels", root, how="attach the wheels dataset (python submit.py push wheels)")
        install_wheels(wheels_root)
        wheels_dir = wheels_for_this_python(wheels_root)
    return KitEnv(
        input_dir=root,
        code_dir=code_dir,
        work_dir=paths.work_dir(),
        on_kaggle=on_kaggle,
        python=".".join(str(v) for v in running_python()),
        wheels_dir=wheels_dir,
        workers=_int_env("KAGGLE_UTILS_WORKERS", os.cpu_count() or 1),
        shard=os.environ.get("KAGGLE_UTILS_SHARD", ""),
        limit=_int_env("KAGGLE_UTILS_LIMIT", 0) or None,
        config=os.environ.get("KAGGLE_UTILS_CONFIG") or None,
        run_name=os.environ.get("KAGGLE_UTILS_RUN_NAME", "baseline"),
        fold=os.environ.get("KAGGLE_UTILS_FOLD", "all"),
        train_overrides=shlex.split(os.environ.get("KAGGLE_UTILS_TRAIN_OVERRIDES", "")),
    )


def train_run(env: KitEnv, cache: Path, config_path: Path, out: Path) -> dict | None:
    """Notebook 02's training step: with two or more GPUs one DDP process per GPU through ``torchrun`` (the summary is
    then in ``out``), otherwise in this kernel (returns the summary)."""
    import torch

    from kaggle_utils.config import load_config
    from kaggle_utils.train.loop import train

    n_gpus = torch.cuda.device_count()
    if n_gpus > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_gpus}", "-m", "kaggle_utils",
               "train", "--cache", str(cache), "--config", str(config_path), "--out", str(out), "--fold", env.fold,
               *env.train_overrides]
        child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(env.code_dir),
                                                                             os.environ.get("PYTHONPATH", "")) if p)}
        print("$ " + shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=child_env)
        return None
    return train(cache, load_config(config_path, env.train_overrides), out, fold=env.fold)
