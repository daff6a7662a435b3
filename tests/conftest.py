"""Shared test setup: repository root on sys.path, caches and Ray authentication for the session, small thread
counts for a 2-core CI machine."""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keep caches of converted models / prepared datasets out of the user's home during tests.
os.environ.setdefault("MNAS_CACHE_DIR", str(ROOT / ".pytest_cache" / "mnas-cache"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One Ray authentication mode and token for every Ray process of the session (DESIGN.md, scale-out facts): the test
# cluster's nodes, its drivers and the searches the tests start. Ray reads them when it is first imported, which any
# test may do first (an address check imports Ray before tests/ray's cluster exists), so they are set here, before
# any test module is collected.
_RAY_AUTH = Path(tempfile.mkdtemp(prefix="mnas-ray-auth-"))
atexit.register(shutil.rmtree, _RAY_AUTH, ignore_errors=True)
(_RAY_AUTH / "token").write_text(secrets.token_hex(32))
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(_RAY_AUTH / "token"))


_PROGRESS = re.compile(r"^[^\n]*:\s*\d+%\|")  # a progress bar's line: "prepare fashion_mnist/train:  40%|████ ..."


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (the scripts are not a package), run once per call."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def message_lines(stderr: str) -> list[str]:
    """The non-blank lines of a command's stderr that are messages, not progress bars (a fresh cache prepares the
    dataset first, with a bar of its own)."""
    return [line for line in stderr.splitlines() if line.strip() and not _PROGRESS.match(line)]


@pytest.fixture
def one_thread():
    """One torch thread for the test (CI has 2 cores; training is deterministic per thread count); restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
