"""The latency service: owns the conversion workers and the device, answers ``measure(arch)``.

- ``measure`` is ``convert`` (PyTorch -> ONNX -> TFLite, checked against PyTorch, cached with the files' digests)
  followed by ``time`` (one timing on the device, cached per device and settings). Both halves are public so a
  scheduler can run them in different places (conversion on any CPU, timing where the device is).
- Conversions run in long-lived worker processes (spawned once; TensorFlow and onnx2tf stay imported), several at a
  time, each in a working directory that holds our calibration file so onnx2tf never reaches for the network.
- The device runs one measurement at a time: timings take an exclusive ``flock`` on a per-device lock file in the
  cache directory, so even separate search processes sharing one phone (or the host CPU) never time concurrently.
- Host timings are quiet: each one runs under :class:`~latency.quiet.HostGate` ``quiet()``, and conversions run under
  ``busy()`` (as the trainer's steps should), so nothing of the search computes on the host while it is timed.
  Every result says how it was timed (``extra["timing"]``).
- Requests for the same key while one is in flight are merged; finished conversions and measurements come from the
  SQLite cache, so the same (architecture, input, converter version) is never converted twice. Cached files are
  verified on every read (size and SHA-256) and converted again when damaged.
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
import weakref
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

from latency.cache import LatencyCache, artifact_problem, cache_key, file_digest
from latency.quiet import (DISTURBED_PAUSE_S, DISTURBED_RETRIES, HostGate, LoadProbe, QuietWindow,
                           pinned_to_one_core)
from latency.result import LatencyResult
from latency.runners import DeviceError, make_runner
from mnas_common.checks import positive_int, positive_number
from mnas_common.errors import first_line
from mnas_common.paths import cache_dir

DEFAULT_TOLERANCE_ABS = 1e-4
DEFAULT_TOLERANCE_REL = 1e-4
PIN_CPU_DEFAULT = False
CONVERSION_FIELDS = ("onnx_path", "tflite_path", "max_abs_err", "max_rel_err", "convert_seconds")


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


def _worker_init(work_dir: str, runner_config: dict, parent: int, gate) -> None:
    """Runs once per worker process: heavy imports, calibration file, the runner, the host gate."""
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
    _WORKER["gate"] = gate


def _conversion_failure(exc: Exception) -> dict:
    return {"status": "failed", "error": f"conversion failed: {first_line(exc, with_type=True, limit=300)}",
            "traceback": traceback.format_exc(limit=5), "transient": True}


def _busy(convert, **kwargs) -> dict:
    """Run one conversion as the search's own work: it waits while the host times a model (``HostGate.busy``).
    The record says how long it waited and when it ended (``busy_waited_s``, ``finished_at``)."""
    try:
        start = time.monotonic()
        with _WORKER["gate"].busy():
            waited = time.monotonic() - start
            record = convert(**kwargs)
        return {**record, "busy_waited_s": round(waited, 4), "finished_at": time.time()}
    except Exception as exc:
        return _conversion_failure(exc)


def _convert_task(arch: str, resolution: int, channels: int, num_classes: int, out_dir: str, atol: float,
                  rtol: float, fast: bool) -> dict:
    from latency.convert import convert_and_check

    return _busy(convert_and_check, arch=arch, resolution=resolution, channels=channels, num_classes=num_classes,
                 out_dir=Path(out_dir), atol=atol, rtol=rtol, fast=fast)


def _convert_layer_task(spec: dict, out_dir: str, atol: float, rtol: float, fast: bool) -> dict:
    from latency.convert import convert_layer_and_check
    from search_spaces.layers import LayerSpec

    return _busy(convert_layer_and_check, spec=LayerSpec.from_dict(spec), out_dir=Path(out_dir), atol=atol,
                 rtol=rtol, fast=fast)


@contextmanager
def device_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def timing_window(lock_path: str, pin_cpu: bool):
    """The device's lock, then (host) the quiet gate, then (if asked) one pinned core: yields the QuietWindow."""
    with device_lock(Path(lock_path)), _WORKER["gate"].quiet() as window:
        if pin_cpu and window.mode != "device":
            with pinned_to_one_core(window):
                yield window
        else:
            yield window


