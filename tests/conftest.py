"""Shared test setup: repository root on sys.path, small thread counts for a 2-core CI machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keep caches of converted models / prepared datasets out of the user's home during tests.
os.environ.setdefault("MNAS_CACHE_DIR", str(ROOT / ".pytest_cache" / "mnas-cache"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def one_thread():
    """One torch thread for the test (CI has 2 cores; training is deterministic per thread count); restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
