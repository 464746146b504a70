"""The Kaggle side of the kit: one settings file -> every dataset / kernel metadata, staged uploads, CLI calls.

  python submit.py push {code,wheels,cache,runs,pretrained,kernels,meta,all} [--dry-run]
  python submit.py wheels [--dry-run]
  python submit.py submit [--kernel USER/SLUG] --version N -m MSG [--dry-run]

Every upload is staged in a temporary folder (files hard-linked or copied; caches, dotfiles and credential-like files
left out), its metadata is validated, and only then is the ``kaggle`` executable found on PATH called. Datasets:
``kaggle datasets list --mine --csv`` (your own datasets, parsed as CSV) decides between ``version`` (listed) and
``create`` (not listed); no decision is read from the CLI's English messages. A failed call is retried a bounded
number of times, then stops with the command and its exit status. Directories are uploaded with ``-r zip`` so
sub-folders survive.
``--dry-run`` prints the metadata, the staged trees and the commands, stages nothing and calls nothing.
Credentials are only looked for (never read into output): a missing one is a one-line error before any staging.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggle_utils import __version__, paths
from kaggle_utils.config import ConfigError, from_dict, read_yaml
from kaggle_utils.errors import KitError
from kaggle_utils.io import atomic_write_text
from kaggle_utils.kaggle_env import python_tag, wheel_sets

USERNAME_PLACEHOLDER = "your-kaggle-username"
DATASET_META = "dataset-metadata.json"
KERNEL_META = "kernel-metadata.json"
PIP_COMMAND: tuple[str, ...] = (sys.executable, "-m", "pip")  # tests point this at a recording fake
TARGETS = ("code", "wheels", "cache", "runs", "pretrained", "kernels", "meta", "all")
ALL_ORDER = ("code", "wheels", "cache", "runs", "pretrained", "kernels")  # datasets before the kernels that use them
# machine_shape values the kaggle CLI documents for `kernels push` ("NvidiaTeslaT4" is GPU T4 x2); "none" = CPU.
ACCELERATORS = (
    "none", "NvidiaTeslaT4", "NvidiaTeslaT4Highmem", "NvidiaTeslaP100", "NvidiaL4", "NvidiaL4X1", "NvidiaTeslaA100",
    "NvidiaH100", "NvidiaRtxPro6000", "TpuV38", "Tpu1VmV38", "TpuV5E8", "TpuV6E8",
)
PINNING_TYPES = ("original", "latest")  # docker_image_pinning_type values `kaggle kernels push` accepts
# Kaggle's default notebook image runs Python 3.12 since December 2025 (Kaggle/docker-python "Upgrade to Python 3.12");
# the competition ran on image 31154 with Python 3.11.
KAGGLE_DEFAULT_PYTHON = "3.12"
COMPETITION_IMAGE_PYTHON = "3.11"
SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
USER_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{1,49}$")
# Never staged; and their contents join the secrets a staged file must not contain.
CREDENTIAL_NAMES = {"kaggle.json", "access_token", "access_token.txt", "credentials.json", ".env", ".netrc"}
CREDENTIAL_SUFFIXES = (".token", ".pem", ".key")
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints", ".git", ".kaggle", ".mypy_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp")
# A failed kaggle call is tried CLI_ATTEMPTS times in all, waiting RETRY_DELAYS_S between tries (tests set 0).
CLI_ATTEMPTS = 3
RETRY_DELAYS_S: tuple[float, ...] = (5.0, 20.0)
LIST_PAGE_SIZE = 200  # the CLI's maximum
MAX_LIST_PAGES = 50
NEXT_PAGE_PREFIX = "Next Page Token = "  # how `kaggle datasets list` prints the next page's token
SECRET_SCAN_MAX_BYTES = 4 << 20  # credentials live in small text files; big arrays are not scanned
MIN_SECRET_LEN = 8


class KagglePushError(KitError):
    """A settings, metadata, credential or CLI problem; the message names the file or setting."""


# --------------------------------------------------------------------------------------------------------------------
# Settings (kaggle.yaml)


@dataclass
class DatasetSettings:
    slug: str = ""
    title: str = ""
    include: tuple[str, ...] = ()  # code dataset only: files / folders relative to the settings file


@dataclass
class DatasetsSettings:
    code: DatasetSettings = field(default_factory=DatasetSettings)
    wheels: DatasetSettings = field(default_factory=DatasetSettings)
    cache: DatasetSettings = field(default_factory=DatasetSettings)
    pretrained: DatasetSettings = field(default_factory=DatasetSettings)


@dataclass
class RunsSettings:
    slug_prefix: str = "rsna-iad-run"
    title_prefix: str = "RSNA IAD run"
    names: tuple[str, ...] = ()


@dataclass
class WheelsSettings:
    requirements: str = "kaggle_wheels.txt"
    # One wheel set per Python, in <wheels>/cpXY/: 3.12 is Kaggle's default image since December 2025, 3.11 the image
    # the competition ran on (a kernel pinned to it keeps it).
    python_versions: tuple[str, ...] = ("3.11", "3.12")
    implementation: str = "cp"
    max_glibc: str = "2.35"  # Kaggle's image (Ubuntu 22.04, glibc 2.35) accepts manylinux tags up to 2_35
    arch: str = "x86_64"


@dataclass
class KernelSettings:
    slug: str = ""
    title: str = ""
    notebook: str = ""
    inputs: tuple[str, ...] = ()
    accelerator: str = "none"
    internet: bool = False
    optional: bool = False
    docker_image_pinning_type: str = ""  # "" = the settings' default


@dataclass
class KaggleSettings:
    username: str = USERNAME_PLACEHOLDER
    competition: str = "rsna-intracranial-aneurysm-detection"
    public: bool = False
    license: str = "CC0-1.0"
    meta_dir: str = "datasets_meta"
    submission_file: str = "submission.parquet"
    submission_kernel: str = "inference"
    # "original": every later version of a kernel runs on the image its first version ran on (a late submission stays
    # on the environment it was tested with); "latest": always Kaggle's newest image.
    docker_image_pinning_type: str = "original"
    datasets: DatasetsSettings = field(default_factory=DatasetsSettings)
    runs: RunsSettings = field(default_factory=RunsSettings)
    external: dict[str, str] = field(default_factory=dict)
    wheels: WheelsSettings = field(default_factory=WheelsSettings)
    kernels: dict[str, Any] = field(default_factory=dict)  # name -> KernelSettings (converted in load_settings)
    root: Path = Path(".")  # folder of the settings file; every relative path is resolved against it
    source: Path = Path("kaggle.yaml")


def load_settings(path: str | os.PathLike | None = None, username: str | None = None) -> KaggleSettings:
    """Read and check the settings file; ``username`` (or KAGGLE_USERNAME) overrides the file's placeholder."""
    path = paths.kaggle_settings(path)
    raw = read_yaml(path)
    if "root" in raw or "source" in raw:
        raise KagglePushError(f"{path}: 'root' and 'source' are not settings keys")
    try:
        settings = from_dict(KaggleSettings, raw, str(path))
        settings.kernels = {
            name: from_dict(KernelSettings, value or {}, f"{path}: kernels.{name}")
            for name, value in (settings.kernels or {}).items()
        }
    except ConfigError as exc:
        raise KagglePushError(str(exc)) from None
    settings.root, settings.source = path.resolve().parent, path
    settings.username = username or os.environ.get("KAGGLE_USERNAME") or settings.username
    check_settings(settings)
    return settings


