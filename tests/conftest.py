"""Shared test setup: quiet progress bars, one torch thread per xdist worker (and per subprocess it
starts: OMP_NUM_THREADS is inherited), the repo on sys.path."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LINEAGE_NO_PROGRESS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # CLI and docs-command subprocesses would otherwise start one OpenMP thread per core each; with two
    # workers on two cores that oversubscription made small U-Net calls up to ~100x slower.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)  # two workers on two cores: no oversubscription


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def s64():
    """The DDPM linear schedule (T = 1000) in float64: closed-form identities hold to ~1e-12."""
    from refimpl.schedules import Schedule, linear_betas

    return Schedule(linear_betas(1000, dtype=torch.float64))


@pytest.fixture(scope="session")
def s32():
    """The float32 linear schedule (T = 1000), bit for bit diffusers' alphas_cumprod (see test_diffusers_parity)."""
    from refimpl.schedules import make_schedule

    return make_schedule("linear", 1000)
