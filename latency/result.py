"""The serialisable result of one latency measurement."""

from __future__ import annotations

from dataclasses import dataclass, field

from mnas_common.serial import Serializable


def transient(flag: bool = True) -> dict:
    """``extra`` of a failed result that says nothing about the architecture (a crash, a device that dropped, a timing
    session that failed; not a model the interpreter or the phone cannot run): a search evaluates the architecture
    again when it is sampled again. ``flag`` false: no mark."""
    return {"transient": True} if flag else {}


@dataclass
class LatencyResult(Serializable):
    """One architecture timed on one device. Times in milliseconds; ``latency_ms`` is the median.

    ``status`` is ``ok`` or ``failed`` (with a one-line ``error``): a conversion whose output differs from PyTorch's
    beyond the tolerance, a device that dropped for good, a runtime error. Failures are values, never exceptions.
    """

    arch: str
    status: str = "ok"
    error: str | None = None
    latency_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    p95_ms: float | None = None
    runs: int = 0
    samples_ms: list[float] = field(default_factory=list)
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    tflite_path: str | None = None
    onnx_path: str | None = None
    cached: bool = False
    device: str | None = None
    runner: str | None = None
    convert_seconds: float | None = None
    resolution: int | None = None
    channels: int | None = None
    num_classes: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"
