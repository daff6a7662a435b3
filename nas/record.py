"""The one record of a child: what its evaluation measured and where the search placed it.

Every other shape derives from :class:`ChildResult`'s fields: the columns of the run store's ``children`` table
(``column`` metadata), the CSV/JSON fields of the Pareto export (``export`` metadata) and what loggers receive (the
record itself). A new metric is one field here; the store adds its column to existing runs when it opens them.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from mnas_common.serial import Serializable


class Status(str, enum.Enum):
    """A child's outcome. A ``str`` enum: stored, exported and compared as the plain strings ``ok``/``failed``."""

    OK = "ok"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class LatencySource(str, enum.Enum):
    """Where a child's latency came from: a real timing, or the calibrated per-device predictor."""

    MEASURED = "measured"
    PREDICTED = "predicted"

    def __str__(self) -> str:
        return self.value


def _col(sql: str, default: Any = None, *, export: bool = True, placement: bool = False):
    """A field stored as its own column of ``children`` (``sql`` is its SQLite type)."""
    return field(default=default, metadata={"column": sql, "export": export, "placement": placement})


def _json(factory=None, *, export: bool = False):
    """A field kept only inside the row's ``result`` JSON (nested details: training curves, raw samples)."""
    if factory is None:
        return field(default=None, metadata={"export": export})
    return field(default_factory=factory, metadata={"export": export})


@dataclass
class ChildResult(Serializable):
    """Everything the search knows about one child. Evaluators fill the measurements; the search loop fills the
    placement fields (``step`` ... ``committed_step``) when it stores the child."""

    # -- the evaluation
    arch: str = _col("TEXT NOT NULL")
    status: Status = _col("TEXT NOT NULL", Status.OK)
    error: str | None = _col("TEXT")
    top1: float | None = _col("REAL")
    top5: float | None = _col("REAL")
    latency_ms: float | None = _col("REAL")
    latency_std_ms: float | None = _col("REAL")
    latency_source: LatencySource | None = _col("TEXT")
    latency_predicted_ms: float | None = _col("REAL")  # the table predictor's estimate (latency.mode predict/hybrid)
    latency_prediction_error: float | None = _col("REAL")  # (predicted - measured) / measured, where both exist
    params: int | None = _col("INTEGER")
    macs: int | None = _col("INTEGER")
    train_seconds: float | None = _col("REAL")
    latency_seconds: float | None = _col("REAL")
    seed: int | None = _col("INTEGER")
    scores: dict = _json(dict, export=True)  # training-free scores of the child (name -> value)
    train: dict | None = _json()  # the trainer's full result
    latency: dict | None = _json()  # the latency service's full result (every timed sample)
    extra: dict = _json(dict)
    # -- where the search placed it
    step: int | None = _col("INTEGER NOT NULL", placement=True)
    idx: int | None = _col("INTEGER NOT NULL", placement=True)
    tokens: list[int] | None = _col("TEXT NOT NULL", export=False, placement=True)
    log_prob: float | None = _col("REAL", placement=True)
    reward: float | None = _col("REAL", placement=True)
    reused: bool = _col("INTEGER NOT NULL DEFAULT 0", False, placement=True)
    committed_step: int | None = _col("INTEGER", placement=True)

    def __post_init__(self) -> None:
        self.status = Status(self.status)
        if self.latency_source is not None:
            self.latency_source = LatencySource(self.latency_source)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def measured(self) -> bool:
        """Successful with a latency (a point of the accuracy-latency plane)."""
        return self.ok and self.top1 is not None and self.latency_ms is not None

    def damaged_fields(self) -> list[str]:
        """Evaluation fields whose value has the wrong type (a hand-edited or damaged stored row): a number that is
        text, details that are not an object. The placement fields come from their own columns."""
        kinds = {"REAL": (int, float), "INTEGER": (int,), "TEXT": (str,)}
        bad = []
        for f in dataclasses.fields(self):
            if f.metadata.get("placement"):
                continue
            value = getattr(self, f.name)
            column = f.metadata.get("column")
            if column is not None:
                kind = kinds[column.split()[0]]
                ok = (value is None and "NOT NULL" not in column) or (
                    isinstance(value, kind) and not isinstance(value, bool))
            else:  # the JSON-only fields: objects (``train`` and ``latency`` may be missing)
                ok = isinstance(value, dict) or (value is None and f.name in ("train", "latency"))
            if not ok:
                bad.append(f.name)
        return bad

    @property
    def transient(self) -> bool:
        """Failed for a reason that says nothing about the architecture (a worker or device that went away, out of
        memory beside other children, a timing that failed): never reused for another sample of it."""
        return not self.ok and bool(self.extra.get("transient"))

    def fail(self, reason: str, *, transient: bool = False) -> ChildResult:
        """Mark failed with a one-line reason (the first failure wins: it is the cause, the rest follows);
        ``transient``: see :attr:`transient`."""
        if self.ok:
            self.status, self.error = Status.FAILED, reason
            if transient:
                self.extra["transient"] = True
        return self

    def evaluation(self) -> ChildResult:
        """A copy without placement: what may be reused for another sample of the same architecture."""
        blank = {f.name: f.default for f in dataclasses.fields(self) if f.metadata.get("placement")}
        return dataclasses.replace(self, **blank)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["status"] = str(self.status)
        data["latency_source"] = None if self.latency_source is None else str(self.latency_source)
        return data


def columns() -> dict[str, str]:
    """The ``children`` columns that come from the record, in order, with their SQLite types."""
    return {f.name: f.metadata["column"] for f in dataclasses.fields(ChildResult) if "column" in f.metadata}


def export_fields() -> list[str]:
    """Fields of a child in the exported CSV/JSON tables (the run label comes first, added by the exporter)."""
    return [f.name for f in dataclasses.fields(ChildResult) if f.metadata.get("export")]
