"""A deterministic in-memory evaluator for engine tests: milliseconds per search, no dataset, no conversion."""

from __future__ import annotations

from collections import deque

from nas.evaluator import Evaluator, child_seed
from nas.record import ChildResult, LatencySource
from nas.synthetic import synthetic_measurements


class FakeEvaluator(Evaluator):
    """Children from ``synthetic_measurements``; ``fail`` archs fail; ``stop_after`` results raise ``stop_with``
    (an interrupt or a crash) in the middle of a step; ``order`` returns queued children last-in-first-out to mimic
    a pool where children finish out of order. ``evaluations`` counts what was really evaluated."""

    def __init__(self, *, fail: set[str] = frozenset(), stop_after: int | None = None,
                 stop_with: type[BaseException] = KeyboardInterrupt, capacity: int = 1, lifo: bool = False):
        self.fail = set(fail)
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
        child.top1, child.latency_ms, child.params, child.macs = synthetic_measurements(arch)
        child.latency_source = LatencySource.MEASURED
        return child

    def close(self) -> None:
        self.closed = True
