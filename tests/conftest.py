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

from mnas_common.sources import FASHION_MNIST_ROOT  # noqa: E402  (needs ROOT on sys.path)

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


# The tests that read real Fashion-MNIST (Debian's dataset-fashion-mnist, which `make setup` installs where it can).
needs_fmnist = pytest.mark.skipif(
    not any(Path(FASHION_MNIST_ROOT, f"train-labels-idx1-ubyte{suffix}").exists() for suffix in ("", ".gz")),
    reason="Debian package dataset-fashion-mnist not installed",
)

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


@pytest.fixture(autouse=True)
def _ray_left_as_found(request):
    """A test outside tests/ray that leaves Ray initialised in the test process is an error named at that test: the
    Ray tests' session cluster could not join later ("ray.init twice"), twelve errors far from the cause. Anything
    that asks Ray's runtime context starts a local instance, so tests fake it (``nas.ray_evaluator._node``). The
    instance is shut down here, so the tests after it run as they would have."""
    watched = request.node.path.parent != ROOT / "tests" / "ray" and not _ray_initialised()
    yield
    if watched and _ray_initialised():
        import ray

        ray.shutdown()
        pytest.fail(f"{request.node.nodeid} left Ray initialised in the test process (fake it, or ray.shutdown())",
                    pytrace=False)


def _ray_initialised() -> bool:
    ray = sys.modules.get("ray")  # never imported here: most tests do not need Ray, and importing it takes seconds
    return ray is not None and getattr(ray, "is_initialized", lambda: False)()
