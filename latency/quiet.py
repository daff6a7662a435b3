"""Quiet host timing: while the host CPU times a model, the search's own work (training steps, conversions) waits.

Measured here before this gate existed: the three references timed inside a search at 15.6 / 16.1 / 8.7 ms and
alone at 7.1 / 7.4 / 7.5 ms; random children 1.4-1.65x their quiet median with a std of 30-40% of it. The search
itself was the disturbance (training the next child and converting others on the same two cores), so "use an idle
machine" could not help. The gate makes the two kinds of work take turns, across processes:

- ``busy()`` wraps one short piece of the search's work (one optimisation step). It passes a turnstile
  (``<name>.gate``, exclusive, held for a few syscalls) and then holds the work lock (``<name>.work``) *shared*: any
  number of busy pieces run at once.
- ``busy(long=True)`` wraps one long piece (a conversion: seconds to tens of seconds). It first passes a turnstile
  of its own (``<name>.long-gate``) and holds ``<name>.long-work`` shared, then does what ``busy()`` does.
- ``quiet()`` wraps one timing, in two phases. First it takes the long turnstile and the long work lock
  exclusively: conversions in progress finish, no new one starts, and training goes on meanwhile. Then it takes the
  turnstile and keeps it, so no new busy piece can start, and takes the work lock exclusively, which it gets once
  the steps in progress have finished. The timing is writer-preferring: a stream of busy work can delay it by at
  most the longest piece in progress, never starve it; and training stops only for the timing itself and the end
  of the steps in progress, never for the rest of a conversion (measured with a single phase: two trainer actors on Ray
  used half a core each and a third of the 2-core machine stood idle, behind conversions a timing waited for).

All four locks are acquired in the same order by everyone (long turnstile, long work, turnstile, work), so no two
holders can wait for each other.

The locks are ``flock`` locks on files in the latency cache's ``locks/`` directory: the kernel releases them when
their holder dies, even by ``kill -9``, so a dead trainer or worker never blocks the others. ``flock`` locks belong
to an open file, so each thread opens its own descriptors: two threads of one process exclude each other as two
processes do. A thread must not ask for ``quiet()`` inside its own ``busy()`` (it would wait for itself): that raises.

Only the host runner needs this (a phone is not the host); :meth:`HostGate.for_runner` returns a gate whose
``busy()`` and ``quiet()`` do nothing for any other runner.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class QuietWindow:
    """What a timing learns from the gate: how it was timed and how long it waited for the search's work."""

    mode: str  # "quiet" (host, search work paused), "shared" (host, no gate), "device" (a phone: not the host)
    waited_s: float = 0.0
    cpu: int | None = None  # the core the timing thread was pinned to, if it was

    def to_dict(self) -> dict:
        return {"mode": self.mode, "waited_s": round(self.waited_s, 6), "cpu": self.cpu}


# The gate quiets the search's own processes; other users of the machine it cannot. Measured here on a 2-vCPU VM
# while another user's jobs ran: MnasNet-A1 timed at 10.6-15.5 ms against 10.0 ms in a quiet round, and the timing
# thread's own CPU time grew as much as its wall time (the other vCPU shares the core's caches and memory
# bandwidth), so dropping preempted runs would not help. A host timing therefore measures how many cores' worth of
# other work ran meanwhile (``others_cpu``, from /proc/stat minus this process); a round disturbed by more than
# DISTURBED_CPU does not count and is timed again, up to DISTURBED_RETRIES extra rounds. Rounds are ROUND_GAP_S
# apart (slow phases of the VM itself last about 1.5 s here; see ``latency.service._timing_session``).
DISTURBED_CPU = 0.25
DISTURBED_RETRIES = 2
ROUND_GAP_S = 1.0
PROBE_MIN_S = 0.1  # /proc/stat counts in 10 ms ticks: shorter windows cannot tell


def _busy_ticks() -> int | None:
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return user + nice + system + irq + softirq + steal


class LoadProbe:
    """``with LoadProbe() as probe: ...`` then ``probe.others_cpu``: the CPU other processes used meanwhile, in cores
    (0 = nothing else ran; 1 = one core's worth), or None where /proc/stat is missing or the window was too short."""

    def __enter__(self) -> LoadProbe:
        self._ticks, self._own, self._start = _busy_ticks(), time.process_time(), time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        end_ticks, own, end = _busy_ticks(), time.process_time(), time.monotonic()
        self.seconds = end - self._start
        self.others_cpu = None
        if self._ticks is not None and end_ticks is not None and self.seconds >= PROBE_MIN_S:
            busy = (end_ticks - self._ticks) / os.sysconf("SC_CLK_TCK")
            self.others_cpu = max(0.0, (busy - (own - self._own)) / self.seconds)

    @property
    def disturbed(self) -> bool:
        return self.others_cpu is not None and self.others_cpu > DISTURBED_CPU


class NullGate:
    """The gate of a runner that is not the host: nothing to keep quiet."""

    mode = "device"

    @contextmanager
    def busy(self, *, long: bool = False) -> Iterator[None]:
        yield

    @contextmanager
    def quiet(self) -> Iterator[QuietWindow]:
        yield QuietWindow(self.mode)


