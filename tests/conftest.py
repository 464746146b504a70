"""Shared, session-scoped fixtures: a tiny synthetic competition, its cache, and a tiny trained run.

Each is built once per test session (they are the slow parts) and reused read-only by every test that needs it.
"""

from __future__ import annotations

import os

import pytest

from kaggle_utils.paths import REPO_ROOT

# Deterministic and modest thread use on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Subprocesses started by tests (python -m kaggle_utils ..., notebooks) import the kit from this checkout.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)


@pytest.fixture(scope="session")
def tiny_competition(tmp_path_factory):
    """A small synthetic competition (train + held-out part) written by the kit's own generator."""
    from kaggle_utils.synth import make_competition

    out = tmp_path_factory.mktemp("synth") / "competition"
    make_competition(out, n_series=10, n_test=4, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_cache(tiny_competition, tmp_path_factory):
    """The preprocessed cache of ``tiny_competition`` with the data section of ``configs/cpu_tiny.yaml`` (the config the
    training tests use, so a run accepts the cache), built once in-process; read it only. The default (anatomy)
    locator is cached by the ``cache`` fixture of test_cache.py and in test_infer_real.py."""
    from kaggle_utils.cache import build_cache
    from kaggle_utils.config import load_config

    out = tmp_path_factory.mktemp("cache") / "cache"
    data_cfg = load_config(REPO_ROOT / "configs" / "cpu_tiny.yaml", []).data
    build_cache(tiny_competition, out, data_cfg, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors run fastest on one thread (and a busy 2-core machine makes extra threads spin)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
