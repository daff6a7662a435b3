"""The host gate across processes: timings exclude busy work, are preferred over new busy work, survive kill -9.

Order, not speed, is asserted: each process appends "<name> in" / "<name> out" to one log when it enters and leaves;
the test observes who holds the turnstile with non-blocking flock probes.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from latency.quiet import HostGate, NullGate, SharedGate

WAIT_S = 60.0


def _hold(kind: str, name: str, locks_dir: str, log: str, release: str) -> None:
    gate = HostGate(locks_dir)
    with open(log, "a") as f:
        f.write(f"{name} wants\n")
    with (gate.busy(long=True) if kind == "long" else getattr(gate, kind)()):
        with open(log, "a") as f:
            f.write(f"{name} in\n")
        while not os.path.exists(release):
            time.sleep(0.01)
        with open(log, "a") as f:
            f.write(f"{name} out\n")


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _events(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _held(path: Path, mode: int) -> bool:
    """Whether someone else holds ``path`` in a way that excludes ``mode`` (a non-blocking probe)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@pytest.fixture
def ctx():
    return multiprocessing.get_context("spawn")


def test_timing_waits_for_busy_work_and_new_busy_work_waits_for_the_timing(tmp_path, ctx):
    locks, log = tmp_path / "locks", tmp_path / "events.log"
    gate = HostGate(locks)
    start = lambda kind, name: ctx.Process(target=_hold, args=(kind, name, str(locks), str(log),  # noqa: E731
                                                               str(tmp_path / f"release-{name}")))
    busy1, busy2 = start("busy", "busy1"), start("busy", "busy2")
    busy1.start()
    busy2.start()
    _until(lambda: {"busy1 in", "busy2 in"} <= set(_events(log)), "two busy holders at once (shared)")

    timing = start("quiet", "timing")
    timing.start()
    _until(lambda: "timing wants" in _events(log) and _held(gate.gate_path, fcntl.LOCK_EX),
           "the timing to hold the turnstile while it waits")
    assert "timing in" not in _events(log)  # busy work in progress: the timing waits

    late = start("busy", "late")  # arrives while the timing waits: must not get in before it (writer preference)
    late.start()
    _until(lambda: "late wants" in _events(log), "the late busy work to ask")
    time.sleep(0.3)
    assert "late in" not in _events(log)
    (tmp_path / "release-busy1").touch()
    _until(lambda: "busy1 out" in _events(log), "busy1 to leave")
    time.sleep(0.3)
    assert "timing in" not in _events(log) and "late in" not in _events(log)  # busy2 still holds the work lock
    (tmp_path / "release-busy2").touch()
    _until(lambda: "timing in" in _events(log), "the timing to start once busy work is done")
    time.sleep(0.3)
    assert "late in" not in _events(log)  # nothing busy runs during a timing
    (tmp_path / "release-timing").touch()
    (tmp_path / "release-late").touch()
    for p in (busy1, busy2, timing, late):
        p.join(WAIT_S)
        assert p.exitcode == 0
    events = _events(log)
    assert events.index("timing out") < events.index("late in")
    assert events.index("busy2 out") < events.index("timing in")


def test_training_goes_on_while_a_timing_waits_for_a_conversion(tmp_path, ctx):
    locks, log = tmp_path / "locks", tmp_path / "events.log"
    gate = HostGate(locks)
    start = lambda kind, name: ctx.Process(target=_hold, args=(kind, name, str(locks), str(log),  # noqa: E731
                                                               str(tmp_path / f"release-{name}")))
    conversion = start("long", "conversion")
    conversion.start()
    _until(lambda: "conversion in" in _events(log), "the conversion to start")
    timing = start("quiet", "timing")
    timing.start()
    _until(lambda: "timing wants" in _events(log) and _held(gate.long_gate_path, fcntl.LOCK_EX),
           "the timing to wait for the conversion")
    step = start("busy", "step")  # a training step while the timing waits for the conversion: it runs
    step.start()
    _until(lambda: "step in" in _events(log), "the training step to run while the conversion finishes")
    (tmp_path / "release-step").touch()
    _until(lambda: "step out" in _events(log), "the step to end")
    late = start("long", "late")  # a new conversion waits for the timing
    late.start()
    _until(lambda: "late wants" in _events(log), "the late conversion to ask")
    time.sleep(0.3)
    assert "timing in" not in _events(log) and "late in" not in _events(log)
    (tmp_path / "release-conversion").touch()
    _until(lambda: "timing in" in _events(log), "the timing once the conversion is done")
    step2 = start("busy", "step2")  # now the timing holds the host: steps wait
    step2.start()
    _until(lambda: "step2 wants" in _events(log), "the second step to ask")
    time.sleep(0.3)
    assert "step2 in" not in _events(log) and "late in" not in _events(log)
    for name in ("timing", "late", "step2"):
        (tmp_path / f"release-{name}").touch()
    for p in (conversion, timing, step, late, step2):
        p.join(WAIT_S)
        assert p.exitcode == 0
    events = _events(log)
    assert events.index("conversion out") < events.index("timing in") < events.index("timing out")
    assert events.index("timing out") < min(events.index("late in"), events.index("step2 in"))


