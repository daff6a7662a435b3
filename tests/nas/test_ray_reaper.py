"""The reaper that kills a dead search's Ray processes (no Ray needed: any processes stand in for them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from nas.ray_reaper import alive, start_time
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
    proc = _sleeper()
    start = start_time(proc.pid)
    assert alive(proc.pid, start) and not alive(proc.pid, repr(float(start) + 1))  # another process with this pid
    proc.kill()
    deadline = time.monotonic() + 10
    while start_time(proc.pid) is not None and alive(proc.pid, start) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert start_time(proc.pid) == start and not alive(proc.pid, start)  # a zombie: its entry is still there
    proc.wait()
    assert not alive(proc.pid, start) and start_time(proc.pid) is None


def test_the_reaper_finds_a_searchs_processes_without_linux_proc(monkeypatch):
    """The reaper read Linux's /proc: on a macOS laptop (no /proc) it found no process to watch and no Ray process
    below the search, so a killed search's Ray agents lingered there. It asks psutil now."""
    import pathlib

    from nas.ray_reaper import descendants, is_ray

    real = pathlib.Path.read_text

    def no_proc(self, *args, **kwargs):
        if str(self).startswith("/proc/"):
            raise FileNotFoundError(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", no_proc)
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda self: (_ for _ in ()).throw(FileNotFoundError(self)))
    fake_ray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "/ray/raylet"])
    child = subprocess.Popen([sys.executable, "-c",
                              "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
                              "'import time; time.sleep(120)']); time.sleep(120)"])
    try:
        deadline = time.monotonic() + 20
        while len(descendants(child.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(descendants(child.pid)) == 1  # its grandchild, found without /proc
        assert is_ray(fake_ray.pid) and not is_ray(child.pid)
        start = start_time(fake_ray.pid)
        assert start is not None and alive(fake_ray.pid, start)
    finally:
        for grandchild in descendants(child.pid):
            os.kill(grandchild, signal.SIGKILL)
        for proc in (fake_ray, child):
            proc.kill()
            proc.wait()
