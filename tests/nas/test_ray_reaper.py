"""The reaper that kills a dead search's Ray processes (no Ray needed: any processes stand in for them)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from nas.ray_reaper import start_time
from tests.conftest import ROOT


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_a_killed_search_left_as_a_zombie_still_has_its_ray_processes_reaped():
    """The search is killed and its parent does not collect it at once (a zombie): the reaper waited for the
    zombie's /proc entry to vanish, and the Ray processes lived on for as long."""
    search, ray_process = _sleeper(), _sleeper()
    try:
        reaper = subprocess.Popen([sys.executable, "-m", "nas.ray_reaper", str(search.pid), str(start_time(search.pid))],
                                  stdin=subprocess.PIPE, text=True, cwd=ROOT)
        reaper.stdin.write(f"{ray_process.pid} {start_time(ray_process.pid)}\n")
        reaper.stdin.close()
        search.send_signal(signal.SIGKILL)  # not waited for: a zombie until the finally below
        deadline = time.monotonic() + 20
        while ray_process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ray_process.poll() == -signal.SIGKILL, "the reaper still waits for a zombie search"
        assert reaper.wait(timeout=10) == 0
    finally:
        for proc in (search, ray_process):
            proc.kill()
            proc.wait()


def test_alive_tells_a_reused_pid_and_a_zombie_from_the_process():
    from nas.ray_reaper import alive

    proc = _sleeper()
    start = start_time(proc.pid)
    assert alive(proc.pid, start) and not alive(proc.pid, str(int(start) + 1))  # another process with this pid
    proc.kill()
    deadline = time.monotonic() + 10
    while start_time(proc.pid) is not None and alive(proc.pid, start) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert start_time(proc.pid) == start and not alive(proc.pid, start)  # a zombie: its entry is still there
    proc.wait()
    assert not alive(proc.pid, start)
