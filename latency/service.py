"""The latency service: owns the conversion workers and the device, answers ``measure(arch)``.

- Conversions run in long-lived worker processes (spawned once; TensorFlow and onnx2tf stay imported), several at a
  time, each in a working directory that holds our calibration file so onnx2tf never reaches for the network.
- The device runs one measurement at a time: timings take an exclusive ``flock`` on a per-device lock file in the
  cache directory, so even separate search processes sharing one phone (or the host CPU) never time concurrently.
- Requests for the same key while one is in flight are merged; finished conversions and measurements come from the
  SQLite cache, so the same (architecture, input, converter version) is never converted twice.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import shutil
import signal
import threading
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

from latency.cache import LatencyCache, cache_key
from mnas_common.checks import positive_int, positive_number
from mnas_common.errors import first_line
from mnas_common.paths import cache_dir
from latency.result import LatencyResult
from latency.runners import DeviceError, make_runner

DEFAULT_TOLERANCE_ABS = 1e-4
DEFAULT_TOLERANCE_REL = 1e-4


def default_cache_dir() -> Path:
    return cache_dir("latency")


# ---------------------------------------------------------------------------------------------------- workers
_WORKER: dict = {}


def _exit_with_parent(parent: int, poll_s: float = 0.5) -> None:
    """End this worker when the process that started it (pid ``parent``) dies, even by ``kill -9``.

    A pool worker waits on a queue whose write end it holds itself, so it never sees its parent go; left alone it
    would keep its memory, a phone's lock file and the parent's terminal forever. The pid comes from the parent:
    a worker that starts after its parent died must not take its new parent (init) for the one to watch.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_init(work_dir: str, runner_config: dict, parent: int) -> None:
    """Runs once per worker process: heavy imports, calibration file, the runner."""
    _exit_with_parent(parent)
    # Ctrl-C reaches the whole process group: the search stops its workers itself, they must not print tracebacks
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow, absl and LiteRT print from C++ straight to fd 2; keep that out of the user's progress bar.
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    log_fd = os.open(Path(work_dir) / f"worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import torch

    torch.set_num_threads(1)
    import onnx2tf  # noqa: F401  (imported here so every conversion finds it warm)
    import tensorflow  # noqa: F401

    from latency.calibration import write_calibration_file

    write_calibration_file(work_dir)
    os.chdir(work_dir)  # onnx2tf looks for its calibration file in the working directory
    _WORKER["runner"] = make_runner(runner_config)


def _convert_task(arch: str, resolution: int, channels: int, num_classes: int, out_dir: str, atol: float,
                  rtol: float, fast: bool) -> dict:
    from latency.convert import convert_and_check

    try:
        return convert_and_check(arch, resolution=resolution, channels=channels, num_classes=num_classes,
                                 out_dir=Path(out_dir), atol=atol, rtol=rtol, fast=fast)
    except Exception as exc:
        return {"status": "failed", "error": f"conversion failed: {first_line(exc, with_type=True, limit=300)}",
                "traceback": traceback.format_exc(limit=5), "transient": True}


@contextmanager
def device_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _time_task(tflite_path: str, lock_path: str) -> dict:
    runner = _WORKER["runner"]
    try:
        with device_lock(Path(lock_path)):
            return {"status": "ok", **runner.time(tflite_path)}
    except DeviceError as exc:
        return {"status": "failed", "error": str(exc)}
    except Exception as exc:
        return {"status": "failed", "error": f"timing failed: {first_line(exc, with_type=True, limit=300)}"}


def _stop_pool(pool: ProcessPoolExecutor, grace_s: float) -> None:
    """Shut a worker pool down without ever waiting forever: workers still alive after ``grace_s`` are killed."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace_s
    for proc in processes:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5.0)


# ---------------------------------------------------------------------------------------------------- service
class LatencyService:
    """``measure(arch, resolution=, channels=, num_classes=) -> LatencyResult``; see the module docstring."""

    def __init__(
        self,
        runner: str = "host",
        *,
        workers: int = 2,
        cache_path: str | Path | None = None,
        work_dir: str | Path | None = None,
        tolerance_abs: float = DEFAULT_TOLERANCE_ABS,
        tolerance_rel: float = DEFAULT_TOLERANCE_REL,
        fast_convert: bool = True,
        task_timeout_s: float = 900.0,
        **runner_fields,
    ):
        positive_int("latency.workers", workers)
        if not tolerance_abs > 0 or not tolerance_rel > 0:
            raise ValueError("latency.tolerance_abs and latency.tolerance_rel must be > 0")
        positive_number("latency.task_timeout_s", task_timeout_s)
        self.task_timeout_s = float(task_timeout_s)
        self.runner_config = {"runner": runner, **runner_fields}
        self.runner = make_runner(self.runner_config)  # validates the fields now, in one line
        self.workers = workers
        self.cache_path = Path(cache_path) if cache_path else default_cache_dir() / "latency.sqlite"
        self.models_dir = self.cache_path.parent / "models"
        self.locks_dir = self.cache_path.parent / "locks"
        self.work_dir = Path(work_dir) if work_dir else self.cache_path.parent / "work"
        self.tolerance_abs, self.tolerance_rel = float(tolerance_abs), float(tolerance_rel)
        self.fast_convert = fast_convert
        self.cache = LatencyCache(self.cache_path)
        self._pool: ProcessPoolExecutor | None = None
        self._threads = ThreadPoolExecutor(max_workers=max(4, 2 * workers), thread_name_prefix="latency")
        self._lock = threading.Lock()
        self._inflight: dict[str, Future] = {}
        self._device_id: str | None = None
        self._versions: dict | None = None

    # -- identity
    @property
    def device_id(self) -> str:
        if self._device_id is None:
            self._device_id = self.runner.device_id
        return self._device_id

    def check(self) -> str:
        """Fail fast with a ``DeviceError`` naming what is missing (no phone, no benchmark binary); returns the id."""
        device = self.device_id
        binary = self.runner_config.get("benchmark_binary")
        if self.runner_config["runner"] == "adb" and (not binary or not Path(binary).is_file()):
            raise DeviceError(f"benchmark_model binary not found at {binary!r}; download TFLite's android_aarch64 "
                              "benchmark_model and set latency.benchmark_binary (or TFLITE_BENCHMARK_MODEL)")
        return device

    def versions(self) -> dict:
        if self._versions is None:
            from latency.convert import converter_versions

            self._versions = converter_versions()
        return self._versions

    def _conversion_key(self, arch: str, resolution: int, channels: int, num_classes: int) -> str:
        return cache_key(arch=arch, resolution=resolution, channels=channels, num_classes=num_classes,
                         versions=self.versions(), fast=self.fast_convert, atol=self.tolerance_abs,
                         rtol=self.tolerance_rel)

    # -- workers
    def _workers(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self.work_dir.mkdir(parents=True, exist_ok=True)
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_init,
                    initargs=(str(self.work_dir), self.runner_config, os.getpid()),
                )
            return self._pool

    def _run_in_worker(self, fn, *args):
        """Run ``fn`` in a worker; a crashed pool is replaced once and the call retried; a hung one is killed."""
        for attempt in range(2):
            pool = self._workers()
            try:
                return pool.submit(fn, *args).result(timeout=self.task_timeout_s)
            except FutureTimeout:
                self._drop_pool(pool)
                raise RuntimeError(f"latency worker gave no answer within {self.task_timeout_s:.0f} s "
                                   "(latency.task_timeout_s); it was killed and will be restarted") from None
            except BrokenProcessPool:
                self._drop_pool(pool)
                if attempt == 1:
                    raise RuntimeError("latency worker process died twice (out of memory?)") from None

    def _drop_pool(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        _stop_pool(pool, grace_s=0.0)

    def _convert(self, arch: str, resolution: int, channels: int, num_classes: int) -> tuple[str, dict]:
        key = self._conversion_key(arch, resolution, channels, num_classes)
        record = self.cache.get_conversion(key)
        if record is not None:
            return key, {**record, "cached": True}
        out_dir = self.models_dir / key
        if out_dir.exists():
            shutil.rmtree(out_dir)  # leftovers of an interrupted conversion
        record = self._run_in_worker(_convert_task, arch, resolution, channels, num_classes, str(out_dir),
                                     self.tolerance_abs, self.tolerance_rel, self.fast_convert)
        record.update(arch=arch, resolution=resolution, channels=channels, num_classes=num_classes)
        if not record.pop("transient", False):  # a mismatch is a property of the architecture; a crash is not
            self.cache.put_conversion(key, record)
        return key, {**record, "cached": False}

    def _measure_uncached(self, arch: str, resolution: int, channels: int, num_classes: int) -> LatencyResult:
        base = dict(arch=arch, resolution=resolution, channels=channels, num_classes=num_classes,
                    runner=self.runner_config["runner"])
        try:
            device = self.device_id
        except DeviceError as exc:
            return LatencyResult(status="failed", error=str(exc), **base)
        conv_key, conversion = self._convert(arch, resolution, channels, num_classes)
        fields = {k: conversion.get(k) for k in ("onnx_path", "tflite_path", "max_abs_err", "max_rel_err",
                                                  "convert_seconds")}
        if conversion["status"] != "ok":
            return LatencyResult(status="failed", error=conversion["error"], device=device, **fields, **base)
        key = cache_key(conversion=conv_key, device=device, settings=self.runner.settings)
        cached = self.cache.get_measurement(key)
        if cached is not None:
            return LatencyResult.from_dict({**cached, "cached": True})
        lock = self.locks_dir / f"{self.runner.lock_name}.lock"
        timing = self._run_in_worker(_time_task, conversion["tflite_path"], str(lock))
        if timing.pop("status") != "ok":
            return LatencyResult(status="failed", error=timing["error"], device=device, **fields, **base)
        extra = {**timing.pop("extra", {}), "conversion_cached": conversion["cached"], "measured_at": time.time()}
        result = LatencyResult(device=device, extra=extra, **fields, **base, **timing)
        self.cache.put_measurement(key, conv_key, result.to_dict(), device, self.runner.settings)
        return result

    def submit(self, arch: str, *, resolution: int = 224, channels: int = 3, num_classes: int = 1000) -> Future:
        """Start measuring ``arch``; identical requests in flight share one future."""
        from search_spaces import resolve_arch

        arch = resolve_arch(arch)  # ValueError for bad input, before anything runs
        for name, value in (("resolution", resolution), ("channels", channels), ("num_classes", num_classes)):
            positive_int(name, value)
        key = f"{arch}|{resolution}|{channels}|{num_classes}"
        with self._lock:
            future = self._inflight.get(key)
            if future is not None:
                return future
            future = self._threads.submit(self._measure_safe, arch, resolution, channels, num_classes)
            self._inflight[key] = future
        # Outside the lock: a future that is already done (a cached answer) runs the callback right here.
        future.add_done_callback(lambda f, k=key: self._forget(k, f))
        return future

    def _forget(self, key: str, future: Future) -> None:
        with self._lock:
            if self._inflight.get(key) is future:
                del self._inflight[key]

    def _measure_safe(self, arch: str, resolution: int, channels: int, num_classes: int) -> LatencyResult:
        try:
            return self._measure_uncached(arch, resolution, channels, num_classes)
        except Exception as exc:  # a broken worker pool or cache is reported as this child's failure
            return LatencyResult(arch=arch, status="failed", error=first_line(exc, with_type=True, limit=300), resolution=resolution,
                                 channels=channels, num_classes=num_classes, runner=self.runner_config["runner"])

    def measure(self, arch: str, *, resolution: int = 224, channels: int = 3, num_classes: int = 1000) -> LatencyResult:
        return self.submit(arch, resolution=resolution, channels=channels, num_classes=num_classes).result()

    def measure_many(self, archs: list[str], *, resolution: int = 224, channels: int = 3,
                     num_classes: int = 1000) -> list[LatencyResult]:
        futures = [self.submit(a, resolution=resolution, channels=channels, num_classes=num_classes) for a in archs]
        return [f.result() for f in futures]

    def export(self, arch: str, out_dir: str | Path, *, resolution: int = 224, channels: int = 3,
               num_classes: int = 1000, name: str = "model") -> dict:
        """Write ``<name>.onnx`` and ``<name>.tflite`` (checked against PyTorch) into ``out_dir``."""
        from search_spaces import resolve_arch

        arch = resolve_arch(arch)
        _, conversion = self._convert(arch, resolution, channels, num_classes)
        if conversion["status"] != "ok":
            raise RuntimeError(f"cannot export {arch}: {conversion['error']}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        onnx_path, tflite_path = out / f"{name}.onnx", out / f"{name}.tflite"
        shutil.copyfile(conversion["onnx_path"], onnx_path)
        shutil.copyfile(conversion["tflite_path"], tflite_path)
        (out / f"{name}.arch.txt").write_text(arch + "\n")
        return {"onnx": str(onnx_path), "tflite": str(tflite_path), "max_abs_err": conversion["max_abs_err"]}

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            _stop_pool(pool, grace_s=30.0)
        self.cache.close()

    def __enter__(self) -> LatencyService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_service(runner: str = "host", **kwargs) -> LatencyService:
    """Hydra ``_target_`` of ``configs/latency/*.yaml``: ``instantiate(cfg.latency, cache_path=..., work_dir=...)``."""
    kwargs.pop("name", None)
    return LatencyService(runner, **kwargs)