def _time_one(tflite_path: str, window: QuietWindow, *, retries: int = DISTURBED_RETRIES) -> dict:
    """One timing; on the host, repeated (up to ``retries`` times, after a pause) while other processes of the
    machine disturb it, keeping the least disturbed attempt (see ``latency.quiet``)."""
    try:
        attempts = []
        for attempt in range(1 + (retries if window.mode != "device" else 0)):
            if attempt:
                time.sleep(DISTURBED_PAUSE_S)
            start = time.monotonic()
            with LoadProbe() as probe:
                timing = {"status": "ok", **_WORKER["runner"].time(tflite_path)}
            attempts.append((probe.others_cpu, time.monotonic() - start, timing))
            if not probe.disturbed:
                break
        others, seconds, timing = min(attempts, key=lambda a: -1.0 if a[0] is None else a[0])
        timing.setdefault("extra", {})["timing"] = {
            **window.to_dict(), "seconds": round(seconds, 4), "attempts": len(attempts),
            "others_cpu": None if window.mode == "device" or others is None else round(others, 3)}
        return timing
    except DeviceError as exc:
        return {"status": "failed", "error": str(exc)}
    except Exception as exc:
        return {"status": "failed", "error": f"timing failed: {first_line(exc, with_type=True, limit=300)}"}


def _time_task(tflite_path: str, lock_path: str, pin_cpu: bool) -> dict:
    try:
        with timing_window(lock_path, pin_cpu) as window:
            return _time_one(tflite_path, window)
    except Exception as exc:  # the lock directory itself failed
        return {"status": "failed", "error": f"timing failed: {first_line(exc, with_type=True, limit=300)}"}


def _time_layers_task(items: list[dict], lock_path: str, pin_cpu: bool, cache_path: str, table_key: str) -> list:
    """Time converted layers in one quiet window, committing each row to the cache as soon as it is timed (an
    interrupted build loses at most the layer being timed). Each item: {layer, spec, conversion}.

    One layer's timing is too short for the load probe to judge, so the whole batch is judged: a batch disturbed by
    other processes is timed again after a pause (up to DISTURBED_RETRIES times) and each layer keeps its timing
    from the least disturbed pass."""
    from latency.cache import LatencyCache

    if _WORKER.get("cache_path") != cache_path:
        _WORKER["cache"], _WORKER["cache_path"] = LatencyCache(cache_path), cache_path
    cache = _WORKER["cache"]
    best: dict[str, tuple[float, dict]] = {}
    with timing_window(lock_path, pin_cpu) as window:
        for attempt in range(1 + (DISTURBED_RETRIES if window.mode != "device" else 0)):
            if attempt:
                time.sleep(DISTURBED_PAUSE_S)
            with LoadProbe() as probe:
                rows = {}
                for item in items:
                    conversion = item["conversion"]
                    row = {**_time_one(conversion["tflite_path"], window, retries=0),
                           **{k: conversion.get(k) for k in ("max_abs_err", "max_rel_err", "convert_seconds")}}
                    row.pop("samples_ms", None)
                    rows[item["layer"]] = row
                    if attempt == 0:  # committed as timed; a better pass below replaces it
                        cache.put_layer(table_key, item["layer"], item["spec"], row)
            others = probe.others_cpu if probe.others_cpu is not None else -1.0
            for item in items:
                row = rows[item["layer"]]
                row.setdefault("extra", {}).setdefault("timing", {}).update(batch_others_cpu=round(others, 3),
                                                                             batch_attempts=attempt + 1)
                if item["layer"] not in best or others < best[item["layer"]][0]:
                    best[item["layer"]] = (others, row)
                    if attempt:
                        cache.put_layer(table_key, item["layer"], item["spec"], row)
            window.waited_s = 0.0  # only the first timing of the window waited for the gate
            if not probe.disturbed:
                break
    for item in items:
        shutil.rmtree(Path(item["conversion"]["tflite_path"]).parent, ignore_errors=True)
    return [{"layer": layer, "status": row["status"], "error": row.get("error"), "latency_ms": row.get("latency_ms")}
            for layer, (_, row) in best.items()]


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
    """``measure(arch, resolution=, channels=, num_classes=) -> LatencyResult``; see the module docstring.

    ``quiet`` (host runner): time under the host gate, so the search's own work waits during a timing.
    ``pin_cpu`` (host runner): pin the timing thread to one core for the duration of each timing.
    """

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
        quiet: bool = True,
        pin_cpu: bool = PIN_CPU_DEFAULT,
        **runner_fields,
    ):
        positive_int("latency.workers", workers)
        if not tolerance_abs > 0 or not tolerance_rel > 0:
            raise ValueError("latency.tolerance_abs and latency.tolerance_rel must be > 0")
        positive_number("latency.task_timeout_s", task_timeout_s)
        for name, value in (("quiet", quiet), ("pin_cpu", pin_cpu), ("fast_convert", fast_convert)):
            if not isinstance(value, bool):
                raise ValueError(f"latency.{name} must be true or false, got {value!r}")
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
        self.pin_cpu = pin_cpu
        self.gate = HostGate.for_runner(self.runner, self.locks_dir, quiet=quiet)
        self.cache = LatencyCache(self.cache_path)
        self._pool: ProcessPoolExecutor | None = None
        self._threads = ThreadPoolExecutor(max_workers=max(4, 2 * workers), thread_name_prefix="latency")
        self._lock = threading.Lock()
        self._closed = False
        self._inflight: dict[str, Future] = {}
        self._key_locks: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()
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

    @property
    def measurement_settings(self) -> dict:
        """The runner's settings plus, on the host, how timings are taken: part of every measurement's cache key,
        so a quiet measurement is never answered by one taken while the search shared the cores."""
        settings = dict(self.runner.settings)
        if self.gate.mode != "device":
            settings.update(timing=self.gate.mode, pin_cpu=self.pin_cpu)
        return settings

    def _conversion_key(self, arch: str, resolution: int, channels: int, num_classes: int) -> str:
        return cache_key(arch=arch, resolution=resolution, channels=channels, num_classes=num_classes,
                         versions=self.versions(), fast=self.fast_convert, atol=self.tolerance_abs,
                         rtol=self.tolerance_rel)

    @property
    def _device_lock_path(self) -> str:
        return str(self.locks_dir / f"{self.runner.lock_name}.lock")

    # -- workers
    def _workers(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the latency service was closed")
            if self._pool is None:
                self.work_dir.mkdir(parents=True, exist_ok=True)
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_init,
                    initargs=(str(self.work_dir), self.runner_config, os.getpid(), self.gate),
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

    # -- the two halves of a measurement
    def _checked_input(self, arch: str, resolution: int, channels: int, num_classes: int) -> str:
        from search_spaces import resolve_arch

        arch = resolve_arch(arch)  # ValueError for bad input, before anything runs
        for name, value in (("resolution", resolution), ("channels", channels), ("num_classes", num_classes)):
            positive_int(name, value)
        return arch

    def convert(self, arch: str, *, resolution: int = 224, channels: int = 3, num_classes: int = 1000) -> dict:
        """The cached, verified conversion of ``arch``: {key, arch, resolution, channels, num_classes, status, error,
        onnx_path, tflite_path (absolute), artifacts ({size, sha256} per file), max_abs_err, max_rel_err,
        convert_seconds, cached, repaired (why the cached files were rebuilt, if they were)}.

        A cached conversion whose files are missing, truncated or changed is converted again. A conversion that
        crashed (not a mismatch) is returned as failed and not cached, so a later call tries again.
        """
        arch = self._checked_input(arch, resolution, channels, num_classes)
        key = self._conversion_key(arch, resolution, channels, num_classes)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one conversion per key in this process; others wait and read the cache
            record, damage = self.cache.lookup_conversion(key)
            if record is not None:
                return self._conversion_record(key, record, cached=True)
            out_dir = self.models_dir / key
            if out_dir.exists():
                shutil.rmtree(out_dir)  # leftovers of an interrupted conversion, or damaged files
            record = self._run_in_worker(_convert_task, arch, resolution, channels, num_classes, str(out_dir),
                                         self.tolerance_abs, self.tolerance_rel, self.fast_convert)
            record.update(arch=arch, resolution=resolution, channels=channels, num_classes=num_classes)
            if damage:
                record["repaired"] = damage
            if not record.pop("transient", False):  # a mismatch is a property of the architecture; a crash is not
                self.cache.put_conversion(key, record)
            return self._conversion_record(key, record, cached=False)

    def _conversion_record(self, key: str, record: dict, *, cached: bool) -> dict:
        out = {**record, "key": key, "cached": cached}
        if out.get("status") == "ok" and "artifacts" not in out:
            out["artifacts"] = {name: file_digest(out[name]) for name in ("onnx_path", "tflite_path")}
        return out

    def time(self, conversion: dict) -> LatencyResult:
        """Time a conversion record from :meth:`convert` on this service's device (cached per device and settings).

        The .tflite file is checked against the digest in the record first; a damaged one is converted again.
        Failures (no device, a device that dropped, a failed conversion) are failed results, never exceptions.
        """
        base = {k: conversion.get(k) for k in ("arch", "resolution", "channels", "num_classes")}
        base["runner"] = self.runner_config["runner"]
        fields = {k: conversion.get(k) for k in CONVERSION_FIELDS}
        try:
            device = self.device_id
        except DeviceError as exc:
            return LatencyResult(status="failed", error=str(exc), **fields, **base)
        if conversion.get("status") != "ok":
            return LatencyResult(status="failed", error=conversion.get("error"), device=device, **fields, **base)
        key = cache_key(conversion=conversion["key"], device=device, settings=self.measurement_settings)
        cached = self.cache.get_measurement(key)
        if cached is not None:
            return LatencyResult.from_dict({**cached, "cached": True})
        expected = (conversion.get("artifacts") or {}).get("tflite_path")
        if expected is None or artifact_problem(Path(conversion["tflite_path"]), expected):
            conversion = self.convert(base["arch"], resolution=base["resolution"], channels=base["channels"],
                                      num_classes=base["num_classes"])
            fields = {k: conversion.get(k) for k in CONVERSION_FIELDS}
            if conversion.get("status") != "ok":
                return LatencyResult(status="failed", error=conversion.get("error"), device=device, **fields, **base)
        timing = self._run_in_worker(_time_task, conversion["tflite_path"], self._device_lock_path, self.pin_cpu)
        if timing.pop("status") != "ok":
            return LatencyResult(status="failed", error=timing["error"], device=device, **fields, **base)
        extra = {**timing.pop("extra", {}), "conversion_cached": bool(conversion.get("cached")),
                 "measured_at": time.time()}
        if conversion.get("repaired"):
            extra["conversion_repaired"] = conversion["repaired"]
        result = LatencyResult(device=device, extra=extra, **fields, **base, **timing)
        self.cache.put_measurement(key, conversion["key"], result.to_dict(), device, self.measurement_settings)
        return result

    # -- layers (per-device lookup tables: latency.table)
    def convert_layer(self, spec, out_dir: str | Path) -> dict:
        """Convert one layer (a LayerSpec) exactly as whole models are converted, into ``out_dir`` (not cached)."""
        return self._run_in_worker(_convert_layer_task, spec.to_dict(), str(out_dir), self.tolerance_abs,
                                   self.tolerance_rel, self.fast_convert)

    def time_layers(self, items: list[dict], table_key: str) -> list[dict]:
        """Time converted layers in one quiet window; each row is committed to the table as it is timed."""
        return self._run_in_worker(_time_layers_task, items, self._device_lock_path, self.pin_cpu,
                                   str(self.cache_path), table_key)

    # -- measure = convert + time
    def _measure_uncached(self, arch: str, resolution: int, channels: int, num_classes: int) -> LatencyResult:
        try:
            self.device_id
        except DeviceError as exc:  # no device: fail before converting anything
            return LatencyResult(arch=arch, status="failed", error=str(exc), resolution=resolution,
                                 channels=channels, num_classes=num_classes, runner=self.runner_config["runner"])
        return self.time(self.convert(arch, resolution=resolution, channels=channels, num_classes=num_classes))

    def submit(self, arch: str, *, resolution: int = 224, channels: int = 3, num_classes: int = 1000) -> Future:
        """Start measuring ``arch``; identical requests in flight share one future."""
        arch = self._checked_input(arch, resolution, channels, num_classes)
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
            return LatencyResult(arch=arch, status="failed", error=first_line(exc, with_type=True, limit=300),
                                 resolution=resolution, channels=channels, num_classes=num_classes,
                                 runner=self.runner_config["runner"])

    def measure(self, arch: str, *, resolution: int = 224, channels: int = 3, num_classes: int = 1000) -> LatencyResult:
        return self.submit(arch, resolution=resolution, channels=channels, num_classes=num_classes).result()

    def measure_many(self, archs: list[str], *, resolution: int = 224, channels: int = 3,
                     num_classes: int = 1000) -> list[LatencyResult]:
        futures = [self.submit(a, resolution=resolution, channels=channels, num_classes=num_classes) for a in archs]
        return [f.result() for f in futures]

    def export(self, arch: str, out_dir: str | Path, *, resolution: int = 224, channels: int = 3,
               num_classes: int = 1000, name: str = "model") -> dict:
        """Write ``<name>.onnx`` and ``<name>.tflite`` (checked against PyTorch) into ``out_dir``.

        Cached files are verified before they are copied (damaged ones are converted again) and every copy is
        checked against the recorded digest before it takes its final name: a damaged file is never shipped.
        """
        conversion = self.convert(arch, resolution=resolution, channels=channels, num_classes=num_classes)
        if conversion["status"] != "ok":
            raise RuntimeError(f"cannot export {conversion['arch']}: {conversion['error']}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for field, suffix in (("onnx_path", ".onnx"), ("tflite_path", ".tflite")):
            target = out / f"{name}{suffix}"
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(conversion[field], tmp)
            problem = artifact_problem(tmp, conversion["artifacts"][field])
            if problem:
                tmp.unlink(missing_ok=True)
                raise RuntimeError(f"cannot export {conversion['arch']}: the copy of {problem}")
            os.replace(tmp, target)
            paths[field] = target
        (out / f"{name}.arch.txt").write_text(conversion["arch"] + "\n")
        return {"onnx": str(paths["onnx_path"]), "tflite": str(paths["tflite_path"]),
                "max_abs_err": conversion["max_abs_err"], "tflite_sha256": conversion["artifacts"]["tflite_path"]["sha256"]}

    def close(self) -> None:
        """Stop the workers first (a conversion or timing in progress gets a few seconds, then is killed), so that
        the threads waiting on them return at once; an interrupted search stops in seconds, not minutes."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            _stop_pool(pool, grace_s=5.0)
        self._threads.shutdown(wait=True, cancel_futures=True)
        self.cache.close()

    def __enter__(self) -> LatencyService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_service(runner: str = "host", **kwargs) -> LatencyService:
    """Hydra ``_target_`` of ``configs/latency/*.yaml``: ``instantiate(cfg.latency, cache_path=..., work_dir=...)``."""
    kwargs.pop("name", None)
    return LatencyService(runner, **kwargs)
