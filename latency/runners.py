"""Runners time a .tflite file on one device: ``host`` (LiteRT in this process) or ``adb`` (benchmark_model on a phone).

A runner is plain configuration (picklable), built inside the latency worker process that uses it. ``time(path)``
returns the timing fields of a :class:`~latency.result.LatencyResult`; ``device_id`` names the device in cache keys
and lock files; ``settings`` are the measurement settings that belong in the cache key; ``AdbRunner.close()`` undoes
what the runner changed on its phone.
"""

from __future__ import annotations

import fcntl
import platform
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from multiprocessing.util import Finalize
from pathlib import Path

import numpy as np

from mnas_common.checks import did_you_mean, non_negative_int, non_negative_number, positive_int, positive_number
from mnas_common.paths import device_locks_dir

REMOTE_DIR = "/data/local/tmp"
WAIT_FOR_DEVICE_S = 30.0  # how long one retry waits for a dropped phone to come back (adb wait-for-device)
QUICK_ADB_S = 60.0  # adb devices, fixed performance off: commands that answer at once unless adb or the phone hangs
_CLI = "python -m latency"  # device errors name the search's option and this command line's flag


class DeviceError(RuntimeError):
    """No device, a missing binary, a device that keeps dropping: a message the user can act on."""


class ModelRunError(DeviceError):
    """The device's benchmark failed on this model, its retries spent: the model's failure where the device still
    answers afterwards (the latency service checks), a dropping device's otherwise."""


def summarize(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms, dtype=float)
    return {
        "latency_ms": float(np.median(a)),
        "mean_ms": float(a.mean()),
        "std_ms": float(a.std()),
        "min_ms": float(a.min()),
        "p95_ms": float(np.percentile(a, 95)),
        "runs": int(a.size),
        "samples_ms": [float(x) for x in a],
    }


def host_cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for package in ("ai-edge-litert", "tflite-runtime"):
        try:
            return f"{package}=={version(package)}"
        except PackageNotFoundError:
            continue
    return "unknown"


@dataclass
class HostRunner:
    """The LiteRT interpreter on this machine's CPU (XNNPACK applies by default).

    ``num_runs`` timed runs are taken in ``rounds`` rounds; the service spaces the rounds a second apart, each in its
    own quiet window, and reports the median of the least disturbed round, or with a drift anchor the median of the
    anchor-corrected rounds (see ``latency.quiet`` and ``latency.service``). ``time()`` alone runs the rounds back to
    back, with no anchor.
    """

    threads: int = 1
    warmup_runs: int = 10
    num_runs: int = 50
    rounds: int = 3
    name: str = "host"

    def __post_init__(self) -> None:
        for key in ("threads", "num_runs", "rounds"):
            positive_int(f"latency.{key}", getattr(self, key))
        non_negative_int("latency.warmup_runs", self.warmup_runs)

    @property
    def device_id(self) -> str:
        return f"host:{platform.machine()}:{host_cpu_name()}"

    @property
    def device_model(self) -> str:
        """The kind of device (no serial): what a shared latency table is keyed by."""
        return self.device_id

    @property
    def lock_name(self) -> str:
        return "host-cpu"

    def healthy(self) -> None:
        """The host is always there (the interface of :meth:`AdbRunner.healthy`)."""

    @property
    def settings(self) -> dict:
        return {"runner": "host", "threads": self.threads, "warmup_runs": self.warmup_runs,
                "num_runs": self.num_runs, "rounds": self.rounds, "runtime": litert_version()}

    @property
    def effective_rounds(self) -> int:
        return min(self.rounds, self.num_runs)

    def round_runs(self, index: int) -> int:
        """Runs of round ``index``: ``num_runs`` split as evenly as possible (a repeated round takes the largest)."""
        base, extra = divmod(self.num_runs, self.effective_rounds)
        return base + (1 if index < extra or index >= self.effective_rounds and extra else 0)

    def prepare(self, tflite_path: str | Path):
        """An interpreter for ``tflite_path`` with its input set (random, fixed seed), not yet warmed up."""
        from latency.convert import make_interpreter

        interpreter = make_interpreter(tflite_path, self.threads)
        inp = interpreter.get_input_details()[0]
        rng = np.random.default_rng(0)
        interpreter.set_tensor(inp["index"], rng.random(inp["shape"], dtype=np.float32).astype(inp["dtype"]))
        return interpreter

    @staticmethod
    def run(interpreter, runs: int, warmup: int) -> list[float]:
        """``warmup`` untimed invokes, then ``runs`` timed ones (milliseconds)."""
        for _ in range(warmup):
            interpreter.invoke()
        samples = []
        for _ in range(runs):
            start = time.perf_counter_ns()
            interpreter.invoke()
            samples.append((time.perf_counter_ns() - start) / 1e6)
        return samples

    def round_warmup(self, first: bool) -> int:
        """Warm-up before a round: all of ``warmup_runs`` first; a few after a pause (caches went cold)."""
        return self.warmup_runs if first else min(self.warmup_runs, 2)

    def time(self, tflite_path: str | Path) -> dict:
        interpreter = self.prepare(tflite_path)
        rounds = [self.run(interpreter, self.round_runs(r), self.round_warmup(r == 0))
                  for r in range(self.effective_rounds)]
        return summarize_rounds(rounds, [False] * len(rounds))