def test_two_timings_exclude_each_other(tmp_path, ctx):
    locks, log = tmp_path / "locks", tmp_path / "events.log"
    procs = [ctx.Process(target=_hold, args=("quiet", n, str(locks), str(log), str(tmp_path / f"release-{n}")))
             for n in ("a", "b")]
    for p in procs:
        p.start()
    _until(lambda: {"a wants", "b wants"} <= set(_events(log)) and any(e.endswith(" in") for e in _events(log)),
           "both timings to ask and one to start")
    time.sleep(0.3)
    entered = [e for e in _events(log) if e.endswith(" in")]
    assert len(entered) == 1
    first = entered[0].split()[0]
    other = "b" if first == "a" else "a"
    (tmp_path / f"release-{first}").touch()
    (tmp_path / f"release-{other}").touch()
    for p in procs:
        p.join(WAIT_S)
    events = [e for e in _events(log) if not e.endswith("wants")]
    assert events == [f"{first} in", f"{first} out", f"{other} in", f"{other} out"]


def test_a_killed_timing_releases_the_gate(tmp_path, ctx):
    locks, log = tmp_path / "locks", tmp_path / "events.log"
    holder = ctx.Process(target=_hold, args=("quiet", "victim", str(locks), str(log), str(tmp_path / "never")))
    holder.start()
    _until(lambda: "victim in" in _events(log), "the timing to hold the gate")
    entered = threading.Event()

    def busy() -> None:
        with HostGate(locks).busy():
            entered.set()

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    time.sleep(0.3)
    assert not entered.is_set()  # held by the timing
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(WAIT_S)
    assert entered.wait(WAIT_S), "busy work still blocked after the timing's holder was killed"


def test_a_killed_busy_holder_releases_the_gate(tmp_path, ctx):
    locks, log = tmp_path / "locks", tmp_path / "events.log"
    holder = ctx.Process(target=_hold, args=("busy", "victim", str(locks), str(log), str(tmp_path / "never")))
    holder.start()
    _until(lambda: "victim in" in _events(log), "busy work to hold the work lock")
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(WAIT_S)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (HostGate(locks).quiet().__enter__(), done.set()), daemon=True)
    thread.start()
    assert done.wait(WAIT_S), "a timing still blocked after the busy holder was killed"


def test_threads_of_one_process_exclude_each_other_and_nesting(tmp_path):
    gate = HostGate(tmp_path / "locks")
    with gate.busy():
        with gate.busy():  # nested busy in one thread is free
            pass
        with pytest.raises(RuntimeError, match="inside busy"):
            with gate.quiet():
                pass
        entered = threading.Event()
        other = threading.Thread(target=lambda: (gate.quiet().__enter__(), entered.set()), daemon=True)
        other.start()
        time.sleep(0.3)
        assert not entered.is_set()  # another thread's timing waits for this thread's busy work
    assert entered.wait(WAIT_S)


def test_busy_or_quiet_inside_a_timing_of_the_same_thread_is_refused_and_the_window_stays_quiet(tmp_path, ctx):
    """busy() inside quiet() in one thread had turned the timing's exclusive locks into shared ones and released
    them: another process's training step ran for the rest of the timing. A nested quiet() ended the window too."""
    locks, log, release = tmp_path / "locks", tmp_path / "log", tmp_path / "release"
    gate = HostGate(locks)
    with gate.quiet():
        for nested in (gate.busy, gate.quiet):
            with pytest.raises(RuntimeError, match="inside quiet"):
                with nested():
                    pass
        step = ctx.Process(target=_hold, args=("busy", "step", str(locks), str(log), str(release)))
        step.start()
        _until(lambda: "step wants" in _events(log), "the step to ask")
        time.sleep(0.5)
        assert "step in" not in _events(log)  # the window is still quiet after the refused nesting
    _until(lambda: "step in" in _events(log), "the step to run after the timing")
    release.touch()
    step.join(WAIT_S)
    with gate.busy():  # and the thread's state is clean: it can work and time again
        pass
    with gate.quiet():
        pass


