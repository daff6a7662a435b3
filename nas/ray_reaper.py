"""Make the local Ray instance a search started die with it, however the search dies.

``ray.init()`` starts the instance's processes as children of the search. On a clean exit ``ray.shutdown()`` stops
them; after ``kill -9`` the GCS server and the raylet notice and exit, but Ray's agent processes (``ray::
DashboardAgent``, ``ray::RuntimeEnvAgent``) linger for a minute or more, holding memory and ports. A reaper, in a
session of its own so that it outlives the search, waits for the search to die and kills the processes the instance
had when it started (identified by pid *and* start time, so a reused pid is never touched).

    python -m nas.ray_reaper PARENT_PID START  # reads "pid start_time" lines on stdin, then watches PARENT_PID
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil


def _ask(pid: int, question, gone):
    """``question(psutil.Process(pid))`` (psutil, not Linux's /proc: a search on a macOS laptop is reaped too), or
    ``gone`` where the process is gone, goes meanwhile, or is a zombie the platform will not describe."""
    try:
        return question(psutil.Process(pid))
    except (psutil.Error, ValueError):
        return gone


def start_time(pid: int) -> str | None:
    """The start time of ``pid`` as the kernel keeps it (a string, compared exactly), or None when it is gone."""
    return _ask(pid, lambda proc: repr(proc.create_time()), None)


def alive(pid: int, start: str | None) -> bool:
    """Whether the process ``pid`` that started at ``start`` still runs: not gone, not another process that reuses its
    pid, and not a zombie (dead, waiting for its parent to collect its exit status: a killed search whose parent does
    not wait for it at once)."""
    return _ask(pid, lambda proc: repr(proc.create_time()) == start
                and proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD), False)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    return _ask(pid, lambda proc: [child.pid for child in proc.children(recursive=True)], [])


def is_ray(pid: int) -> bool:
    """A process of Ray's own (GCS server, raylet, agents, workers): not a latency worker or an adb server."""
    cmdline = _ask(pid, lambda proc: " ".join(proc.cmdline()), "")
    return cmdline.startswith("ray::") or "/ray/" in cmdline


def watch(parent: int) -> subprocess.Popen:
    """Start a reaper for Ray's processes now below ``parent`` (call right after ``ray.init()``)."""
    procs = [(pid, start_time(pid)) for pid in descendants(parent) if is_ray(pid)]
    reaper = subprocess.Popen([sys.executable, "-m", "nas.ray_reaper", str(parent), str(start_time(parent))],
                              stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              text=True, cwd=str(Path(__file__).resolve().parents[1]))
    reaper.stdin.write("".join(f"{pid} {start}\n" for pid, start in procs if start))
    reaper.stdin.close()
    return reaper


def main() -> int:
    parent = int(sys.argv[1])
    parent_start = sys.argv[2] if len(sys.argv) > 2 else start_time(parent)
    procs = [(int(pid), start) for pid, start in (line.split() for line in sys.stdin if line.strip())]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the search stopped us: it shut Ray down itself
    while alive(parent, parent_start):
        time.sleep(0.5)
    for pid, start in procs:
        if start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
