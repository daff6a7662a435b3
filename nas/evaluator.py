"""Child evaluation behind one small interface: architecture strings in, serialisable results out.

``Evaluator.evaluate(archs)`` yields ``(arch, ChildResult)`` as children finish. Nothing in the interface is a
live object (strings in, plain dataclasses with ``to_dict``/``from_dict`` out), so an implementation can run in
another process or on another machine (a Ray actor owning a phone, say) without the search loop changing.

``LocalEvaluator`` proxy-trains children one after another in this process while the latency service converts and
times them in its own worker processes, so training and latency overlap.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mnas_common.errors import first_line
from mnas_common.serial import Serializable


@dataclass
class ChildResult(Serializable):
    """Everything the search knows about one evaluated child. ``status`` is ``ok`` or ``failed``."""

    arch: str
    status: str = "ok"
    error: str | None = None
    top1: float | None = None
    top5: float | None = None
    latency_ms: float | None = None
    latency_std_ms: float | None = None
    params: int | None = None
    macs: int | None = None
    train_seconds: float | None = None
    latency_seconds: float | None = None
    seed: int | None = None
    train: dict | None = None
    latency: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Evaluator(Protocol):
    def evaluate(self, archs: Sequence[str]) -> Iterator[tuple[str, ChildResult]]:
        """Evaluate distinct architecture strings; yield each result as soon as it is complete."""

    def close(self) -> None: ...


def child_seed(seed: int, arch: str) -> int:
    """A training seed that depends only on the run seed and the architecture (not on evaluation order)."""
    return (seed * 1_000_003 + zlib.crc32(arch.encode())) % 2**31


class LocalEvaluator:
    """Train in this process, measure latency in the latency service's workers, both at once."""

    def __init__(
        self,
        *,
        data: Any,
        trainer_config: Any,
        latency_service: Any | None,
        deploy: dict,
        seed: int = 0,
        audit_log: str | Path | None = None,
    ):
        self.data = data
        self.trainer_config = trainer_config
        self.service = latency_service
        self.deploy = dict(deploy)
        self.seed = seed
        self.audit_log = Path(audit_log) if audit_log else None
        workers = max(1, int(getattr(latency_service, "workers", 2) or 2))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="latency") if latency_service else None

    def _measure(self, arch: str) -> dict:
        start = time.perf_counter()
        result = self.service.measure(
            arch,
            resolution=self.deploy["resolution"],
            channels=self.deploy["channels"],
            num_classes=self.deploy["num_classes"],
        )
        out = result.to_dict()
        out["wall_seconds"] = time.perf_counter() - start
        return out

    def _profile(self, arch: str) -> tuple[int, int]:
        from search_spaces import build_model, count_params_macs

        model = build_model(arch, num_classes=self.deploy["num_classes"], in_channels=self.deploy["channels"])
        return count_params_macs(model, self.deploy["resolution"], self.deploy["channels"])

    def _audit(self, arch: str) -> None:
        if self.audit_log is not None:
            with open(self.audit_log, "a") as f:
                f.write(json.dumps({"arch": arch, "time": time.time()}) + "\n")

    def evaluate(self, archs: Sequence[str]) -> Iterator[tuple[str, ChildResult]]:
        from nas.trainer import train_child

        futures: dict[str, Future] = {}
        if self._pool is not None:
            futures = {arch: self._pool.submit(self._measure, arch) for arch in archs}
        for arch in archs:
            self._audit(arch)
            result = ChildResult(arch=arch, seed=child_seed(self.seed, arch))
            try:
                result.params, result.macs = self._profile(arch)
            except Exception as exc:  # a child that cannot even be built is a failed child, not a crash
                result.status, result.error = "failed", f"build: {first_line(exc, with_type=True)}"
            if result.ok:
                train = train_child(arch, self.data, self.trainer_config, seed=result.seed)
                result.train = train.to_dict()
                result.train_seconds = train.train_seconds
                if train.status == "ok":
                    result.top1, result.top5 = train.top1, train.top5
                else:
                    result.status, result.error = "failed", f"train: {first_line(train.error)}"
            if arch in futures:
                try:
                    latency = futures[arch].result()
                except Exception as exc:  # the service reports failures as values; anything else is a bug upstream
                    latency = {"status": "failed", "error": first_line(exc, with_type=True)}
                result.latency = latency
                result.latency_seconds = latency.get("wall_seconds")
                if latency.get("status") == "ok":
                    result.latency_ms = latency.get("latency_ms")
                    result.latency_std_ms = latency.get("std_ms")
                elif result.ok:
                    result.status, result.error = "failed", f"latency: {first_line(latency.get('error'))}"
            yield arch, result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
