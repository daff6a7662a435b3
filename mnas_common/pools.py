"""Process pools that are stopped without ever waiting forever."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor

import psutil


def stop_pool(pool: ProcessPoolExecutor, grace_s: float = 0.0) -> int:
    """Shut ``pool`` down: queued work is cancelled, workers still alive after ``grace_s`` are killed (a worker
    busy with a long task, or one left behind by a pool that broke, would otherwise hold the interpreter's exit).
    Returns how many were killed (they ran no finalizer); the processes a killed worker had started are killed with it
    (a subprocess.run's child outlives its parent: an adb shell timing on a hung phone ran on, and the phone's lock,
    freed with the worker, let the next timing overlap it)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace_s
    killed = 0
    for proc in processes:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            started = _descendants(proc.pid)
            proc.kill()
            proc.join(timeout=5.0)
            for child in started:  # what the worker was waiting on (an adb shell on a hung phone) goes with it
                try:
                    child.kill()
                except psutil.Error:
                    pass
            killed += 1
    return killed


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