def summarize_rounds(rounds: list[list[float]], disturbed: list[bool], anchored: bool = False) -> dict:
    """Timing fields from rounds of samples.

    Not ``anchored``: ``latency_ms`` is the median of the least disturbed round (the lowest median among the rounds
    no other process disturbed, or among all if every one was). ``anchored`` (every sample already corrected by the
    drift anchor, ``latency.service``): ``latency_ms`` is the median of the round medians of the undisturbed rounds
    (the lowest of a few noisy values would be biased low; the anchor has already taken out what the lowest round
    was guarding against). The spread fields (mean, std, min, p95) and ``samples_ms`` cover every run.
    """
    medians = [float(np.median(r)) for r in rounds]
    candidates = [i for i, d in enumerate(disturbed) if not d] or list(range(len(rounds)))
    out = summarize([x for r in rounds for x in r])
    if not anchored:
        chosen = min(candidates, key=lambda i: medians[i])
        out["latency_ms"] = medians[chosen]
        out["extra"] = {"round_medians_ms": [round(m, 5) for m in medians], "round_chosen": chosen}
    else:
        out["latency_ms"] = float(np.median([medians[i] for i in candidates]))
        out["extra"] = {"round_medians_ms": [round(m, 5) for m in medians], "rounds_used": candidates}
    return out


# ---------------------------------------------------------------------------------------------------------- adb
_COUNT_LINE = re.compile(r"count=(\d+)(.*)$")
_KV = re.compile(r"(\w+)=([-+0-9.eE]+)")
_INFERENCE = re.compile(r"Inference timings in us:(.*)$")
_DELEGATE = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \(([^)]+)\) node, yielding (\d+) partitions")


def parse_benchmark_output(text: str) -> dict:
    """Parse TFLite ``benchmark_model`` output into milliseconds.

    Takes the format as it comes: an optional ``INFO: `` prefix, two ``count=`` lines (warm-up, then the measured
    runs), newer builds' ``p5= median= p95=``, all-equal samples printing only ``count=N curr=X``, scientific
    notation for values of 1e6 us or more, and the ``Inference timings in us`` summary line.
    """
    counts = []
    inference = None
    delegate = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("INFO:"):
            line = line[5:].strip()
        if m := _COUNT_LINE.search(line):
            values = {k: float(v) for k, v in _KV.findall(m.group(2))}
            values["count"] = int(m.group(1))
            counts.append(values)
        elif m := _INFERENCE.search(line):
            inference = {k.strip(): float(v) for k, v in re.findall(r"([A-Za-z ()]+):\s*([-+0-9.eE]+)", m.group(1))}
        elif m := _DELEGATE.search(line):
            delegate = {"nodes": int(m.group(1)), "total_nodes": int(m.group(2)), "delegate": m.group(3),
                        "partitions": int(m.group(4))}
    if not counts:
        raise ValueError("benchmark_model output has no 'count=' timing line")
    measured = counts[-1]  # the last count line is the measured runs (the first one is the warm-up)
    avg = measured.get("avg", measured.get("curr"))
    if avg is None:
        raise ValueError("benchmark_model output: timing line without avg or curr")
    us = 1e-3
    out = {
        "latency_ms": measured.get("median", avg) * us,
        "mean_ms": avg * us,
        "std_ms": measured.get("std", 0.0) * us,
        "min_ms": measured.get("min", avg) * us,
        "p95_ms": measured["p95"] * us if "p95" in measured else None,
        "runs": measured["count"],
        "samples_ms": [],
        "extra": {"median_source": "benchmark_model median" if "median" in measured else "avg (no median printed)"},
    }
    if inference:
        out["extra"]["inference_timings_us"] = inference
    if delegate:
        out["extra"]["delegate"] = delegate
    return out