class SharedGate(NullGate):
    """Host timing without the gate (``quiet: false``): results say they were timed while other work could run."""

    mode = "shared"


class HostGate:
    """The cross-process turnstile described in the module docstring. Picklable (it holds only paths)."""

    mode = "quiet"

    def __init__(self, locks_dir: str | Path, name: str = "host-cpu"):
        self.locks_dir = Path(locks_dir)
        self.name = name
        self.gate_path = self.locks_dir / f"{name}.gate"
        self.work_path = self.locks_dir / f"{name}.work"
        self.long_gate_path = self.locks_dir / f"{name}.long-gate"
        self.long_work_path = self.locks_dir / f"{name}.long-work"
        self._local = threading.local()

    @classmethod
    def for_runner(cls, runner, locks_dir: str | Path, *, quiet: bool = True) -> HostGate | NullGate:
        """The gate for ``runner`` (a runner object, a runner config dict or a runner name)."""
        if isinstance(runner, dict):
            name = runner.get("runner", "host")
        elif isinstance(runner, str):
            name = runner
        else:
            name = getattr(runner, "name", None)
        if name != "host":
            return NullGate()
        return cls(locks_dir) if quiet else SharedGate()

    def __getstate__(self) -> dict:
        return {"locks_dir": self.locks_dir, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["locks_dir"], state["name"])

    def _fds(self) -> _ThreadLocks:
        """This thread's own descriptors of the lock files (opened once per thread and process)."""
        locks = getattr(self._local, "locks", None)
        if locks is None or locks.pid != os.getpid():  # first use in this thread, or a forked child's copy
            locks = self._local.locks = _ThreadLocks(self)
        return locks

    @staticmethod
    def _enter_shared(turnstile: int, work: int) -> None:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(work, fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)

    @contextmanager
    def busy(self, *, long: bool = False) -> Iterator[None]:
        """One piece of the search's own work (``long``: a conversion); waits while a timing runs. Nested calls in
        one thread are free."""
        fds = self._fds()
        if fds.quiet:
            raise RuntimeError("busy() called inside quiet() in the same thread: its shared locks would end the "
                               "timing's quiet window")
        if fds.busy_depth == 0:
            if long:
                self._enter_shared(fds.long_gate, fds.long_work)
                fds.long = True
            try:
                self._enter_shared(fds.gate, fds.work)
            except BaseException:
                self._leave_long(fds)
                raise
        fds.busy_depth += 1
        try:
            yield
        finally:
            fds.busy_depth -= 1
            if fds.busy_depth == 0:
                fcntl.flock(fds.work, fcntl.LOCK_UN)
                self._leave_long(fds)

    @staticmethod
    def _leave_long(fds) -> None:
        if fds.long:
            fcntl.flock(fds.long_work, fcntl.LOCK_UN)
            fds.long = False

    @contextmanager
    def quiet(self) -> Iterator[QuietWindow]:
        """One timing: waits for the conversions, then the steps in progress; keeps new work out until it ends."""
        fds = self._fds()
        if fds.busy_depth:
            raise RuntimeError("quiet() called inside busy() in the same thread: it would wait for itself")
        start = time.monotonic()
        locks = (fds.long_gate, fds.long_work, fds.gate, fds.work)
        taken = []
        if fds.quiet:
            raise RuntimeError("quiet() called inside quiet() in the same thread: the inner one would end the "
                               "outer one's window")
        try:
            for fd in locks:
                fcntl.flock(fd, fcntl.LOCK_EX)
                taken.append(fd)
            fds.quiet = True
            yield QuietWindow(self.mode, waited_s=time.monotonic() - start)
        finally:
            fds.quiet = False
            for fd in reversed(taken):
                fcntl.flock(fd, fcntl.LOCK_UN)


class _ThreadLocks:
    """One thread's descriptors of a :class:`HostGate`'s four lock files and what the thread holds. They are closed
    when the thread ends (its ``threading.local`` goes, and this with it): a thread pool's short-lived threads had
    left four open descriptors each."""

    def __init__(self, gate: HostGate):
        gate.locks_dir.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        self._opened: list[int] = []
        self.gate, self.work, self.long_gate, self.long_work = (
            self._open(path) for path in (gate.gate_path, gate.work_path, gate.long_gate_path, gate.long_work_path))
        self.busy_depth, self.long, self.quiet = 0, False, False

    def _open(self, path: Path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        self._opened.append(fd)
        return fd

    def __del__(self) -> None:
        if getattr(self, "pid", None) != os.getpid():  # a forked child's copy: the numbers may be another's by now
            return
        for fd in getattr(self, "_opened", ()):
            try:
                os.close(fd)
            except OSError:
                pass


@contextmanager
def pinned_to_one_core(window: QuietWindow | None = None) -> Iterator[int | None]:
    """Pin the calling thread to one core it may use (the last one) for the duration; restore its mask after.

    A one-thread LiteRT ``invoke()`` runs on the calling thread, so this keeps the timed work on one core for all
    runs. Where the platform has no affinity calls (or one core only) it does nothing and yields None.
    """
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    if len(before) < 2:
        yield None
        return
    cpu = max(before)
    os.sched_setaffinity(0, {cpu})
    if window is not None:
        window.cpu = cpu
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)