def test_the_lock_descriptors_of_a_thread_are_closed_when_it_ends(tmp_path):
    """Each thread that used the gate had left its four descriptors open: a pool's short-lived threads ran the
    process out of descriptors (about 255 threads at the usual limit of 1024)."""
    import gc

    gate = HostGate(tmp_path / "locks")

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def one_step():
        with gate.busy():
            pass

    one_step()  # this thread's own, kept
    before = open_fds()
    for _ in range(50):
        thread = threading.Thread(target=one_step)
        thread.start()
        thread.join()
    gc.collect()
    assert open_fds() <= before + 4


def test_gate_for_runner_and_picklable(tmp_path):
    import pickle

    from latency.runners import AdbRunner, HostRunner

    assert isinstance(HostGate.for_runner(HostRunner(), tmp_path), HostGate)
    assert isinstance(HostGate.for_runner({"runner": "host"}, tmp_path, quiet=False), SharedGate)
    null = HostGate.for_runner(AdbRunner(serial="X"), tmp_path)
    assert isinstance(null, NullGate) and not isinstance(null, SharedGate)
    with null.busy(), null.quiet() as window:  # a phone is not the host: nothing waits
        assert window.mode == "device"
    copy = pickle.loads(pickle.dumps(HostGate(tmp_path / "locks")))
    with copy.busy():
        assert copy.work_path == tmp_path / "locks" / "host-cpu.work"


def test_service_conversions_wait_while_the_host_times(host_service):
    """The service converts under busy(): a conversion asked for during a timing ends only after the timing."""
    assert host_service.measure("ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16", resolution=32, num_classes=10).ok  # warm
    gate = HostGate(host_service.device_locks_dir)
    box: dict = {}
    with gate.quiet():
        thread = threading.Thread(target=lambda: box.update(record=host_service.convert(
            "ds_r1_k5_s1_c8-ir_r1_k5_s2_e6_c16", resolution=28, num_classes=10)), daemon=True)
        thread.start()
        time.sleep(2.0)
        assert thread.is_alive()
        released = time.time()
    thread.join(WAIT_S)
    record = box["record"]
    assert record["status"] == "ok" and record["finished_at"] >= released and record["busy_waited_s"] > 0
    result = host_service.time(record)
    assert result.ok and result.extra["timing"]["mode"] == "quiet" and result.extra["timing"]["waited_s"] >= 0


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_a_timing_disturbed_by_other_processes_is_noticed_and_repeated(host_service, ctx):
    """Other processes of the machine cannot be paused: their CPU use during a timing is measured, and a disturbed
    round is repeated (and the result says so). One spinning process per core: at least one core's worth."""
    from latency.quiet import DISTURBED_CPU, DISTURBED_RETRIES, LoadProbe

    spinners = [ctx.Process(target=_spin, args=(60.0,), daemon=True) for _ in range(os.cpu_count() or 2)]
    for p in spinners:
        p.start()
    try:
        with LoadProbe() as probe:
            time.sleep(0.5)
        assert probe.others_cpu is not None and probe.others_cpu > DISTURBED_CPU
        from latency import build_service

        # rounds long enough for the load probe to judge (PROBE_MIN_S) even when this tiny model runs at its fastest
        with build_service("host", workers=1, warmup_runs=1, num_runs=15000, cache_path=host_service.cache_path,
                           work_dir=host_service.work_dir) as service:
            result = service.measure("ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16", resolution=32, num_classes=10)
        timing = result.extra["timing"]
        assert result.ok and timing["rounds"] == 3 + DISTURBED_RETRIES == timing["disturbed_rounds"]
        assert min(timing["others_cpu"]) > DISTURBED_CPU and len(result.samples_ms) == 15000 + DISTURBED_RETRIES * 5000
    finally:
        for p in spinners:
            p.kill()
