"""mnas_common.pools: a killed worker's own children go with it."""

from __future__ import annotations

import multiprocessing
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor

import psutil

from mnas_common.pools import stop_pool


def _wait_on_a_child(path: str) -> None:
    """What a timing on a hung phone does: wait on an adb shell that never answers."""
    child = subprocess.Popen(["sleep", "120"])
    with open(path, "w") as f:
        f.write(str(child.pid))
    child.wait()


def test_a_killed_worker_takes_the_processes_it_started_with_it(tmp_path):
    """subprocess.run's child outlived its killed worker: the adb shell of a hung timing ran on, and the phone's lock,
    freed with the worker, let the next timing overlap it."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    pid_file = tmp_path / "child.pid"
    pool.submit(_wait_on_a_child, str(pid_file))
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = psutil.Process(int(pid_file.read_text()))
    assert stop_pool(pool, grace_s=0.0) == 1
    try:
        child.wait(timeout=10)
    except psutil.TimeoutExpired:
        child.kill()
        raise AssertionError("the worker's child outlived it") from None