def check_slug(value: str, what: str, min_len: int = 3, max_len: int = 50) -> str:
    """A Kaggle slug: lowercase letters, digits and single hyphens, ``min_len``..``max_len`` characters."""
    if not isinstance(value, str) or not SLUG_RE.match(value):
        raise KagglePushError(f"{what}: slug {value!r} must be lowercase letters, digits and single hyphens")
    if not min_len <= len(value) <= max_len:
        raise KagglePushError(f"{what}: slug {value!r} must be {min_len} to {max_len} characters long")
    return value


def check_ref(ref: str, what: str) -> str:
    """``owner/slug`` with a valid username and slug."""
    if not isinstance(ref, str) or ref.count("/") != 1:
        raise KagglePushError(f"{what}: {ref!r} must be of the form user/slug")
    owner, slug = ref.split("/")
    if not USER_RE.match(owner):
        raise KagglePushError(f"{what}: user {owner!r} in {ref!r} must be lowercase letters, digits, '-' or '_'")
    check_slug(slug, what)
    return ref


def slug_of_title(title: str) -> str:
    """The slug Kaggle derives from a title (lowercase, runs of other characters -> one hyphen)."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def check_title(title: str, what: str, min_len: int, max_len: int = 50) -> str:
    if not isinstance(title, str) or not min_len <= len(title.strip()) <= max_len:
        raise KagglePushError(f"{what}: title {title!r} must be {min_len} to {max_len} characters long")
    return title


def check_settings(s: KaggleSettings) -> None:
    """Everything that can be checked from the settings alone (slugs, titles, accelerators, inputs)."""
    where = str(s.source)
    if s.username != USERNAME_PLACEHOLDER and not USER_RE.match(s.username):
        raise KagglePushError(f"{where}: username {s.username!r} must be lowercase letters, digits, '-' or '_'")
    check_slug(s.competition, f"{where}: competition")
    for key in ("code", "wheels", "cache", "pretrained"):
        ds = getattr(s.datasets, key)
        check_slug(ds.slug, f"{where}: datasets.{key}", min_len=6)
        check_title(ds.title, f"{where}: datasets.{key}", min_len=6)
    if not s.datasets.code.include:
        raise KagglePushError(f"{where}: datasets.code.include is empty (list kaggle_utils, configs, ...)")
    for name in s.runs.names:
        check_slug(run_slug(s, name), f"{where}: runs.names {name!r}", min_len=6)
        check_title(f"{s.runs.title_prefix} {name}", f"{where}: runs.names {name!r}", min_len=6)
    for name, ref in s.external.items():
        check_ref(ref, f"{where}: external.{name}")
    if not s.kernels:
        raise KagglePushError(f"{where}: no kernels defined")
    if s.submission_kernel not in s.kernels:
        raise KagglePushError(f"{where}: submission_kernel {s.submission_kernel!r} is not one of {list(s.kernels)}")
    for name, k in s.kernels.items():
        check_kernel_settings(s, name, k)


def check_kernel_settings(s: KaggleSettings, name: str, k: KernelSettings) -> None:
    where = f"{s.source}: kernels.{name}"
    check_slug(k.slug, where, min_len=5)
    check_title(k.title, where, min_len=5)
    if slug_of_title(k.title) != k.slug:
        raise KagglePushError(f"{where}: title {k.title!r} gives slug {slug_of_title(k.title)!r}, not {k.slug!r}")
    if not k.notebook.endswith(".ipynb"):
        raise KagglePushError(f"{where}: notebook {k.notebook!r} must be an .ipynb path relative to {s.source}")
    if k.accelerator not in ACCELERATORS:
        raise KagglePushError(f"{where}: accelerator {k.accelerator!r} is not one of {list(ACCELERATORS)}")
    if pinning_type(s, name) not in PINNING_TYPES:
        raise KagglePushError(f"{where}: docker_image_pinning_type {pinning_type(s, name)!r} is not one of "
                              f"{list(PINNING_TYPES)}")
    known = input_names(s)
    for item in k.inputs:
        if item not in known:
            raise KagglePushError(f"{where}: input {item!r} is not defined; known inputs: {sorted(known)}")
    if "runs" in k.inputs and not s.runs.names:
        raise KagglePushError(f"{where}: input 'runs' but runs.names is empty in {s.source}")
    if name == s.submission_kernel:
        # A code-competition submission runs offline, on the competition's data.
        if k.internet:
            raise KagglePushError(f"{where}: the submission kernel must have internet: false")
        if "competition" not in k.inputs:
            raise KagglePushError(f"{where}: the submission kernel must list 'competition' in its inputs")


def pinning_type(s: KaggleSettings, name: str) -> str:
    return s.kernels[name].docker_image_pinning_type or s.docker_image_pinning_type


def input_names(s: KaggleSettings) -> set[str]:
    return {"competition", "code", "wheels", "cache", "pretrained", "runs", *s.external}


def run_slug(s: KaggleSettings, run_name: str) -> str:
    return f"{s.runs.slug_prefix}-{slug_of_title(run_name)}"


def ref(s: KaggleSettings, slug: str) -> str:
    return f"{s.username}/{slug}"


# --------------------------------------------------------------------------------------------------------------------
# Metadata


def dataset_metadata(s: KaggleSettings, slug: str, title: str) -> dict:
    """A dataset-metadata.json body (privacy is the CLI's ``-u`` flag at creation)."""
    return {"title": title, "id": ref(s, slug), "licenses": [{"name": s.license}]}


def datasets_by_key(s: KaggleSettings) -> dict[str, dict]:
    """Every dataset the kit uploads, keyed ``code``, ``wheels``, ``cache``, ``pretrained``, ``run-<name>``."""
    datasets = {f.name: getattr(s.datasets, f.name) for f in dataclasses.fields(s.datasets)}
    out = {key: dataset_metadata(s, ds.slug, ds.title) for key, ds in datasets.items()}
    for name in s.runs.names:
        out[f"run-{name}"] = dataset_metadata(s, run_slug(s, name), f"{s.runs.title_prefix} {name}")
    return out


def input_refs(s: KaggleSettings, item: str) -> list[str]:
    """The dataset refs one kernel input name stands for."""
    if item == "runs":
        return [ref(s, run_slug(s, name)) for name in s.runs.names]
    if item in s.external:
        return [s.external[item]]
    return [ref(s, getattr(s.datasets, item).slug)]


def kernel_metadata(s: KaggleSettings, name: str) -> dict:
    """A kernel-metadata.json body; ``enable_internet`` is always explicit (the CLI's default is on)."""
    k = s.kernels[name]
    sources = [r for item in k.inputs if item != "competition" for r in input_refs(s, item)]
    meta = {
        "id": ref(s, k.slug),
        "title": k.title,
        "code_file": Path(k.notebook).name,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": not s.public,
        "enable_gpu": k.accelerator.startswith("Nvidia"),
        "enable_tpu": k.accelerator.startswith("Tpu"),
        "enable_internet": bool(k.internet),
        "dataset_sources": sources,
        "competition_sources": [s.competition] if "competition" in k.inputs else [],
        "kernel_sources": [],
        "model_sources": [],
        "docker_image_pinning_type": pinning_type(s, name),
    }
    if k.accelerator != "none":
        meta["machine_shape"] = k.accelerator  # e.g. NvidiaTeslaT4 = GPU T4 x2 (enable_gpu alone gives one GPU type)
    return meta


def kernel_python_lines(s: KaggleSettings, names: list[str]) -> list[str]:
    """Which Python the pushed kernels will run, and whether the wheels cover it (shown by the dry run)."""
    built = list(s.wheels.python_versions)
    lines = []
    for name in names:
        pin = pinning_type(s, name)
        if pin == "latest":
            lines.append(f"kernel {name}: docker_image_pinning_type latest -> Kaggle's newest image (Python "
                         f"{KAGGLE_DEFAULT_PYTHON} today) on every version")
        else:
            lines.append(f"kernel {name}: docker_image_pinning_type original -> a new kernel gets today's default "
                         f"image (Python {KAGGLE_DEFAULT_PYTHON}); later versions keep the image its first version ran "
                         f"on (a kernel first run on the competition's image keeps Python {COMPETITION_IMAGE_PYTHON})")
    for version in (KAGGLE_DEFAULT_PYTHON, COMPETITION_IMAGE_PYTHON):
        if version not in built:
            lines.append(f"warning: no wheels are built for Python {version} (wheels.python_versions: {built}); a "
                         "kernel on that image stops in its bootstrap cell")
    lines.append(f"wheels are built for Python {', '.join(built)}")
    return lines


def all_metadata(s: KaggleSettings) -> dict[str, dict]:
    """``datasets_meta/``-relative path -> metadata, for every dataset and kernel in the settings."""
    out = {f"{key}/{DATASET_META}": meta for key, meta in datasets_by_key(s).items()}
    out.update({f"kernel-{name}/{KERNEL_META}": kernel_metadata(s, name) for name in s.kernels})
    return out


def known_sources(s: KaggleSettings) -> set[str]:
    return {meta["id"] for meta in datasets_by_key(s).values()} | set(s.external.values())


def validate_dataset_metadata(meta: dict, where: str) -> None:
    """The checks ``kaggle datasets create`` makes, before any call."""
    for key in ("id", "title", "licenses"):
        if key not in meta:
            raise KagglePushError(f"{where}: {DATASET_META} lacks {key!r}")
    owner, slug = check_ref(meta["id"], where).split("/")
    check_slug(slug, where, min_len=6)
    check_title(meta["title"], where, min_len=6)
    if not isinstance(meta["licenses"], list) or len(meta["licenses"]) != 1:
        raise KagglePushError(f"{where}: {DATASET_META} must name exactly one license")


def validate_kernel_metadata(meta: dict, folder_files: set[str], sources: set[str], where: str) -> None:
    """The checks ``kaggle kernels push`` makes, plus: internet explicit, every source one the settings define."""
    for key in ("id", "title", "code_file", "language", "kernel_type", "enable_internet"):
        if key not in meta:
            raise KagglePushError(f"{where}: {KERNEL_META} lacks {key!r}")
    owner, slug = check_ref(meta["id"], where).split("/")
    check_title(meta["title"], where, min_len=5)
    if slug_of_title(meta["title"]) != slug:
        raise KagglePushError(f"{where}: title {meta['title']!r} does not resolve to slug {slug!r}")
    if meta["code_file"] not in folder_files:
        raise KagglePushError(f"{where}: code file {meta['code_file']!r} is not in the staged folder")
    if not isinstance(meta["enable_internet"], bool):
        raise KagglePushError(f"{where}: enable_internet must be true or false")
    unknown = [r for r in meta.get("dataset_sources", []) if r not in sources]
    if unknown:
        raise KagglePushError(f"{where}: dataset source(s) {unknown} are not defined in the settings")
    shape = meta.get("machine_shape", "none")
    if shape not in ACCELERATORS:
        raise KagglePushError(f"{where}: machine_shape {shape!r} is not one of {list(ACCELERATORS)}")
    if meta.get("docker_image_pinning_type", "original") not in PINNING_TYPES:
        raise KagglePushError(f"{where}: docker_image_pinning_type must be one of {list(PINNING_TYPES)}")


def write_meta(s: KaggleSettings) -> list[Path]:
    """(Re)write every generated metadata file under the settings' ``meta_dir`` (atomically, stable JSON)."""
    out_dir = s.root / s.meta_dir
    wanted = all_metadata(s)
    written = []
    for rel, meta in wanted.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write_text(path, json.dumps(meta, indent=2) + "\n"))
    # A dataset or kernel removed from the settings must not leave its old metadata behind.
    for stale in [*out_dir.glob(f"*/{DATASET_META}"), *out_dir.glob(f"*/{KERNEL_META}")]:
        if stale.relative_to(out_dir).as_posix() not in wanted:
            stale.unlink()
            if not any(stale.parent.iterdir()):
                stale.parent.rmdir()
    return written


# --------------------------------------------------------------------------------------------------------------------
# Credentials. The order is the kaggle 2.x CLI's own (KaggleApi.authenticate): an access token, else a legacy username +
# key, else an OAuth login. The token search and the OAuth file are the library's own (kagglesdk); only the legacy
# kaggle.json location is restated (KaggleApi computes it in its class body, and importing `kaggle` authenticates over
# the network and creates the folder). Values are only ever compared against staged files, never printed.


def legacy_config_file() -> Path:
    """The kaggle.json the CLI reads: KAGGLE_CONFIG_DIR, else ~/.kaggle, else (Linux, no ~/.kaggle) the XDG folder."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"]).expanduser() / "kaggle.json"
    home = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not home.exists():
        home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    return home / "kaggle.json"


def _legacy_keys(config: Path) -> dict[str, str]:
    """Where the CLI's legacy ``username`` and ``key`` come from: the file, overridden by KAGGLE_USERNAME/KAGGLE_KEY."""
    found: dict[str, str] = {}
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except ValueError:  # the CLI ignores an unreadable kaggle.json too
            data = {}
        found = {k: str(config) for k in ("username", "key") if isinstance(data, dict) and data.get(k)}
    for key in ("username", "key"):
        if os.environ.get(f"KAGGLE_{key.upper()}"):
            found[key] = f"KAGGLE_{key.upper()}"
    return found


