"""Shared test setup: quiet progress bars, one torch thread per xdist worker, the repo on sys.path."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LINEAGE_NO_PROGRESS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)  # two workers on two cores: no oversubscription


@pytest.fixture
def repo_root() -> Path:
    return ROOT
