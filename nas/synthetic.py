"""An evaluator with no training and no conversion: accuracy and latency from a closed-form function of the
architecture, deterministic per architecture string.

For what must not wait on real children: a dry run of a config (``evaluator=synthetic``), the driver benchmark
(``scripts/bench_search.py``: 8,000 children in seconds) and tests of resume, reuse and failures in milliseconds.
The numbers behave like real ones where the search can see it (wider, deeper and larger-kernel networks are more
accurate and slower, MACs drive latency) but they are not measurements: never report them.
"""

from __future__ import annotations

import heapq
import math
import time
import zlib
from collections import deque

from mnas_common.checks import non_negative_number, positive_int

from nas.components import build
from nas.evaluator import Evaluator, LatencyModes, child_seed, latency_problem
from nas.record import ChildResult, LatencySource

_now, _sleep = time.monotonic, time.sleep  # the simulated work's clock (a test's fake one in its place)


def _unit(arch: str, salt: str) -> float:
    """A deterministic number in [0, 1) from the architecture string."""
    return (zlib.crc32(f"{salt}:{arch}".encode()) % 1_000_003) / 1_000_003


def synthetic_measurements(arch: str, resolution: int = 224, channels: int = 3,
                           num_classes: int = 1000) -> tuple[float, float, int, int]:
    """(top-1, latency ms, params, MACs) of ``arch`` for a ``resolution`` x ``resolution`` x ``channels`` input and
    ``num_classes`` classes: MACs and parameters counted from the block specs with the usual formulas, latency about
    1 ms per 60 M MACs plus a per-layer overhead, accuracy saturating in capacity."""
    from search_spaces import parse_arch, resolve_arch

    spec = parse_arch(resolve_arch(arch))
    res, cin = math.ceil(resolution / 2), 32
    stem = 9 * channels * cin  # the 3x3 stem convolution
    macs, params, layers = res * res * stem, stem, 1
    for block in spec.blocks:
        for i in range(block.repeats):
            stride = block.stride if i == 0 else 1
            out_res = math.ceil(res / stride)
            k2, cout = block.kernel ** 2, block.out_channels
            if block.block_type == "cn":
                p, m = cin * cout * k2, out_res ** 2 * cin * cout * k2
            elif block.block_type == "ds":
                p = cin * k2 + cin * cout
                m = out_res ** 2 * p
            else:
                mid = cin * block.expansion
                p = cin * mid * (block.expansion > 1) + mid * k2 + mid * cout
                m = res ** 2 * cin * mid * (block.expansion > 1) + out_res ** 2 * (mid * k2 + mid * cout)
            if block.se_ratio:
                se = max(1, round(block.se_ratio * cin))
                p, m = p + 2 * cin * se, m + 2 * cin * se
            params, macs, layers = params + p, macs + m, layers + 1
            res, cin = out_res, cout
    params += cin * 1280 + 1280 * num_classes
    macs += res * res * cin * 1280 + 1280 * num_classes
    latency = 0.4 + macs / 60e6 + 0.02 * layers
    latency *= 0.97 + 0.06 * _unit(arch, "latency")
    top1 = 0.55 + 0.33 * (1 - math.exp(-macs / 150e6)) + 0.08 * (1 - math.exp(-params / 2e6))
    top1 += 0.03 * (_unit(arch, "accuracy") - 0.5)
    return min(top1, 0.999), latency, params, macs


class SyntheticEvaluator(Evaluator):
    """Closed-form children (see the module docstring). ``failure_rate`` of the architectures fail (always the
    same ones), ``seconds`` of sleep simulate work, ``capacity`` children are in flight at once.

    The children have the shape of the run's: no latency without one (``measure_latency=false``), a predicted one
    with ``latency.mode=predict`` (the closed form stands in for both the predictor and the device, so ``hybrid``
    children are all measured ones)."""

    synthetic = True

    @classmethod
    def training_threads(cls, settings: dict, threads: int | None) -> int | None:
        return None  # nothing is trained

    def __init__(self, *, failure_rate: float = 0.0, seconds: float = 0.0, capacity: int = 1, deploy: dict | None = None,
                 seed: int = 0, trainer=None, dataset=None, latency=None, threads=None):
        """``trainer``, ``dataset``, ``latency`` and ``threads`` are what the search passes every evaluator; a
        synthetic child needs none of them (the latency config is checked, see :meth:`check`)."""
        if not 0 <= non_negative_number("evaluator.failure_rate", failure_rate) <= 1:
            raise ValueError(f"evaluator.failure_rate must be in [0, 1], got {failure_rate!r}")
        self.failure_rate = float(failure_rate)
        self.seconds = non_negative_number("evaluator.seconds", seconds)
        self.capacity = positive_int("evaluator.capacity", capacity)
        deploy = deploy or {}
        self.input = (int(deploy.get("resolution", 224)), int(deploy.get("channels", 3)),
                      int(deploy.get("num_classes", 1000)))
        self.seed = seed
        self.latency = latency
        self.modes = LatencyModes.split(latency)[0] if latency is not None else None
        self.submitted: list[str] = []  # every evaluation ever asked for, in order (what tests count)
        self._queue: deque[tuple[str, float]] = deque()  # (arch, when its simulated work is done)
        self._slots: list[float] = []  # heap: when each of the `capacity` busy slots frees

    def check(self) -> list[str]:
        """The latency config's fields and values, as a real evaluator checks them (a typo such as
        ``latency.num_run`` is a dry run's to find), but no cache opened and no device asked: a dry run is for a
        config whose phone may not be here."""
        if self.latency is None:
            return []
        try:
            config = LatencyModes.split(self.latency)[1]
            build("latency", {**config, "check_only": True})
        except Exception as exc:
            return [latency_problem(exc)]
        return []

    def submit(self, arch: str) -> None:
        """The child starts when one of ``capacity`` slots is free and is done ``seconds`` later: ``capacity``
        children take ``seconds`` together, not one after another."""
        self.submitted.append(arch)
        now = _now()
        start = max(now, heapq.heappop(self._slots)) if len(self._slots) >= self.capacity else now
        heapq.heappush(self._slots, start + self.seconds)
        self._queue.append((arch, start + self.seconds))

    def pending(self) -> int:
        return len(self._queue)

    def next_result(self) -> ChildResult:
        arch, done = self._queue.popleft()
        if self.seconds:
            _sleep(max(0.0, done - _now()))
        child = ChildResult(arch=arch, seed=child_seed(self.seed, arch))
        if _unit(arch, "failure") < self.failure_rate:
            return child.fail("train: loss is nan at epoch 1, step 3 (synthetic failure)")
        child.top1, latency, child.params, child.macs = synthetic_measurements(arch, *self.input)
        if self.modes is None:  # measure_latency=false: the run has no latency
            return child
        child.latency_ms = latency
        if self.modes.measures:
            child.latency_source = LatencySource.MEASURED
        else:
            child.latency_source, child.latency_predicted_ms = LatencySource.PREDICTED, latency
        return child

    def status(self) -> str:
        running = min(len(self._queue), self.capacity)
        queued = len(self._queue) - running
        return f"in flight {running}/{self.capacity}" + (f" queued {queued}" if queued else "")
