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
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
import traceback
import weakref
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

from latency.cache import LatencyCache, artifact_problem, cache_key, cap_bytes, file_digest, touch
from latency.quiet import (DISTURBED_RETRIES, PROBE_MIN_S, ROUND_GAP_S, HostGate, LoadProbe, QuietWindow,
                           pinned_to_one_core)
from latency.result import LatencyResult, transient
from latency.runners import DeviceError, ModelRunError, make_runner, summarize_rounds
from mnas_common.checks import positive_int, positive_number
from mnas_common.errors import first_line
from mnas_common.paths import cache_dir, device_locks_dir
from mnas_common.pools import stop_pool

log = logging.getLogger("latency.service")

DEFAULT_TOLERANCE_ABS = 1e-4
DEFAULT_TOLERANCE_REL = 1e-4
PIN_CPU_DEFAULT = False
CACHE_MAX_GB_DEFAULT = 10.0  # converted models kept in a latency cache (about 27 MB each at 224x224x3): some 370
TRIM_KEEP_RECENT_S = 600.0  # a converted model used this recently is never removed by the size cap
CONVERSION_FIELDS = ("onnx_path", "tflite_path", "max_abs_err", "max_rel_err", "convert_seconds")
DEFAULT_ANCHOR = "mnasnet_b1"  # configs/latency/host.yaml and the latency CLI's default
ANCHOR_INPUT = {"resolution": 224, "channels": 3, "num_classes": 1000}  # the drift anchor's input, whatever is timed
ANCHOR_SCHEME = "around-groups-agree"  # how the anchor is timed (``_time_round``): part of the cache key


def anchor_key(device: str, settings: dict, versions: dict) -> str:
    """Where a cache keeps the drift anchor's reference for a device, measurement settings (which name it) and
    converter versions (``LatencyService.model_versions``: another onnx2tf or TensorFlow converts the anchor into
    another model, whose time is another scale)."""
    return cache_key(anchor=settings["anchor"], input=ANCHOR_INPUT, device=device, settings=settings, versions=versions)


def stored_anchor(cache, device: str, settings: dict, versions: dict, *, adopt: bool = True) -> dict | None:
    """The drift anchor's reference ``cache`` holds for a device, settings and converter versions, or None.

    A reference stored before the versions were part of its key (one per device and settings) is taken as these
    versions' reference, since the cache's earlier timings are on its scale; ``adopt``: it moves to the new key, so
    that a later converter finds none and fixes its own."""
    key = anchor_key(device, settings, versions)
    found = cache.anchor(key)
    if found is None:
        legacy = cache_key(anchor=settings["anchor"], input=ANCHOR_INPUT, device=device, settings=settings)
        found = cache.rekey_anchor(legacy, key) if adopt else cache.anchor(legacy)
    return found


def checked_input(resolution: int, channels: int, num_classes: int) -> None:
    """A ``ValueError`` naming the first input size (of a model, or of a table's layers) that is not a positive
    integer."""
    for name, value in (("resolution", resolution), ("channels", channels), ("num_classes", num_classes)):
        positive_int(name, value)


def checked_anchor(anchor, runner: str) -> str | None:
    """``latency.anchor``: None, or a reference name / architecture string (host runner only)."""
    if anchor is None or anchor is False or (isinstance(anchor, str) and anchor.lower() in ("", "none", "null")):
        return None
    if not isinstance(anchor, str):
        raise ValueError(f"latency.anchor must be a reference name, an architecture string or null, got {anchor!r}")
    if runner != "host":
        raise ValueError("latency.anchor (drift correction) applies to the host runner only; set it to null for "
                         f"runner {runner!r}")
    from search_spaces import resolve_arch

    try:
        resolve_arch(anchor)
    except ValueError as exc:
        raise ValueError(f"latency.anchor: {first_line(exc)}") from None
    return anchor


def default_cache_dir() -> Path:
    return cache_dir("latency")


PATH_FIELDS = ("cache_path", "work_dir", "benchmark_binary")  # latency config fields that name files on this machine


def absolute_paths(config: dict) -> dict:
    """``config`` with its file paths made absolute against the current directory, now.

    The conversion workers run in the service's work directory (onnx2tf reads its calibration file from the working
    directory), and Ray actors run in directories of their own, so a relative ``cache_path`` or ``benchmark_binary``
    would name another file there: a table built with ``--cache runs/t/latency.sqlite`` stored nothing.
    """
    out = dict(config)
    for name in PATH_FIELDS:
        if out.get(name):
            out[name] = str(Path(out[name]).expanduser().absolute())
    return out


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
        close = getattr(_WORKER.get("runner"), "close", None)
        if close is not None:  # os._exit runs no finalizer: a phone would keep its fixed performance mode
            try:
                close()
            except Exception:
                pass
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_tmp(work_dir: str | Path, pid: int) -> Path:
    """The private temp directory of the conversion worker ``pid`` (its ``tempfile.tempdir``)."""
    return Path(work_dir) / f"tmp-{pid}"


KEEP_WORKER_LOGS = 10  # the stderr logs of this many ended workers are kept (TensorFlow's C++ output), newest first


def _ended(pid: str) -> bool:
    """Whether the process ``pid`` (a file name's number) is gone; False for a name that is not a number."""
    try:
        os.kill(int(pid), 0)
    except ValueError:
        return False
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _remove_ended_worker_tmp(work_dir: Path) -> None:
    """Remove the temp directories of workers whose process is gone: a pool's workers once it is stopped, and those
    that died with their search (``kill -9``) when the next pool starts; and the logs of ended workers but the
    KEEP_WORKER_LOGS newest (one per worker process piled up in the cache, thousands over a phone farm's year)."""
    for path in work_dir.glob("tmp-*"):
        if _ended(path.name[len("tmp-"):]):
            shutil.rmtree(path, ignore_errors=True)
    logs = []
    for path in work_dir.glob("worker-*.log"):
        try:
            if _ended(path.stem[len("worker-"):]):
                logs.append((path.stat().st_mtime, path))
        except OSError:  # removed meanwhile by another service on this cache
            continue
    for _, path in sorted(logs, reverse=True)[KEEP_WORKER_LOGS:]:
        path.unlink(missing_ok=True)


def _worker_init(work_dir: str, runner_config: dict, parent: int, gate) -> None:
    """Runs once per worker process: heavy imports, calibration file, the runner, the host gate."""
    _exit_with_parent(parent)
    # Ctrl-C reaches the whole process group: the search stops its workers itself, they must not print tracebacks
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow, absl and LiteRT print from C++ straight to fd 2; keep that out of the user's progress bar.
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    # TensorFlow's autograph writes a module file per traced function to the temp directory and removes it at exit,
    # which a pool worker never reaches (multiprocessing ends it with os._exit): a few files per worker were left in
    # /tmp for good. Here they go to a directory of this worker that the service removes once the worker is gone.
    tempfile.tempdir = str(_worker_tmp(work_dir, os.getpid()))
    Path(tempfile.tempdir).mkdir(exist_ok=True)
    log_fd = os.open(Path(work_dir) / f"worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    # Conversion and host timing use no GPU; TensorFlow would take a visible GPU's whole memory from the training
    # (a user's CUDA_VISIBLE_DEVICES=0, or a Ray actor given no GPU: Ray 2.60 no longer hides the node's GPUs from it)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
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
        with _WORKER["gate"].busy(long=True):
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


class LockBusy(RuntimeError):
    """Work that only one process may do at a time (building one table) runs elsewhere now."""


@contextmanager
def exclusive_lock(path: Path, *, busy: str | None = None):
    """An exclusive ``flock`` on ``path`` (created if missing), released when the block ends or its holder dies.
    With ``busy``, a lock held elsewhere is not waited for: :class:`LockBusy` with that message."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            raise LockBusy(busy) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def timing_window(lock_path: str, pin_cpu: bool):
    """The device's lock, then (host) the quiet gate, then (if asked) one pinned core: yields the QuietWindow."""
    with exclusive_lock(Path(lock_path)), _WORKER["gate"].quiet() as window:
        if pin_cpu and window.mode != "device":
            with pinned_to_one_core(window):
                yield window
        else:
            yield window


def _failed_conversion(conversion: dict, device: str, fields: dict, base: dict) -> LatencyResult:
    return LatencyResult(status="failed", error=conversion.get("error"), device=device,
                         extra=transient(conversion.get("transient")), **fields, **base)


def _failed_timing(exc: Exception, *, of_model: bool = False) -> dict:
    """A failed timing. ``of_model``: the model's own failure (the interpreter cannot load or run it; the phone's
    benchmark_model fails on it, its retries spent, while the phone answers), not transient like the others."""
    error = str(exc) if isinstance(exc, DeviceError) else f"timing failed: {first_line(exc, with_type=True, limit=300)}"
    return {"status": "failed", "error": error, **({"of_model": True} if of_model else {})}


def _phone_gone(runner) -> str | None:
    """Why the phone no longer answers (off USB, offline, unauthorized), or None while it does."""
    try:
        runner.healthy()
    except Exception as exc:
        return first_line(exc)
    return None


def _timing_session(paths: list[str], lock_path: str, pin_cpu: bool, on_round=None,
                    anchor: dict | None = None) -> list[dict]:
    """Time every model of ``paths``; one timing dict (``status`` ok with the timing fields, or failed) per path.

    A phone runs each model once, in one device window. The host times in ``rounds`` rounds spaced ROUND_GAP_S
    apart, each round (every model of ``paths`` in turn) in its own quiet window, so the search's work proceeds in the
    gaps; a round that other processes of the machine disturbed (``LoadProbe``) does not count and is repeated, up
    to DISTURBED_RETRIES extra rounds. ``latency_ms`` is the median of the least disturbed round. Measured here, why:
    on this 2-vCPU VM one model's median over 50 back-to-back runs varied by 10% (CV) from one timing to the next
    with nothing else running in the VM, in slow phases of about 1.5 s, while the lowest of three round medians a
    second apart varied by 1-3%. ``on_round(results)`` is called after each round with the results so far.

    ``anchor`` ({arch, path, ref_ms}, host only) is the drift anchor, a fixed network timed in every round between
    the models (:func:`_time_round`); each model's runs are scaled by ``ref_ms`` over the anchor's time around
    them (its factor), and ``latency_ms`` is the median of the corrected round medians
    (:func:`~latency.runners.summarize_rounds`).
    """
    runner = _WORKER["runner"]
    if runner.name != "host":
        out = []
        with timing_window(lock_path, pin_cpu) as window:
            for path in paths:
                start = time.monotonic()
                try:
                    timing = {"status": "ok", **runner.time(path)}
                    timing.setdefault("extra", {})["timing"] = {**window.to_dict(),
                                                                "seconds": round(time.monotonic() - start, 4)}
                except Exception as exc:
                    gone = _phone_gone(runner) if isinstance(exc, DeviceError) else None
                    timing = _failed_timing(exc, of_model=isinstance(exc, ModelRunError) and not gone)
                    if gone:  # the rest would each wait out the retries: they fail now, saying why
                        rest = len(paths) - len(out) - 1
                        out += [timing] + [{"status": "failed", "error": f"{gone} ({exc})"}] * rest
                        if on_round:
                            on_round(list(out), True)
                        break
                window.waited_s = 0.0  # only the first model of the window waited for the gate
                out.append(timing)
                if on_round:  # a phone is slow: each model is reported (and a layer committed) as it is timed
                    on_round(list(out), True)
        return out

    interpreters, failed, rounds = {}, {}, {p: [] for p in paths}
    for path in paths:
        try:
            interpreters[path] = runner.prepare(path)
        except Exception as exc:
            failed[path] = _failed_timing(exc, of_model=True)
    anchor_interpreter = runner.prepare(anchor["path"]) if anchor else None
    factors: dict[str, list] = {p: [] for p in paths}  # per model and round: its group's anchor factor (or None)
    disturbed, others, waited, seconds, cpu, retimed = [], [], 0.0, 0.0, None, []

    def results(final: bool) -> list[dict]:
        out = []
        for path in paths:
            if path in failed or not rounds[path]:
                out.append(failed.get(path) or {"status": "failed", "error": "timing failed: no round was timed"})
                continue
            n = len(rounds[path])
            timing = {"status": "ok", **summarize_rounds(rounds[path], disturbed[:n], anchored=bool(anchor))}
            timing["extra"]["timing"] = {
                "mode": _WORKER["gate"].mode, "waited_s": round(waited, 6), "cpu": cpu, "seconds": round(seconds, 4),
                "rounds": n, "disturbed_rounds": sum(disturbed),
                "others_cpu": [None if o is None else round(o, 3) for o in others], "complete": final}
            if anchor:
                timing["extra"]["timing"]["anchor"] = {"arch": anchor["arch"], "ref_ms": anchor["ref_ms"],
                                                      "factors": [round(f, 5) for f in factors[path][:n]],
                                                      "session_retries": len(retimed)}
            out.append(timing)
        return out

    attempt = 0
    while sum(not d for d in disturbed) < runner.effective_rounds and attempt < runner.effective_rounds + DISTURBED_RETRIES:
        if attempt:
            time.sleep(ROUND_GAP_S)
        live = [p for p in paths if p not in failed]
        if not live:
            break
        with timing_window(lock_path, pin_cpu) as window:
            waited += window.waited_s
            cpu = window.cpu
            start = time.monotonic()
            with LoadProbe() as probe:
                timed, errors = _time_round(runner, {p: interpreters[p] for p in live}, anchor_interpreter,
                                            anchor["ref_ms"] if anchor else None, attempt, agree=ANCHOR_AGREE,
                                            retimed=retimed)
                failed.update({p: _failed_timing(exc, of_model=True) for p, exc in errors.items()})
                for path, (samples, factor) in timed.items():
                    rounds[path].append(samples)
                    factors[path].append(factor)
            seconds += time.monotonic() - start
        disturbed.append(probe.disturbed)
        others.append(probe.others_cpu)
        attempt += 1
        if on_round:
            on_round(results(False), False)
    return results(True)


ANCHOR_RUNS = 10  # runs of the drift anchor per timing of it (median taken)
ANCHOR_EVERY_S = 0.1  # the drift anchor is timed again once the models timed since it last ran took this long
ANCHOR_AGREE = 0.04  # the anchor's two times around a group differ by more: the group is timed again
ANCHOR_RETRIES = 2  # at most this often (then the attempt whose anchor times agree best is kept)
ANCHOR_REF_ROUNDS = 12  # rounds, ROUND_GAP_S apart, that fix an anchor's reference latency (once per cache)


def _time_round(runner, interpreters: dict, anchor_interpreter, ref_ms: float | None, attempt: int,
                clock=time.monotonic, agree: float | None = None, retimed: list | None = None) -> tuple[dict, dict]:
    """One round of a session: the models in turn, each one's runs back to back. Returns
    ``({path: (samples, factor)}, {path: exception})``; without an anchor (``anchor_interpreter`` None) the samples
    are as timed and the factor is None.

    With the drift anchor: it is timed before the first model, and again after each group of models that took
    ANCHOR_EVERY_S or more (after every whole network; after a few dozen small layers) and after the last; a group's
    samples are scaled by its factor, ``ref_ms`` over the mean of the anchor's two times around it.

    Why around groups this short: the VM's speed changes in phases of about 1.5 s, shorter than a round of 8 networks
    (about 2 s). 24 networks timed three times in sessions of 8 (``scripts/bench_latency.py --anchor``) moved between
    repeats by 2.9% on average with the anchor timed only at each round's two ends (88% within 5%), by 2.1% with it
    timed around every network (93%), by 9.5% uncorrected (31%); two trial sittings gave the same order. Pairing single
    anchor and model runs was steadier still (1.5%), but a model run right after the anchor ran 6-14% slower than
    back to back, by an amount that depends on the model: a bias, not noise, so the runs of one model stay together.

    With ``agree`` (the search, tables and the CLI pass ANCHOR_AGREE): a group whose two anchor times differ by more
    than that is timed again (:func:`_agreeing_group`); the machine changed speed inside the bracket, so neither
    factor fits its runs. Side by side on 2026-11-30 (``bench_latency.py --anchor --anchor-models 24``, 3 repeats,
    every scheme in each): repeats moved by 1.08% on average with it against 1.79% without (within 2%: 90% against
    68%; within 5%: 100% against 92%), the runs' std was under 5% of the median for 99% of timings against 86%, and
    38 of 216 brackets were timed again. ``retimed`` (a list) gets each retry's anchor gap."""
    anchored = anchor_interpreter is not None
    timed, errors, group = {}, {}, []
    before = _anchor_ms(runner, anchor_interpreter, warmup=runner.round_warmup(attempt == 0)) if anchored else None
    since = clock()
    paths = list(interpreters)
    for i, path in enumerate(paths):
        try:
            group.append((path, runner.run(interpreters[path], runner.round_runs(attempt),
                                           runner.round_warmup(attempt == 0))))
        except Exception as exc:
            errors[path] = exc
        if not anchored:
            timed.update({p: (samples, None) for p, samples in group})
            group = []
        elif group and (clock() - since >= ANCHOR_EVERY_S or i == len(paths) - 1):
            after = _anchor_ms(runner, anchor_interpreter, warmup=0)
            group, pair, after = _agreeing_group(runner, interpreters, anchor_interpreter, group, (before, after),
                                                 attempt, agree, retimed)
            factor = ref_ms / (sum(pair) / 2)
            timed.update({p: ([x * factor for x in samples], factor) for p, samples in group})
            group, before, since = [], after, clock()
    return timed, errors


def _gap(a: float, b: float) -> float:
    return abs(a - b) / min(a, b)


def _agreeing_group(runner, interpreters: dict, anchor_interpreter, group: list, pair: tuple[float, float],
                    attempt: int, agree: float | None, retimed: list | None) -> tuple[list, tuple, float]:
    """A group's runs and the anchor's two times around them, the group timed again (up to ANCHOR_RETRIES times)
    while those two times differ by more than ``agree`` (relative): the machine changed speed inside the bracket, so
    no one factor fits its runs. Returns the attempt whose anchor times agree best (its runs and its pair) and the
    anchor's latest time (the next group's "before"); ``retimed`` gets each retry's gap."""
    best_gap, best = _gap(*pair), (group, pair)
    tries = 0
    while agree is not None and best_gap > agree and tries < ANCHOR_RETRIES:
        tries += 1
        try:
            again = [(p, runner.run(interpreters[p], runner.round_runs(attempt), runner.round_warmup(False)))
                     for p, _ in group]
        except Exception:  # a model that timed once and fails now: keep what was timed
            break
        pair = (pair[1], _anchor_ms(runner, anchor_interpreter, warmup=0))
        gap = _gap(*pair)
        if retimed is not None:
            retimed.append(round(gap, 5))
        if gap < best_gap:
            best_gap, best = gap, (again, pair)
    return (*best, pair[1])


def _anchor_ms(runner, interpreter, *, warmup: int, at_least_s: float = 0.0) -> float:
    """The anchor's median over ANCHOR_RUNS runs; with ``at_least_s``, over as many more as that takes. A reference
    round is timed for at least PROBE_MIN_S: ten runs of a 7 ms anchor (80 ms) were too short for the load probe to
    tell, so a reference taken under load set the scale of the whole cache."""
    import numpy as np

    samples, started = [], time.monotonic()
    while not samples or time.monotonic() - started < at_least_s:
        samples += list(runner.run(interpreter, ANCHOR_RUNS, warmup))
        warmup = 0
    return float(np.median(samples))


def _anchor_ref_task(path: str, lock_path: str, pin_cpu: bool, rounds: int) -> dict:
    """The drift anchor's reference latency: the median of its medians over ``rounds`` quiet rounds ROUND_GAP_S
    apart (so one slow phase of the machine does not set the scale of every later measurement)."""
    import numpy as np

    runner = _WORKER["runner"]
    interpreter = runner.prepare(path)
    medians, disturbed = [], 0
    attempt = 0
    while len(medians) < rounds and attempt < rounds + DISTURBED_RETRIES:
        if attempt:
            time.sleep(ROUND_GAP_S)
        with timing_window(lock_path, pin_cpu), LoadProbe() as probe:
            value = _anchor_ms(runner, interpreter, warmup=runner.round_warmup(attempt == 0), at_least_s=PROBE_MIN_S)
        attempt += 1
        if probe.disturbed:
            disturbed += 1
            continue
        medians.append(value)
    if not medians:
        raise RuntimeError("every round fixing the drift anchor's reference was disturbed by other processes")
    return {"ref_ms": float(np.median(medians)), "round_medians_ms": [round(m, 5) for m in medians],
            "disturbed_rounds": disturbed, "at": time.time()}


def _time_models_task(paths: list[str], lock_path: str, pin_cpu: bool, anchor: dict | None = None) -> list[dict]:
    try:
        return _timing_session(paths, lock_path, pin_cpu, anchor=anchor)
    except Exception as exc:  # the lock directory itself failed
        return [_failed_timing(exc)] * len(paths)


def _time_layers_task(items: list[dict], lock_path: str, pin_cpu: bool, cache_path: str, table_key: str,
                      anchor: dict | None = None) -> list:
    """Time converted layers (rounds as whole models, all layers of the batch in each round), committing every
    layer's row to the cache after each round, so an interrupted build loses at most one round. A row is marked
    ``complete`` after the last round; the builder times incomplete rows again. Each item: {layer, spec, conversion}."""
    from latency.cache import LatencyCache

    if _WORKER.get("cache_path") != cache_path:
        _WORKER["cache"], _WORKER["cache_path"] = LatencyCache(cache_path), cache_path
    cache = _WORKER["cache"]

    def commit(timings: list[dict], final: bool) -> None:
        for item, timing in zip(items, timings):  # the models timed so far
            row = {**timing, **{k: item["conversion"].get(k) for k in ("max_abs_err", "max_rel_err", "convert_seconds")}}
            row.pop("samples_ms", None)
            row["complete"] = final
            cache.put_layer(table_key, item["layer"], item["spec"], row)

    paths = [item["conversion"]["tflite_path"] for item in items]
    timings = _timing_session(paths, lock_path, pin_cpu, on_round=commit, anchor=anchor)
    commit(timings, True)
    for path in paths:
        shutil.rmtree(Path(path).parent, ignore_errors=True)
    return [{"layer": item["layer"], "status": t["status"], "error": t.get("error"), "latency_ms": t.get("latency_ms")}
            for item, t in zip(items, timings)]


def _stop_pool(pool: ProcessPoolExecutor, grace_s: float, work_dir: Path) -> int:
    """Shut a worker pool down without ever waiting forever: workers still alive after ``grace_s`` are killed; then
    the temp directories of the workers that have ended are removed. How many were killed."""
    killed = stop_pool(pool, grace_s)
    _remove_ended_worker_tmp(work_dir)
    return killed


# ---------------------------------------------------------------------------------------------------- service
class LatencyService:
    """``measure(arch, resolution=, channels=, num_classes=) -> LatencyResult``; see the module docstring.

    ``quiet`` (host runner): time under the host gate, so the search's own work waits during a timing.
    ``pin_cpu`` (host runner): pin the timing thread to one core for the duration of each timing.
    ``anchor`` (host runner): the drift anchor, a reference name or architecture string timed in every round at
    ANCHOR_INPUT, whose reference latency (fixed once per cache, device and settings) sets the scale of every host
    timing; None: no correction (see ``_timing_session``).
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
        anchor: str | None = None,
        cache_max_gb: float | None = CACHE_MAX_GB_DEFAULT,
        check_only: bool = False,
        **runner_fields,
    ):
        """``check_only``: check every field and value, then stop, before a cache is opened or a device asked (what a
        dry run of a config for a device that is not here can check)."""
        positive_int("latency.workers", workers)
        if not tolerance_abs > 0 or not tolerance_rel > 0:
            raise ValueError("latency.tolerance_abs and latency.tolerance_rel must be > 0")
        positive_number("latency.task_timeout_s", task_timeout_s)
        cache_max_gb = positive_number("latency.cache_max_gb (GB of converted models; null: no limit)", cache_max_gb,
                                       allow_none=True)
        self.max_model_bytes = None if cache_max_gb is None else cap_bytes(cache_max_gb)
        for name, value in (("quiet", quiet), ("pin_cpu", pin_cpu), ("fast_convert", fast_convert)):
            if not isinstance(value, bool):
                raise ValueError(f"latency.{name} must be true or false, got {value!r}")
        self.task_timeout_s = float(task_timeout_s)
        paths = absolute_paths({"cache_path": cache_path, "work_dir": work_dir, **runner_fields})
        cache_path, work_dir = paths.pop("cache_path"), paths.pop("work_dir")
        runner_fields = paths
        self.runner_config = {"runner": runner, **runner_fields}
        self.runner = make_runner(self.runner_config)  # validates the fields now, in one line
        self.anchor = checked_anchor(anchor, runner)
        if check_only:
            return
        self.workers = workers
        self.cache_path = Path(cache_path) if cache_path else default_cache_dir() / "latency.sqlite"
        self.models_dir = self.cache_path.parent / "models"
        self.locks_dir = self.cache_path.parent / "locks"  # this cache's own: conversions in progress
        self.device_locks_dir = device_locks_dir()  # the machine's: its devices and host gate, whatever the cache
        self.work_dir = Path(work_dir) if work_dir else self.cache_path.parent / "work"
        self.tolerance_abs, self.tolerance_rel = float(tolerance_abs), float(tolerance_rel)
        self.fast_convert = fast_convert
        self.pin_cpu = pin_cpu
        self._anchor_info: dict | None = None
        self._anchor_lock = threading.Lock()
        self.gate = HostGate.for_runner(self.runner, self.device_locks_dir, quiet=quiet)
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

    def model_versions(self) -> dict:
        """What the converted models depend on besides the architecture and input: the converter versions and
        whether the fast path converted them (part of a table's identity and of the drift anchor's key)."""
        return {**self.versions(), "fast_convert": self.fast_convert}

    @property
    def measurement_settings(self) -> dict:
        """The runner's settings plus, on the host, how timings are taken: part of every measurement's cache key,
        so a quiet measurement is never answered by one taken while the search shared the cores."""
        settings = dict(self.runner.settings)
        if self.gate.mode != "device":
            settings.update(timing=self.gate.mode, pin_cpu=self.pin_cpu)
            if self.anchor:
                settings.update(anchor=self.anchor, anchor_scheme=ANCHOR_SCHEME)
        return settings

    def anchor_info(self) -> dict | None:
        """The drift anchor as timings need it, ``{arch, path, ref_ms}`` (None without one): converted once (cached
        like any model) and its reference latency fixed on first use, then kept in the cache for every later run."""
        if not self.anchor:
            return None
        with self._anchor_lock:
            return self._fix_anchor()

    def _fix_anchor(self) -> dict:
        if self._anchor_info is not None and Path(self._anchor_info["path"]).is_file():
            touch(Path(self._anchor_info["path"]).parent)
            return self._anchor_info
        conversion = self.convert(self.anchor, **ANCHOR_INPUT)
        if conversion.get("status") != "ok":
            raise RuntimeError(f"the drift anchor {self.anchor} (latency.anchor) did not convert: {conversion.get('error')}")
        versions = self.model_versions()
        stored = stored_anchor(self.cache, self.device_id, self.measurement_settings, versions)
        if stored is None:
            fixed = self._run_in_worker(_anchor_ref_task, conversion["tflite_path"], self._device_lock_path,
                                        self.pin_cpu, ANCHOR_REF_ROUNDS)
            stored = self.cache.put_anchor(anchor_key(self.device_id, self.measurement_settings, versions),
                                           conversion["arch"], self.device_id, self.measurement_settings, fixed)
        self._anchor_info = {"arch": self.anchor, "path": conversion["tflite_path"], "ref_ms": stored["ref_ms"]}
        return self._anchor_info

    def _conversion_key(self, arch: str, resolution: int, channels: int, num_classes: int) -> str:
        return cache_key(arch=arch, resolution=resolution, channels=channels, num_classes=num_classes,
                         versions=self.versions(), fast=self.fast_convert, atol=self.tolerance_abs,
                         rtol=self.tolerance_rel)

    def _measurement_key(self, conversion_key: str) -> str:
        """Where a timing of the conversion ``conversion_key`` on this device with these settings is cached."""
        return cache_key(conversion=conversion_key, device=self.device_id, settings=self.measurement_settings)

    @property
    def _device_lock_path(self) -> str:
        return str(self.device_locks_dir / f"{self.runner.lock_name}.lock")

    # -- workers
    def _workers(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the latency service was closed")
            if self._pool is None:
                self.work_dir.mkdir(parents=True, exist_ok=True)
                _remove_ended_worker_tmp(self.work_dir)
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_init,
                    initargs=(str(self.work_dir), self.runner_config, os.getpid(), self.gate),
                )
            return self._pool

    def _run_in_worker(self, fn, *args, timings: int = 0):
        """Run ``fn`` in a worker; a crashed pool is replaced once and the call retried; a hung one is killed.
        ``timings``: how many models or layers the call times, each after the runner's ``cooldown_s`` pause, which
        the timeout adds (a phone's batch with a long cooldown was killed every time: 24 layers x 40 s > 900 s)."""
        timeout_s = self.task_timeout_s + timings * getattr(self.runner, "cooldown_s", 0.0)
        for attempt in range(2):
            pool = self._workers()
            try:
                return pool.submit(fn, *args).result(timeout=timeout_s)
            except FutureTimeout:
                self._drop_pool(pool)
                raise RuntimeError(f"latency worker gave no answer within {timeout_s:.0f} s "
                                   "(latency.task_timeout_s); it was killed and will be restarted") from None
            except BrokenProcessPool:
                self._drop_pool(pool)
                if attempt == 1:
                    raise RuntimeError("latency worker process died twice (out of memory?)") from None

    def _drop_pool(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        self._stop_workers(pool, grace_s=0.0)

    def _stop_workers(self, pool: ProcessPoolExecutor, grace_s: float) -> None:
        """Stop ``pool``'s workers. A worker that is killed runs no finalizer: what its runner set on the device
        (a phone's fixed performance mode) is undone from here."""
        if _stop_pool(pool, grace_s=grace_s, work_dir=self.work_dir):
            switch_off = getattr(self.runner, "switch_performance_off", None)
            if switch_off is not None:
                switch_off()

    # -- the two halves of a measurement
    def _checked_input(self, arch: str, resolution: int, channels: int, num_classes: int) -> str:
        from search_spaces import resolve_arch

        arch = resolve_arch(arch)  # ValueError for bad input, before anything runs
        checked_input(resolution, channels, num_classes)
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
        # One conversion per key: the thread lock for this process, a file lock for the other processes sharing
        # this cache (another search, a Ray converter actor), which would otherwise remove each other's half-written
        # files below. Whoever waited finds the conversion cached. 256 lock files, by the key's first two hex digits.
        with key_lock, exclusive_lock(self.locks_dir / "convert" / f"{key[:2]}.lock"):
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
            if not record.get("transient"):  # a mismatch is a property of the architecture; a crash is not: it is
                # not cached, and the record says so (``transient``); a repair is this call's news, not stored
                self.cache.put_conversion(key, {k: v for k, v in record.items() if k != "repaired"})
        if record.get("status") == "ok":
            self.trim_models()
        return self._conversion_record(key, record, cached=False)

    def trim_models(self, keep_recent_s: float = TRIM_KEEP_RECENT_S) -> dict | None:
        """Keep the converted models under ``latency.cache_max_gb`` (least recently used first; see
        :meth:`LatencyCache.trim_models`); the drift anchor's conversion is never removed. None when there is no cap
        or another process is trimming this cache."""
        from search_spaces import resolve_arch

        if self.max_model_bytes is None:
            return None
        protect = set()
        if self.anchor:
            protect.add(self._conversion_key(resolve_arch(self.anchor), **ANCHOR_INPUT))
        try:
            return self.cache.trim_models(self.max_model_bytes, keep_recent_s=keep_recent_s, protect=protect)
        except Exception as exc:  # housekeeping: a cache that cannot be trimmed now must not fail a conversion
            log.warning("latency cache %s not trimmed: %s", self.cache_path.parent, first_line(exc))
            return None

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
        return self.time_many([conversion])[0]

    def time_many(self, conversions: list[dict], *, batch: int = 8, _again: bool = False) -> list[LatencyResult]:
        """Time several conversion records, ``batch`` models per timing session: on the host each round times every
        model of the batch in one quiet window, so a batch costs one wait for the search's work per round instead of
        one per model, and each model's rounds are spread over the whole batch. Same order as ``conversions``.

        A model whose files went while it waited to be timed (another process sharing the cache trimmed it to its
        size cap) is converted and timed once more; that is never the architecture's failure."""
        positive_int("batch", batch)
        results: list[LatencyResult | None] = [None] * len(conversions)
        pending = []  # (index, conversion, measurement key, base, fields, device)
        vanished = []  # indices whose model files went while they waited
        for i, conversion in enumerate(conversions):
            answer = self._before_timing(conversion)
            if isinstance(answer, LatencyResult):
                results[i] = answer
            else:
                pending.append((i, *answer))
        for start in range(0, len(pending), batch):
            chunk = pending[start:start + batch]
            paths = [c[1]["tflite_path"] for c in chunk]
            try:
                timings = self._run_in_worker(_time_models_task, paths, self._device_lock_path, self.pin_cpu,
                                              self.anchor_info(), timings=len(paths))
            except Exception as exc:  # a broken pool: every model of the batch is a failed result
                timings = [{"status": "failed", "error": first_line(exc, with_type=True, limit=300)}] * len(chunk)
            for (i, conversion, key, base, fields, device), timing in zip(chunk, timings):
                if timing.get("status") != "ok" and not Path(conversion["tflite_path"]).is_file():
                    if not _again:
                        vanished.append(i)
                        continue
                    timing = {"status": "failed", "error": f"{timing.get('error')} (its files were removed while it "
                                                           "waited: the latency cache's size cap)"}
                results[i] = self._after_timing(conversion, key, base, fields, device, dict(timing))
        if vanished:
            for i, result in zip(vanished, self.time_many([conversions[i] for i in vanished], batch=batch,
                                                          _again=True)):
                results[i] = result
        return results

    def _before_timing(self, conversion: dict):
        """A final answer (failed, or cached) as a LatencyResult, or what timing needs: (verified conversion, key,
        base fields, conversion fields, device)."""
        base = {k: conversion.get(k) for k in ("arch", "resolution", "channels", "num_classes")}
        base["runner"] = self.runner_config["runner"]
        fields = {k: conversion.get(k) for k in CONVERSION_FIELDS}
        try:
            device = self.device_id
        except DeviceError as exc:
            return LatencyResult(status="failed", error=str(exc), extra=transient(), **fields, **base)
        if conversion.get("status") != "ok":
            return _failed_conversion(conversion, device, fields, base)
        key = self._measurement_key(conversion["key"])
        cached = self.cache.get_measurement(key)
        if cached is not None:
            return LatencyResult.from_dict({**cached, "cached": True})
        expected = (conversion.get("artifacts") or {}).get("tflite_path")
        touch(Path(conversion["tflite_path"]).parent)  # in use: the size cap removes it last
        if expected is None or artifact_problem(Path(conversion["tflite_path"]), expected):
            conversion = self.convert(base["arch"], resolution=base["resolution"], channels=base["channels"],
                                      num_classes=base["num_classes"])
            fields = {k: conversion.get(k) for k in CONVERSION_FIELDS}
            if conversion.get("status") != "ok":
                return _failed_conversion(conversion, device, fields, base)
        return conversion, key, base, fields, device

    def _after_timing(self, conversion: dict, key: str, base: dict, fields: dict, device: str,
                      timing: dict) -> LatencyResult:
        if timing.pop("status") != "ok":  # not cached either way; transient unless the model is the cause
            return LatencyResult(status="failed", error=timing["error"], device=device,
                                 extra=transient(not timing.get("of_model")), **fields, **base)
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
                                   str(self.cache_path), table_key, self.anchor_info(), timings=len(items))

    # -- measure = convert + time
    def _measure_uncached(self, arch: str, resolution: int, channels: int, num_classes: int) -> LatencyResult:
        try:
            self.device_id
        except DeviceError as exc:  # no device: fail before converting anything
            return LatencyResult(arch=arch, status="failed", error=str(exc), resolution=resolution,
                                 channels=channels, num_classes=num_classes, runner=self.runner_config["runner"],
                                 extra=transient())
        cached = self.cache.get_measurement(self._measurement_key(self._conversion_key(arch, resolution, channels,
                                                                                        num_classes)))
        if cached is not None:  # timed before: its model (maybe trimmed away since) need not be converted again
            return LatencyResult.from_dict({**cached, "cached": True})
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
                                 runner=self.runner_config["runner"], extra=transient())

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
            self._stop_workers(pool, grace_s=5.0)
        self._threads.shutdown(wait=True, cancel_futures=True)
        self.cache.close()

    def __enter__(self) -> LatencyService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_service(runner: str = "host", **kwargs) -> LatencyService:
    """Hydra ``_target_`` of ``configs/latency/*.yaml``: ``instantiate(cfg.latency, cache_path=..., work_dir=...)``."""
    kwargs.pop("name", None)
    for key in ("mode", "hybrid_top_k", "table_space", "table"):  # how the search uses latency: nas.evaluator
        kwargs.pop(key, None)
    return LatencyService(runner, **kwargs)
