"""A deterministic in-memory evaluator for engine tests: milliseconds per search, no dataset, no conversion."""

from __future__ import annotations

from collections import deque

from nas.evaluator import Evaluator, child_seed
from nas.record import ChildResult, LatencySource
from nas.synthetic import synthetic_measurements


class FakeEvaluator(Evaluator):
    """Children from ``synthetic_measurements``; ``fail`` archs fail (NaN loss, a property of the architecture);
    ``flaky`` archs fail transiently (a worker that died) the first time they are evaluated; ``stop_after`` results raise ``stop_with``
    (an interrupt or a crash) in the middle of a step; ``order`` returns queued children last-in-first-out to mimic
    a pool where children finish out of order. ``evaluations`` counts what was really evaluated."""

    def __init__(self, *, fail: set[str] = frozenset(), flaky: set[str] = frozenset(), stop_after: int | None = None,
                 stop_with: type[BaseException] = KeyboardInterrupt, capacity: int = 1, lifo: bool = False):
        self.fail, self.flaky = set(fail), set(flaky)
        self.stop_after = stop_after
        self.stop_with = stop_with
        self.capacity = capacity
        self.lifo = lifo
        self.evaluations: list[str] = []
        self.started = self.closed = False
        self._queue: deque[str] = deque()

    def start(self, run_dir) -> None:
        self.started = True

    def submit(self, arch: str) -> None:
        self._queue.append(arch)

    def pending(self) -> int:
        return len(self._queue)

    def next_result(self) -> ChildResult:
        if self.stop_after is not None and len(self.evaluations) >= self.stop_after:
            raise self.stop_with("stopped by the test")
        arch = self._queue.pop() if self.lifo else self._queue.popleft()
        self.evaluations.append(arch)
        child = ChildResult(arch=arch, seed=child_seed(0, arch))
        if arch in self.fail:
            return child.fail("train: loss is nan at epoch 1, step 2")
        if arch in self.flaky and self.evaluations.count(arch) == 1:
            return child.fail("train: gave up after 3 attempts: train actor died", transient=True)
        child.top1, child.latency_ms, child.params, child.macs = synthetic_measurements(arch)
        child.latency_source = LatencySource.MEASURED
        return child

    def close(self) -> None:
        self.closed = True


class FakePredictor:
    """A table predictor's stand-in: the synthetic latency off by a deterministic -15% .. +15% per architecture
    (so fronts by prediction and by measurement differ); ``unknown`` archs fail as a table without their layers."""

    def __init__(self, unknown: set[str] = frozenset()):
        self.unknown = set(unknown)

    @staticmethod
    def error(arch: str) -> float:
        import zlib

        return 0.3 * ((zlib.crc32(arch.encode()) % 1000) / 999 - 0.5)

    def predict(self, arch: str):
        from latency.result import LatencyResult

        if arch in self.unknown:
            return LatencyResult(arch=arch, status="failed", error="1 layer(s) of this network are not in latency "
                                 "table t (e.g. x); add them with: python -m latency table build --arch ...",
                                 extra={"source": "predicted"})
        truth = synthetic_measurements(arch)[1]
        return LatencyResult(arch=arch, status="ok", latency_ms=truth * (1 + self.error(arch)),
                             extra={"source": "predicted", "stated_error": {"n": 0}})


class FakeLatencyEvaluator(FakeEvaluator):
    """FakeEvaluator's children with their latency taken as ``latency.mode`` says, through the same
    :class:`~nas.evaluator.LatencyModes` calls as the real evaluators; the synthetic latency is the "measurement".
    ``measured`` lists the architectures measured for real, in order."""

    def __init__(self, mode: str, *, top_k: int = 2, unknown: set[str] = frozenset(), **kwargs):
        from nas.evaluator import LatencyModes

        super().__init__(**kwargs)
        self.modes = LatencyModes(mode, hybrid_top_k=top_k)
        self.modes.predictor = FakePredictor(unknown)
        self.measured: list[str] = []
        self._predicted: dict[str, dict | None] = {}

    def submit(self, arch: str) -> None:
        super().submit(arch)
        self._predicted[arch] = None if self.modes.measure_at_submit else self.modes.predict(arch)

    def next_result(self) -> ChildResult:
        child = super().next_result()
        child.latency_ms = child.latency_source = None  # what "training" gives: no latency yet
        predicted = self._predicted.pop(child.arch)
        reason = self.modes.wants_measurement(child, predicted)
        measured = None
        if reason is not None:
            self.measured.append(child.arch)
            measured = {"status": "ok", "latency_ms": synthetic_measurements(child.arch)[1], "std_ms": 0.0,
                        "wall_seconds": 0.0}
        return self.modes.finish(child, predicted, measured, reason)