FIXED_PERFORMANCE_ON = ("cmd", "power", "set-fixed-performance-mode-enabled", "true")  # Android 11+, no root
FIXED_PERFORMANCE_OFF = (*FIXED_PERFORMANCE_ON[:-1], "false")
USERS_CHECK_S = 0.5  # how long the last user of fixed performance mode tries for the users file's exclusive lock


@dataclass
class AdbRunner:
    """An Android phone over adb, timed by the official TFLite ``benchmark_model`` binary.

    The binary (``benchmark_binary``, a local path) is pushed once per device to /data/local/tmp; every model is
    pushed there too and run as ``taskset <cpu_mask> benchmark_model --graph=... --num_threads=...``. Commands are
    argument lists locally and shell-quoted remotely (no injection through paths). A device that drops is retried
    with back-off; an adb command that hangs past ``timeout_s`` is a :class:`DeviceError` naming it.

    Fixed performance mode is the phone's, not a runner's: every runner that wants it (any process of this machine,
    any search) holds a shared ``flock`` on the phone's ``<lock_name>.fixed-performance`` file in the machine's device
    locks directory while it does; ``close()`` lets go of it and switches the mode off only when no other runner
    holds it (the last one out), under that file's exclusive lock, so one search ending never switches the mode off
    under another that is still timing with it. A runner without the mode switches it off for each of its own runs
    while another holds it (``time()``).
    """

    serial: str | None = None
    benchmark_binary: str | None = None
    threads: int = 1
    warmup_runs: int = 10
    num_runs: int = 50
    cpu_mask: str | None = None
    cooldown_s: float = 0.0
    retries: int = 3
    fixed_performance: bool = False
    use_xnnpack: bool = True
    adb: str = "adb"
    timeout_s: float = 300.0
    name: str = "adb"
    _model: str | None = field(default=None, repr=False)
    _binary_pushed: bool = field(default=False, repr=False)
    _performance_off: Finalize | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in ("threads", "num_runs"):
            positive_int(f"latency.{key}", getattr(self, key))
        non_negative_int("latency.warmup_runs", self.warmup_runs)
        if self.cpu_mask is not None and not re.fullmatch(r"[0-9a-fA-F]+", str(self.cpu_mask)):
            raise ValueError(f"latency.cpu_mask must be a hex CPU mask such as f0, got {self.cpu_mask!r}")
        non_negative_number("latency.cooldown_s", self.cooldown_s)
        # retries=-1 never called the push (the binary never reached the phone; a misleading chmod error followed),
        # a timeout <= 0 failed every adb command
        non_negative_int("latency.retries", self.retries)
        positive_number("latency.timeout_s", self.timeout_s)

    # -- adb plumbing
    def _adb_path(self) -> str:
        path = shutil.which(self.adb)
        if path is None:
            raise DeviceError(f"adb not found ({self.adb!r}); install the Debian package 'adb' or set latency.adb")
        return path

    def _run(self, args: list[str], *, serial: bool = True, check: bool = True,
             timeout_s: float | None = None) -> subprocess.CompletedProcess:
        cmd = [self._adb_path(), *(["-s", self.resolve_serial()] if serial else []), *args]
        timeout_s = timeout_s or self.timeout_s
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:  # a traceback before; the phone's failure, which the retries handle
            where = f" on {self.serial}" if serial else ""
            setting = " (latency.timeout_s)" if timeout_s == self.timeout_s else ""
            raise DeviceError(f"adb {' '.join(args[:2])}{where} gave no answer within {timeout_s:g} s"
                              f"{setting}") from None
        if check and proc.returncode != 0:
            raise DeviceError(f"adb {' '.join(args[:2])} failed: {_said(proc)}")
        return proc

    def _retrying(self, fn, what: str):
        delay = 1.0
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except DeviceError as exc:
                if attempt == self.retries:
                    raise DeviceError(f"{what} failed after {self.retries + 1} attempts: {exc}") from None
                time.sleep(delay)
                delay *= 2
                try:  # adb blocks here until the phone is back: a phone gone for good costs this much per attempt
                    self._run(["wait-for-device"], check=False, timeout_s=min(self.timeout_s, WAIT_FOR_DEVICE_S))
                except DeviceError:
                    pass  # still gone: the next attempt fails and says so

    def devices(self) -> list[dict]:
        timeout_s = min(self.timeout_s, QUICK_ADB_S)
        try:
            proc = subprocess.run([self._adb_path(), "devices", "-l"], capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"adb devices gave no answer within {timeout_s:g} s: the adb server may be hung; "
                              "adb kill-server restarts it") from None
        if proc.returncode != 0:
            raise DeviceError(f"adb devices failed: {proc.stderr.strip() or proc.returncode}")
        return parse_adb_devices(proc.stdout)

    def healthy(self) -> None:
        """Raise :class:`DeviceError` unless the phone answers as ``device`` (a phone off USB, offline, unauthorized)."""
        serial = self.resolve_serial()
        state = next((d["state"] for d in self.devices() if d["serial"] == serial), "not attached")
        if state != "device":
            raise DeviceError(f"phone {serial} is {state}")

    def resolve_serial(self) -> str:
        if self.serial:
            return self.serial
        ready = [d for d in self.devices() if d["state"] == "device"]
        if not ready:
            raise DeviceError("no Android device attached (adb devices lists none ready); connect a phone with USB "
                              f"debugging enabled, or time on the host: latency=host ({_CLI} --runner host)")
        if len(ready) > 1:
            raise DeviceError(f"{len(ready)} devices attached ({', '.join(d['serial'] for d in ready)}); "
                              f"choose one with latency.serial ({_CLI} --serial)")
        self.serial = ready[0]["serial"]
        return self.serial

    def _model_name(self) -> str:
        """The phone's model, asked once. A phone that does not answer (offline, unauthorized) is a DeviceError, not
        the model "unknown": that was kept for the service's life, and timings and tables were stored under it, one
        table for every phone whose name could not be read."""
        if self._model is None:
            proc = self._run(["shell", "getprop", "ro.product.model"], check=False,
                             timeout_s=min(self.timeout_s, QUICK_ADB_S))
            if proc.returncode != 0:
                raise DeviceError(f"phone {self.serial} did not say its model (adb shell getprop ro.product.model: "
                                  f"{_said(proc)})")
            self._model = proc.stdout.strip() or "unknown"
        return self._model

    @property
    def device_id(self) -> str:
        return f"adb:{self._model_name()}:{self.resolve_serial()}"

    @property
    def device_model(self) -> str:
        """The phone model without its serial: a table built on one Pixel 2 serves every Pixel 2."""
        return f"adb:{self._model_name()}"

    @property
    def lock_name(self) -> str:
        return f"adb-{self.resolve_serial()}"

    @property
    def settings(self) -> dict:
        """Fixed performance mode and the cooldown change the phone's clocks and temperature, so its timings: they
        are part of the key, but only when set, so that timings and tables taken with the defaults keep the key they
        were cached under (before, a timing with either set answered a request without, and the other way round)."""
        binary = Path(self.benchmark_binary).name if self.benchmark_binary else None
        settings = {"runner": "adb", "threads": self.threads, "warmup_runs": self.warmup_runs,
                    "num_runs": self.num_runs, "cpu_mask": self.cpu_mask, "use_xnnpack": self.use_xnnpack,
                    "binary": binary, "binary_size": Path(self.benchmark_binary).stat().st_size
                    if self.benchmark_binary and Path(self.benchmark_binary).exists() else None}
        if self.fixed_performance:
            settings["fixed_performance"] = True
        if self.cooldown_s:
            settings["cooldown_s"] = float(self.cooldown_s)  # 1 and 1.0 are one setting
        return settings

    def _ensure_binary(self) -> str:
        remote = f"{REMOTE_DIR}/benchmark_model"
        if not self._binary_pushed and (not self.benchmark_binary or not Path(self.benchmark_binary).is_file()):
            raise DeviceError(f"benchmark_model binary not found at {self.benchmark_binary!r}; download TFLite's "
                              "android_aarch64 benchmark_model and set latency.benchmark_binary")
        if self.fixed_performance and self._performance_off is None:  # again in each run's own shell call
            self._fixed_clocks()
        if not self._binary_pushed:
            self._retrying(lambda: self._run(["push", str(self.benchmark_binary), remote]), "pushing benchmark_model")
            self._run(["shell", "chmod", "755", shlex.quote(remote)])
            self._binary_pushed = True
        return remote

    def _fixed_clocks(self) -> None:
        """Join the phone's fixed performance mode users (a shared lock, waited for while the last user of an earlier
        search switches the mode off) and switch it on; a phone that refuses it is a :class:`DeviceError` (timings
        stored under the fixed_performance key must have been taken with it)."""
        users = self._users_file()
        try:
            fcntl.flock(users, fcntl.LOCK_SH)
            proc = self._run(["shell", *FIXED_PERFORMANCE_ON], check=False)
            if proc.returncode != 0:
                said = (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()[0]
                raise DeviceError(f"phone {self.resolve_serial()} refused fixed performance mode "
                                  f"({' '.join(FIXED_PERFORMANCE_ON)}: {said[:200]}); it needs Android 11 or later: "
                                  "set latency.fixed_performance=false")
        except BaseException:
            users.close()
            raise
        # left on before: the phone kept its fixed clocks after the search. Switched off by close(), else when the
        # runner is collected or its process ends (a latency worker ends through multiprocessing, which runs these
        # finalizers, not atexit, or closes its runner as it follows its dead parent); a worker killed outright
        # cannot: the service calls switch_performance_off. Each time only if no other runner uses it
        self._performance_off = Finalize(self, _fixed_performance_off, exitpriority=0, args=(*self._off_args(), users))

    def _users_file(self):
        """The open file of the phone's fixed performance mode users (see the class docstring)."""
        return open(device_locks_dir() / f"{self.lock_name}.fixed-performance", "a")

    def close(self) -> None:
        """Switch fixed performance mode back off if this runner switched it on; a later ``time()`` sets up again."""
        if self._performance_off is not None:
            self._performance_off()  # runs once, and no more at exit
            self._performance_off = None
        self._binary_pushed = False

    def switch_performance_off(self) -> None:
        """Switch fixed performance mode off when this runner's settings ask for it and no runner uses it any more,
        whichever process switched it on: the service's runner does it for a worker it killed (a killed process runs
        no finalizer; the kernel has let go of its lock)."""
        if not self.fixed_performance:
            return
        try:
            args = self._off_args()
        except DeviceError:
            return  # no adb or no phone: nothing to switch off
        _fixed_performance_off(*args, self._users_file())

    def _others_use_fixed_performance(self) -> bool:
        """Whether a runner of this machine holds the phone's fixed performance mode now (the users file is locked;
        held for a moment only, so that the last user's switch-off, which tries for USERS_CHECK_S, is not put off)."""
        with self._users_file() as users:
            return not _lock_alone(users, wait_s=0.0)

    def _off_args(self) -> tuple[str, str, float]:
        """What :func:`_fixed_performance_off` is called with: adb, the phone's serial and a short timeout."""
        return self._adb_path(), self.resolve_serial(), min(self.timeout_s, QUICK_ADB_S)

    def time(self, tflite_path: str | Path) -> dict:
        binary = self._ensure_binary()
        remote_model = f"{REMOTE_DIR}/mnas_{Path(tflite_path).parent.name}_{Path(tflite_path).name}"
        self._retrying(lambda: self._run(["push", str(tflite_path), remote_model]), "pushing the model")
        if self.cooldown_s:
            time.sleep(self.cooldown_s)
        command = [binary, f"--graph={remote_model}", f"--num_threads={self.threads}",
                   f"--warmup_runs={self.warmup_runs}", f"--num_runs={self.num_runs}",
                   f"--use_xnnpack={'true' if self.use_xnnpack else 'false'}"]
        if self.cpu_mask:
            command = ["taskset", str(self.cpu_mask), *command]
        remote = " ".join(shlex.quote(part) for part in command)
        if self.fixed_performance:
            # set again right before each run, in the same shell call (no adb round trip more): a phone that rebooted
            # since the last timing, or dropped and came back between the retries below, has lost the mode
            remote = f"{' '.join(FIXED_PERFORMANCE_ON)} && {remote}"
        elif self._others_use_fixed_performance():
            # another search on this phone times with the mode: off for this run (that search sets it again in each
            # of its own), so that a timing stored without the fixed_performance key was taken without it
            remote = f"{' '.join(FIXED_PERFORMANCE_OFF)} && {remote}"
        try:
            try:
                proc = self._retrying(lambda: self._run(["shell", remote]), "benchmark_model")
            except DeviceError as exc:
                try:  # the model's failure only where the phone still answers; a phone that dropped is the moment's
                    self.healthy()
                except DeviceError:
                    raise exc from None
                raise ModelRunError(str(exc)) from None
            try:
                result = parse_benchmark_output(proc.stdout + "\n" + proc.stderr)
            except ValueError as exc:
                tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
                raise ModelRunError(f"{exc}; benchmark_model printed: {' | '.join(tail)}") from None
        finally:
            try:  # best effort: a phone gone meanwhile neither replaces the run's own error nor discards its timing
                self._run(["shell", "rm", "-f", shlex.quote(remote_model)], check=False,
                          timeout_s=min(self.timeout_s, QUICK_ADB_S))
            except DeviceError:
                pass  # the file is small, and the next push of the same model replaces it
        return result


def _said(proc: subprocess.CompletedProcess) -> str:
    """What a failed adb command said: its last line (stderr, else stdout), else its exit status."""
    message = (proc.stderr or proc.stdout).strip().splitlines()
    return message[-1] if message else f"exit {proc.returncode}"


def _lock_alone(users, wait_s: float) -> bool:
    """Take the exclusive lock of ``users`` (the open file of the phone's fixed performance mode users), trying for
    ``wait_s`` seconds; whether it was taken (no other runner holds the file)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def _fixed_performance_off(adb: str, serial: str, timeout_s: float, users) -> None:
    """Let go of ``users`` (the open file of the phone's fixed performance mode users) and switch the mode off if
    no other runner holds it, under its exclusive lock: a runner starting meanwhile waits, then switches it on again.
    A module function, not a method: the finalizer must not keep the runner alive."""
    with users:
        fcntl.flock(users, fcntl.LOCK_UN)
        # a runner without the mode checks for its users by taking the lock for a moment: tried for USERS_CHECK_S
        if not _lock_alone(users, wait_s=USERS_CHECK_S):
            return  # another search still times with it: the last one out switches it off
        try:
            subprocess.run([adb, "-s", serial, "shell", *FIXED_PERFORMANCE_OFF], capture_output=True,
                           timeout=timeout_s)
        except (OSError, subprocess.SubprocessError):
            pass  # the phone is gone or hangs: nothing more to do from here


def parse_adb_devices(text: str) -> list[dict]:
    """``adb devices -l`` -> [{serial, state, model}] (skips the header and daemon messages)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("List of devices", "*")):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        info = dict(p.split(":", 1) for p in parts[2:] if ":" in p)
        out.append({"serial": parts[0], "state": parts[1], "model": info.get("model"), "product": info.get("product")})
    return out


RUNNERS = {"host": HostRunner, "adb": AdbRunner}


def make_runner(config: dict):
    config = dict(config)
    name = config.pop("runner", "host")
    if name not in RUNNERS:
        raise ValueError(f"latency.runner must be one of {', '.join(RUNNERS)}, got {name!r}")
    cls = RUNNERS[name]
    known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")} - {"name"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown latency field(s) for runner {name!r}: {', '.join(unknown)}"
                         f"{did_you_mean(unknown[0], known)}")
    return cls(**config)