def credential_source() -> str | None:
    """Which credential the CLI would use first (a description, never the value), or None when there is none.
    An access token is taken as found; the CLI checks it online and falls back to the next source if it is refused."""
    from kagglesdk import KaggleCredentials, get_access_token_from_env

    token, where = get_access_token_from_env()
    if token:
        return f"access token ({where})"
    legacy = _legacy_keys(legacy_config_file())
    if {"username", "key"} <= set(legacy):
        sources = sorted(set(legacy.values()))
        return f"username + key ({' + '.join(sources)})"
    oauth = Path(KaggleCredentials.DEFAULT_CREDENTIALS_FILE).expanduser()
    if _has_refresh_token(oauth):
        return f"OAuth login ({oauth})"
    return None


def _has_refresh_token(path: Path) -> bool:
    """The CLI uses an OAuth login only when its credentials file is JSON holding a ``refresh_token``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # missing or unreadable: the CLI skips it too
        return False
    return isinstance(data, dict) and bool(data.get("refresh_token"))


def require_credentials() -> str:
    source = credential_source()
    if source is None:
        raise KagglePushError(
            "no Kaggle credentials: set KAGGLE_API_TOKEN or save a token to ~/.kaggle/access_token, put kaggle.json in "
            "~/.kaggle (or KAGGLE_CONFIG_DIR), set KAGGLE_USERNAME and KAGGLE_KEY, or run `kaggle auth login`"
        )
    return source


def credential_files() -> list[Path]:
    """Every file that may hold a credential for the CLI (scanned for values, wider than the one the CLI reads)."""
    from kagglesdk import KaggleCredentials

    home = Path.home() / ".kaggle"
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    files = [legacy_config_file(), home / "kaggle.json", xdg / "kaggle.json", home / "access_token",
             home / "access_token.txt", Path(KaggleCredentials.DEFAULT_CREDENTIALS_FILE).expanduser()]
    return list(dict.fromkeys(files))


def secret_strings(text: str) -> set[str]:
    """Candidate secrets in a credential file: JSON string values (not the username), else the stripped text."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        found = {v for k, v in data.items() if isinstance(v, str) and k not in ("username", "auth_method")}
    else:
        found = {text.strip()}
    return {v for v in found if len(v) >= MIN_SECRET_LEN}


def read_secret_file(path: Path) -> set[str]:
    if not path.is_file() or path.stat().st_size > SECRET_SCAN_MAX_BYTES:
        return set()
    return secret_strings(path.read_text(errors="replace"))


def known_secrets() -> set[str]:
    """Every credential value this machine holds for the CLI (environment and credential files)."""
    found: set[str] = set()
    for var in ("KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        value = os.environ.get(var, "")
        if value and Path(value).expanduser().is_file():  # KAGGLE_API_TOKEN may name a token file
            found |= read_secret_file(Path(value).expanduser())
        elif len(value) >= MIN_SECRET_LEN:
            found.add(value)
    for path in credential_files():
        found |= read_secret_file(path)
    return found


def is_credential_name(name: str) -> bool:
    return name in CREDENTIAL_NAMES or name.endswith(CREDENTIAL_SUFFIXES)


# --------------------------------------------------------------------------------------------------------------------
# Staging plan: what each upload folder holds (relative path -> source file), built without copying anything.


@dataclass
class Upload:
    kind: str  # "dataset" or "kernel"
    label: str  # e.g. "dataset code", "kernel inference"
    folder: str  # the staged folder's name
    metadata: dict
    files: dict[str, Path] = field(default_factory=dict)  # staged relative posix path -> source file
    problems: list[str] = field(default_factory=list)  # inputs not available (a dry run reports, a push stops)
    excluded_credentials: list[str] = field(default_factory=list)
    secrets_from_excluded: set[str] = field(default_factory=set)

    @property
    def meta_name(self) -> str:
        return DATASET_META if self.kind == "dataset" else KERNEL_META


def walk_files(src: Path, prefix: str, upload: Upload) -> None:
    """Add every file under ``src`` as ``prefix/<relative path>``: no caches, dotfiles or credential-like files."""
    if src.is_file():
        add_file(src, prefix or src.name, upload)
        return
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(src)
        for name in sorted(filenames):
            rel = (Path(prefix) / rel_dir / name).as_posix() if prefix else (rel_dir / name).as_posix()
            add_file(Path(dirpath) / name, rel, upload)


def add_file(path: Path, rel: str, upload: Upload) -> None:
    name = path.name
    if is_credential_name(name) or (name.startswith(".") and is_credential_name(name.lstrip("."))):
        upload.excluded_credentials.append(rel)
        upload.secrets_from_excluded |= read_secret_file(path)
        return
    if name.startswith(".") or name.endswith(SKIP_SUFFIXES):
        return
    upload.files[rel] = path


def code_upload(s: KaggleSettings) -> Upload:
    up = Upload("dataset", "dataset code", "code", datasets_by_key(s)["code"])
    for item in s.datasets.code.include:
        src = s.root / item
        if not src.exists():
            raise KagglePushError(f"{s.source}: datasets.code.include names {item!r}, which does not exist")
        walk_files(src, Path(item).as_posix(), up)
    return up


def requirement_names(req_file: Path) -> list[str]:
    """Distribution names listed in a requirements file (comments and options skipped)."""
    if not req_file.is_file():
        raise KagglePushError(f"wheels list {req_file} does not exist")
    names = []
    for line in req_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if match:
            names.append(match.group(0))
    return names


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_wheels(req_file: Path, folder: Path) -> list[str]:
    """Listed packages with no ``.whl`` in ``folder``."""
    have = {canonical(p.name.split("-")[0]) for p in folder.glob("*.whl")} if folder.is_dir() else set()
    return [n for n in requirement_names(req_file) if canonical(n) not in have]


def wheels_upload(s: KaggleSettings, wheels_dir: Path) -> Upload:
    """The wheels dataset: ``kaggle_wheels.txt`` and one ``cpXY/`` folder per Python listed in the settings."""
    up = Upload("dataset", "dataset wheels", "wheels", datasets_by_key(s)["wheels"])
    req_file = s.root / s.wheels.requirements
    if not wheels_dir.is_dir():
        up.problems.append(f"wheels folder {wheels_dir} does not exist (run `python submit.py wheels` first)")
        return up
    for version in s.wheels.python_versions:
        tag = python_tag(version)
        missing = missing_wheels(req_file, wheels_dir / tag)
        if missing:
            up.problems.append(f"wheels folder {wheels_dir / tag} (Python {version}) lacks {missing} "
                               "(run `python submit.py wheels`)")
        for whl in sorted((wheels_dir / tag).glob("*.whl")):
            up.files[f"{tag}/{whl.name}"] = whl
    up.files[Path(s.wheels.requirements).name] = req_file
    return up


def folder_upload(label: str, folder: str, meta: dict, src: Path | None, missing_hint: str) -> Upload:
    """A dataset whose content is one local folder (cache, run, pretrained weights)."""
    up = Upload("dataset", label, folder, meta)
    if src is None or not src.is_dir():
        up.problems.append(f"{label}: {missing_hint}" + (f" ({src} does not exist)" if src else ""))
        return up
    walk_files(src, "", up)
    if not up.files:
        up.problems.append(f"{label}: folder {src} holds no files")
    return up


def cache_upload(s: KaggleSettings, cache: str | None) -> Upload:
    src = paths.cache_dir(cache, must_exist=False) if (cache or os.environ.get("KAGGLE_UTILS_CACHE_DIR")) else None
    up = folder_upload("dataset cache", "cache", datasets_by_key(s)["cache"], src,
                       "pass --cache or set KAGGLE_UTILS_CACHE_DIR")
    if src is not None and src.is_dir() and not (src / "manifest.parquet").is_file():
        up.problems.append(f"dataset cache: {src} has no manifest.parquet (not a preprocessed cache)")
    return up


def run_uploads(s: KaggleSettings, runs: list[str] | None) -> list[Upload]:
    """One dataset per run folder; every folder's name must be listed in the settings' runs.names."""
    given = runs or [p for p in os.environ.get("KAGGLE_UTILS_RUNS", "").split(os.pathsep) if p]
    if not given:
        return [folder_upload(f"dataset run-{name}", f"run-{name}", datasets_by_key(s)[f"run-{name}"], None,
                              "pass --runs or set KAGGLE_UTILS_RUNS") for name in s.runs.names]
    uploads = []
    for raw in given:
        src = Path(raw).expanduser()
        name = src.name
        if name not in s.runs.names:
            raise KagglePushError(
                f"run folder {src}: its name {name!r} is not in runs.names of {s.source} {list(s.runs.names)} "
                "(add it so the inference kernel attaches its dataset)")
        up = folder_upload(f"dataset run-{name}", f"run-{name}", datasets_by_key(s)[f"run-{name}"], src,
                           "pass --runs or set KAGGLE_UTILS_RUNS")
        if src.is_dir() and not (src / "config.yaml").is_file():
            up.problems.append(f"dataset run-{name}: {src} has no config.yaml (not a run folder)")
        uploads.append(up)
    return uploads


def pretrained_upload(s: KaggleSettings, folder: str | None) -> Upload:
    src = paths.pretrained_dir(folder)
    return folder_upload("dataset pretrained", "pretrained", datasets_by_key(s)["pretrained"], src,
                         "pass --pretrained-dir or set KAGGLE_UTILS_PRETRAINED_DIR")


def kernel_uploads(s: KaggleSettings, only: list[str] | None) -> tuple[list[Upload], list[str]]:
    """One staged folder per kernel (metadata + notebook); optional kernels without a notebook are skipped."""
    names = only or list(s.kernels)
    unknown = [n for n in names if n not in s.kernels]
    if unknown:
        raise KagglePushError(f"--only: unknown kernel(s) {unknown}; defined in {s.source}: {list(s.kernels)}")
    uploads, notes = [], []
    for name in names:
        k = s.kernels[name]
        notebook = s.root / k.notebook
        up = Upload("kernel", f"kernel {name}", f"kernel-{name}", kernel_metadata(s, name))
        if not notebook.is_file():
            if k.optional:
                notes.append(f"kernel {name}: skipped, optional notebook {k.notebook} does not exist")
                continue
            up.problems.append(f"kernel {name}: notebook {notebook} does not exist")
        else:
            check_notebook(notebook)
            up.files[notebook.name] = notebook
        uploads.append(up)
    return uploads, notes


def check_notebook(path: Path) -> None:
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise KagglePushError(f"notebook {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise KagglePushError(f"notebook {path} has no 'cells' list (not a Jupyter notebook)")


def build_plan(s: KaggleSettings, args: argparse.Namespace) -> tuple[list[Upload], list[str]]:
    """Uploads for the requested targets, in dependency order, and notes about what was skipped."""
    targets = ALL_ORDER if "all" in args.targets else [t for t in ALL_ORDER if t in args.targets]
    uploads: list[Upload] = []
    notes: list[str] = []
    for target in targets:
        if target == "code":
            uploads.append(code_upload(s))
        elif target == "wheels":
            uploads.append(wheels_upload(s, paths.wheels_dir(args.wheels_dir)))
        elif target == "cache":
            uploads.append(cache_upload(s, args.cache))
        elif target == "runs":
            uploads.extend(run_uploads(s, args.runs))
        elif target == "pretrained":
            if "all" in args.targets and paths.pretrained_dir(args.pretrained_dir) is None:
                notes.append("dataset pretrained: skipped (no --pretrained-dir / KAGGLE_UTILS_PRETRAINED_DIR); "
                             f"the train kernel expects {datasets_by_key(s)['pretrained']['id']} to exist")
                continue
            uploads.append(pretrained_upload(s, args.pretrained_dir))
        elif target == "kernels":
            kernels, kernel_notes = kernel_uploads(s, args.only)
            uploads.extend(kernels)
            notes.extend(kernel_notes)
    return uploads, notes


def validate_plan(s: KaggleSettings, uploads: list[Upload], secrets: set[str]) -> None:
    """Metadata checks and a credential scan of every file to be staged, before anything is staged or called."""
    sources = known_sources(s)
    all_secrets = secrets | {v for up in uploads for v in up.secrets_from_excluded}
    for up in uploads:
        if up.kind == "dataset":
            validate_dataset_metadata(up.metadata, up.label)
        elif not up.problems:
            validate_kernel_metadata(up.metadata, set(up.files), sources, up.label)
        scan_for_secrets(up, all_secrets)


def scan_for_secrets(up: Upload, secrets: set[str]) -> None:
    """Stop when a file to be staged contains a credential value (the message names the file, not the value)."""
    needles = [v.encode() for v in secrets if len(v) >= MIN_SECRET_LEN]
    if not needles:
        return
    for rel, src in up.files.items():
        if src.stat().st_size > SECRET_SCAN_MAX_BYTES:
            continue
        data = src.read_bytes()
        if any(n in data for n in needles):
            raise KagglePushError(f"{up.label}: {src} contains a Kaggle credential; remove it before pushing")


# --------------------------------------------------------------------------------------------------------------------
# Printing


def render_tree(up: Upload, max_per_dir: int = 12) -> list[str]:
    """The staged folder as indented lines (files first, then sub-folders with their file counts); long folders are
    summarised so a cache of thousands of series stays readable."""
    files_in: dict[str, list[str]] = {"": []}
    for rel in sorted([up.meta_name, *up.files]):
        parts = rel.split("/")
        for i in range(1, len(parts)):
            files_in.setdefault("/".join(parts[:i]), [])
        files_in["/".join(parts[:-1])].append(parts[-1])
    lines: list[str] = []

    def emit(folder: str, depth: int) -> None:
        indent = "  " * (depth + 1)
        files = files_in[folder]
        lines.extend(indent + name for name in files[:max_per_dir])
        if len(files) > max_per_dir:
            lines.append(indent + f"... and {len(files) - max_per_dir} more files")
        for sub in sorted(d for d in files_in if d and d.rpartition("/")[0] == folder):
            count = sum(len(v) for d, v in files_in.items() if d == sub or d.startswith(sub + "/"))
            lines.append(indent + f"{sub.rpartition('/')[2]}/ ({count} files)")
            emit(sub, depth + 1)

    emit("", 0)
    return lines


def dataset_commands(up: Upload, folder: Path, message: str, public: bool) -> dict[str, list[str]]:
    create = ["kaggle", "datasets", "create", "-p", str(folder), "-r", "zip"] + (["-u"] if public else [])
    return {
        "version": ["kaggle", "datasets", "version", "-p", str(folder), "-r", "zip", "-m", message],
        "create": create,
    }


def list_mine_command(page_token: str | None = None) -> list[str]:
    """Your own datasets as CSV: the structured answer that decides create vs version."""
    cmd = ["kaggle", "datasets", "list", "--mine", "--csv", "--page-size", str(LIST_PAGE_SIZE)]
    return cmd + (["--page-token", page_token] if page_token else [])


def kernel_command(folder: Path) -> list[str]:
    return ["kaggle", "kernels", "push", "-p", str(folder)]


def show(cmd: list[str], note: str = "") -> None:
    print("$ " + shlex.join(cmd) + (f"    # {note}" if note else ""), flush=True)


def print_upload(up: Upload, folder: Path) -> None:
    privacy = "" if up.kind == "dataset" else (" private" if up.metadata.get("is_private") else " public")
    print(f"\n== {up.label}: {up.metadata['id']}{privacy}")
    print(f"{up.meta_name}:")
    print("\n".join("  " + line for line in json.dumps(up.metadata, indent=2).splitlines()))
    print(f"staged tree {folder}/ ({len(up.files) + 1} files):")
    print("\n".join(render_tree(up)))
    for rel in up.excluded_credentials:
        print(f"  (left out credential-like file {rel})")
    for problem in up.problems:
        print(f"  MISSING: {problem}")


# --------------------------------------------------------------------------------------------------------------------
# Running the kaggle CLI


def kaggle_executable() -> str:
    exe = shutil.which("kaggle")
    if exe is None:
        raise KagglePushError("the kaggle CLI is not on PATH (pip install kaggle)")
    return exe


def run_cli(cmd: list[str], exe: str, capture: bool = False) -> subprocess.CompletedProcess:
    """Run one kaggle command (``cmd[0]`` replaced by the executable found on PATH)."""
    return subprocess.run([exe, *cmd[1:]], capture_output=capture, text=True, check=False)


def _first_line(text: str | None) -> str:
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "no output")


def _wait_before_retry(result: subprocess.CompletedProcess, attempt: int) -> None:
    delay = RETRY_DELAYS_S[min(attempt - 1, len(RETRY_DELAYS_S) - 1)]
    print(f"  failed (exit {result.returncode}, attempt {attempt}/{CLI_ATTEMPTS}); retrying in {delay:g} s",
          file=sys.stderr, flush=True)
    time.sleep(delay)


def run_cli_retrying(cmd: list[str], exe: str, capture: bool = False) -> subprocess.CompletedProcess:
    """Run a kaggle command; a non-zero exit is retried up to CLI_ATTEMPTS times in all (waits RETRY_DELAYS_S), then
    stops with the command, its exit status and (when captured) the first line it printed on stderr."""
    for attempt in range(1, CLI_ATTEMPTS + 1):
        result = run_cli(cmd, exe, capture)
        if result.returncode == 0:
            return result
        if attempt < CLI_ATTEMPTS:
            _wait_before_retry(result, attempt)
    said = f": {_first_line(result.stderr)}" if capture else " (its output is above)"
    raise KagglePushError(f"`{shlex.join(cmd)}` failed {CLI_ATTEMPTS} times, last exit {result.returncode}{said}; "
                          "check the network, your credentials and that the competition rules are accepted")


def parse_dataset_listing(stdout: str) -> tuple[set[str], str | None]:
    """Refs (lowercase ``owner/slug``) in one page of ``kaggle datasets list --csv`` and the next page's token.
    The table is found by its CSV header (a ``ref`` column); a successful answer without one lists no dataset."""
    token, rows = None, []
    for line in stdout.splitlines():
        if line.startswith(NEXT_PAGE_PREFIX):
            token = line[len(NEXT_PAGE_PREFIX):].strip() or None
        elif line.strip():
            rows.append(line)
    header = next((i for i, row in enumerate(csv.reader(rows)) if "ref" in row), None)
    if header is None:
        return set(), token
    refs = {row["ref"].strip().lower() for row in csv.DictReader(rows[header:]) if row.get("ref")}
    return refs, token


class OwnedDatasets:
    """Your datasets on Kaggle, listed once per push (every page) and updated as the push creates new ones."""

    def __init__(self, exe: str):
        self.exe = exe
        self._refs: set[str] | None = None

    def refs(self) -> set[str]:
        if self._refs is None:
            refs: set[str] = set()
            token = None
            for _ in range(MAX_LIST_PAGES):
                cmd = list_mine_command(token)
                show(cmd)
                page, token = parse_dataset_listing(run_cli_retrying(cmd, self.exe, capture=True).stdout)
                refs |= page
                if not token:
                    break
            else:
                raise KagglePushError(f"more than {MAX_LIST_PAGES} pages of your datasets; cannot list them all")
            self._refs = refs
        return self._refs

    def exists(self, ref: str) -> bool:
        return ref.lower() in self.refs()

    def add(self, ref: str) -> None:
        self.refs().add(ref.lower())

    def refresh(self) -> None:
        self._refs = None


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem or no hard links: a plain copy does the same job
        shutil.copy2(src, dst)


def stage(up: Upload, folder: Path) -> None:
    folder.mkdir(parents=True)
    for rel, src in up.files.items():
        link_or_copy(src, folder / rel)
    (folder / up.meta_name).write_text(json.dumps(up.metadata, indent=2) + "\n")


@contextlib.contextmanager
def stage_root(arg: str | None) -> Iterator[Path]:
    """The folder the uploads are staged in: ``--stage-dir`` (kept) or a temporary folder (removed afterwards)."""
    if arg:
        root = Path(arg).expanduser()
        if root.exists() and any(root.iterdir()):
            raise KagglePushError(f"--stage-dir {root} is not empty")
        root.mkdir(parents=True, exist_ok=True)
        yield root
        return
    root = Path(tempfile.mkdtemp(prefix="kaggle_push_"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------------
# Commands


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", help="settings file (default: KAGGLE_UTILS_SETTINGS or kaggle.yaml)")
    parser.add_argument("--username", help="Kaggle username (default: KAGGLE_USERNAME, else the settings file)")
    parser.add_argument("--dry-run", action="store_true", help="print what would happen; stage and call nothing")


def push_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python submit.py push", description="stage and push datasets / kernels")
    p.add_argument("targets", nargs="+", choices=TARGETS, metavar="TARGET", help=f"one or more of {list(TARGETS)}")
    add_common(p)
    p.add_argument("-m", "--message", default=f"kaggle_utils {__version__}", help="dataset version message")
    p.add_argument("--cache", help="preprocessed cache folder (default: KAGGLE_UTILS_CACHE_DIR)")
    p.add_argument("--runs", nargs="+", help="run folders, one dataset each (default: KAGGLE_UTILS_RUNS)")
    p.add_argument("--wheels-dir", help="offline wheels (default: KAGGLE_UTILS_WHEELS_DIR or ./wheels)")
    p.add_argument("--pretrained-dir", help="pretrained weights folder (default: KAGGLE_UTILS_PRETRAINED_DIR)")
    p.add_argument("--only", nargs="+", metavar="KERNEL", help="push only these kernels (names in the settings)")
    p.add_argument("--stage-dir", help="stage here (must be empty; kept) instead of a temporary folder")
    return p


def check_username(s: KaggleSettings, dry_run: bool) -> None:
    if s.username != USERNAME_PLACEHOLDER:
        return
    msg = (f"username is the placeholder {USERNAME_PLACEHOLDER!r}: set it in {s.source}, pass --username "
           "or set KAGGLE_USERNAME")
    if not dry_run:
        raise KagglePushError(msg)
    print(f"warning: {msg}")


def cmd_push(argv: list[str]) -> int:
    args = push_parser().parse_args(argv)
    s = load_settings(args.settings, args.username)
    if "meta" in args.targets:  # generated files may keep the placeholder username: they are templates until pushed
        written = write_meta(s)
        print(f"wrote {len(written)} metadata files under {s.root / s.meta_dir}")
        if set(args.targets) == {"meta"}:
            return 0
    check_username(s, args.dry_run)
    if not args.dry_run:
        source = require_credentials()  # before anything is staged
        print(f"credentials: {source}")
    uploads, notes = build_plan(s, args)
    validate_plan(s, uploads, known_secrets())
    problems = [p for up in uploads for p in up.problems]
    if args.dry_run:
        return print_dry_run(s, args, uploads, notes, problems)
    if problems:
        raise KagglePushError("; ".join(problems))
    exe = kaggle_executable()
    write_meta(s)
    owned = OwnedDatasets(exe)
    with stage_root(args.stage_dir) as root:
        for up in uploads:
            folder = root / up.folder
            stage(up, folder)
            print_upload(up, folder)
            push_one(up, folder, args.message, s.public, exe, owned)
    for note in notes:
        print(note)
    print(f"\npushed {len(uploads)} upload(s)")
    return 0


def print_dry_run(s: KaggleSettings, args: argparse.Namespace, uploads: list[Upload], notes: list[str],
                  problems: list[str]) -> int:
    root = Path(args.stage_dir) if args.stage_dir else Path("<tmp>")
    print(f"dry run: settings {s.source}, user {s.username}; nothing is staged or called")
    if any(up.kind == "dataset" for up in uploads):
        show(list_mine_command(), "first, once: your datasets, which decide create vs version below")
    for up in uploads:
        folder = root / up.folder
        print_upload(up, folder)
        if up.kind == "dataset":
            cmds = dataset_commands(up, folder, args.message, s.public)
            show(cmds["version"], f"when {up.metadata['id']} is in the listing")
            show(cmds["create"], "when it is not")
        else:
            show(kernel_command(folder))
    kernels = [up.label.split(" ", 1)[1] for up in uploads if up.kind == "kernel"]
    if kernels:
        print()
        print("\n".join(kernel_python_lines(s, kernels)))
    for note in notes:
        print(note)
    if problems:
        print(f"\n{len(problems)} missing input(s) would stop a real push:")
        print("\n".join(f"  - {p}" for p in problems))
    return 0


def push_one(up: Upload, folder: Path, message: str, public: bool, exe: str, owned: OwnedDatasets) -> None:
    if up.kind == "kernel":
        cmd = kernel_command(folder)
        show(cmd)
        run_cli_retrying(cmd, exe)
        return
    ref_ = up.metadata["id"]
    cmds = dataset_commands(up, folder, message, public)
    if owned.exists(ref_):
        show(cmds["version"], f"{ref_} is in your datasets: new version")
        run_cli_retrying(cmds["version"], exe)
        return
    show(cmds["create"], f"{ref_} is not in your datasets: create")
    for attempt in range(1, CLI_ATTEMPTS + 1):
        result = run_cli(cmds["create"], exe)
        if result.returncode == 0:
            break
        owned.refresh()  # a create that failed late may still have made the dataset: never create it twice
        if owned.exists(ref_):
            print(f"  {ref_} exists after all (exit {result.returncode}); not created again", file=sys.stderr)
            break
        if attempt == CLI_ATTEMPTS:
            raise KagglePushError(f"`{shlex.join(cmds['create'])}` failed {CLI_ATTEMPTS} times, last exit "
                                  f"{result.returncode} (its output is above); check the metadata and your account")
        _wait_before_retry(result, attempt)
    owned.add(ref_)


def platform_tags(max_glibc: str, arch: str) -> list[str]:
    """Every manylinux tag an image with glibc ``max_glibc`` accepts, newest first, down to manylinux2014 (= 2_17;
    pip adds manylinux2010 and manylinux1 to that itself). pip does not widen a ``--platform`` tag to older glibc
    versions, so a wheel tagged only ``manylinux_2_31`` is found only when 2_31 is listed."""
    major, _, minor = max_glibc.partition(".")
    if major != "2" or not minor.isdigit() or int(minor) < 17:
        raise KagglePushError(f"wheels.max_glibc {max_glibc!r} must look like 2.35 (2.17 or newer)")
    return [f"manylinux_2_{m}_{arch}" for m in range(int(minor), 16, -1)] + [f"manylinux2014_{arch}"]


def wheels_command(s: KaggleSettings, folder: Path, version: str) -> list[str]:
    """``pip download`` of the wheels list for one Python into ``folder/cpXY`` (binary wheels only)."""
    w = s.wheels
    tag = python_tag(version)
    cmd = [*PIP_COMMAND, "download", "--only-binary=:all:", "--python-version", version,
           "--implementation", w.implementation, "--abi", tag]
    for platform in platform_tags(w.max_glibc, w.arch):
        cmd += ["--platform", platform]
    return cmd + ["-d", str(folder / tag), "-r", str(s.root / w.requirements)]


def cmd_wheels(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python submit.py wheels",
                                description="download the offline wheels the Kaggle image lacks, one set per Python")
    add_common(p)
    p.add_argument("--wheels-dir", help="download here (default: KAGGLE_UTILS_WHEELS_DIR or ./wheels)")
    p.add_argument("--python", nargs="+", metavar="X.Y", help="only these Pythons (default: wheels.python_versions)")
    args = p.parse_args(argv)
    s = load_settings(args.settings, args.username)
    folder = paths.wheels_dir(args.wheels_dir)
    req_file = s.root / s.wheels.requirements
    names = requirement_names(req_file)
    versions = list(args.python or s.wheels.python_versions)
    for version in versions:
        python_tag(version)  # a malformed version stops before any download
    cmds = {version: wheels_command(s, folder, version) for version in versions}
    if args.dry_run:
        for cmd in cmds.values():
            show(cmd)
        print(f"dry run: would download {len(names)} package(s) and their dependencies for Python "
              f"{', '.join(versions)} into {folder}/<cpXY>: {names}")
        return 0
    for version, cmd in cmds.items():
        (folder / python_tag(version)).mkdir(parents=True, exist_ok=True)
        show(cmd)
        result = subprocess.run(cmd, check=False)
        if result.returncode != 0:
            raise KagglePushError(f"pip download for Python {version} failed (exit {result.returncode}); "
                                  "see its output above")
        missing = missing_wheels(req_file, folder / python_tag(version))
        if missing:
            raise KagglePushError(f"{folder / python_tag(version)}: no wheel for {missing} after pip download")
    atomic_write_text(folder / req_file.name, req_file.read_text())
    for tag, wheels in wheel_sets(folder).items():
        size = sum((folder / tag / name).stat().st_size for name in wheels)
        print(f"{tag}: {len(wheels)} wheels, {size / 2**20:.1f} MiB in {folder / tag}")
    print("next: python submit.py push wheels")
    return 0


def cmd_submit(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python submit.py submit",
                                description="submit a code-competition kernel version (kaggle competitions submit)")
    add_common(p)
    p.add_argument("--kernel", help="USER/SLUG (default: the settings' submission kernel)")
    p.add_argument("--version", required=True, type=int, help="kernel version number, as `kaggle kernels push` says")
    p.add_argument("-m", "--message", required=True, help="submission description")
    p.add_argument("--file", help="output file the kernel writes (default: the settings' submission_file)")
    p.add_argument("--wait", type=int, metavar="SECONDS", help="wait for scoring (0 = up to 12 h)")
    args = p.parse_args(argv)
    s = load_settings(args.settings, args.username)
    kernel = args.kernel or ref(s, s.kernels[s.submission_kernel].slug)
    check_ref(kernel, "--kernel")
    if args.kernel is None:
        check_username(s, args.dry_run)
    if args.version < 1:
        raise KagglePushError(f"--version must be a positive kernel version, got {args.version}")
    if not args.message.strip():
        raise KagglePushError("-m/--message must not be empty")
    cmd = ["kaggle", "competitions", "submit", s.competition, "-k", kernel, "-v", str(args.version),
           "-f", args.file or s.submission_file, "-m", args.message]
    if args.wait is not None:
        cmd += ["--wait", str(args.wait)]
    if args.dry_run:
        show(cmd)
        print("dry run: nothing called")
        return 0
    require_credentials()
    exe = kaggle_executable()
    show(cmd)
    run_cli_retrying(cmd, exe)
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {"push": cmd_push, "wheels": cmd_wheels, "submit": cmd_submit}


def main(argv: list[str]) -> int:
    """``argv[0]`` is ``push``, ``wheels`` or ``submit``; the rest are that command's arguments."""
    if not argv or argv[0] not in COMMANDS:
        raise KagglePushError(f"expected one of {list(COMMANDS)} as the first argument, got {argv[:1]}")
    return COMMANDS[argv[0]](list(argv[1:]))
