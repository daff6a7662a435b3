"""Process pools that are stopped without ever waiting forever."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor


def stop_pool(pool: ProcessPoolExecutor, grace_s: float = 0.0) -> int:
    """Shut ``pool`` down: queued work is cancelled, workers still alive after ``grace_s`` are killed (a worker
    busy with a long task, or one left behind by a pool that broke, would otherwise hold the interpreter's exit).
    Returns how many were killed (they ran no finalizer)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace_s
    killed = 0
    for proc in processes:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5.0)
            killed += 1
    return killed
