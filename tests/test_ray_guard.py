"""The suite's guard (tests/conftest.py): a test outside tests/ray that leaves Ray initialised in the test process is
an error at that test, and Ray is shut down for the tests after it. A fake ``ray`` module stands in for Ray: starting
a real instance here is what the guard exists to prevent."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

FAKE_RAY = '''
import sys
import types

import pytest

state = {"up": False, "shutdowns": 0}


def _shutdown():
    state.update(up=False, shutdowns=state["shutdowns"] + 1)


sys.modules["ray"] = types.SimpleNamespace(is_initialized=lambda: state["up"], shutdown=_shutdown)
'''

LEAVES_IT = FAKE_RAY + '''

def test_starts_ray_and_leaves_it():
    state["up"] = True


def test_after_it_ray_is_down():
    assert state == {"up": False, "shutdowns": 1}


def test_starts_and_stops_ray():
    state["up"] = True
    _shutdown()
'''

SESSION = FAKE_RAY + '''

@pytest.fixture(scope="module", autouse=True)
def cluster():
    state["up"] = True  # as tests/ray's session cluster: up before the test, and after it
    yield


def test_with_ray_up_before():
    assert state["up"]
'''


def _pytest(tmp_path, name: str, source: str) -> subprocess.CompletedProcess:
    (tmp_path / name).write_text(source)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path / name)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_test_that_leaves_ray_initialised_is_an_error_at_that_test(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = _pytest(tmp_path, "test_leaves.py", LEAVES_IT)
    assert "3 passed, 1 error" in result.stdout, result.stdout
    assert ("ERROR at teardown of test_starts_ray_and_leaves_it" in result.stdout
            and "test_leaves.py::test_starts_ray_and_leaves_it left Ray initialised in the test process"
            in result.stdout), result.stdout
    assert result.returncode == 1


def test_ray_already_up_before_the_test_is_left_alone(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = _pytest(tmp_path, "test_session.py", SESSION)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout
