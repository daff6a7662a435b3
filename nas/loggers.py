"""What the search tells the outside world, as loggers chosen by config (``logger=[progress,tensorboard,events]``).

A logger hears five things from the engine: ``on_start(search)``, ``on_submit(step, archs)`` (evaluations handed to
the evaluator), ``on_child(child, origin)`` (a child placed; ``origin`` is ``evaluated``, ``reused`` (an identical
architecture's result) or ``stored`` (evaluated before an interruption)), ``on_step(step, stats)`` (a step committed)
and ``on_end(summary)``; ``close()`` always runs, also after an interrupt. Loggers only
read: the engine's attributes and the :class:`~nas.record.ChildResult` records. ``check(run_dir)`` reports a
problem (an unwritable path) before the run writes anything.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mnas_common.checks import is_number, positive_int
from mnas_common.paths import nearest_existing

from nas.record import ChildResult, export_fields
from nas.store import LOCK_NAME, STORE_NAME


@contextmanager
def _naming(file) -> Iterator[None]:
    """A write to a logger's file whose OSError (a full disk) names the file: a file object's own errors do not, and
    nas.search reports them in one line."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), file.name) from None


def _close(file) -> None:
    """Close a logger's file; the data it still buffers is flushed, and a failure names the file."""
    with _naming(file):
        file.close()


def _writable(path: Path) -> str | None:
    """A reason ``path`` (a file to create or append to) cannot be written, or None."""
    parent = nearest_existing(path.parent)
    if path.is_dir():
        return f"{path} is a directory (name a file)"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path} ({parent} is not writable)"
    return None


# What the run itself writes in its directory (nas.store, Hydra's job log, nas.run's record and Pareto export): a
# logger's file there would be written into the store, or fail after the store was created
RUN_FILES = (STORE_NAME, f"{STORE_NAME}-wal", f"{STORE_NAME}-shm", LOCK_NAME, "search.log", ".hydra", "pareto")


def _relative_path(name: str, value) -> str:
    """``value`` as a logger's path under the run directory: a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a file name or path (relative to run_dir), got {value!r}")
    return value


def _run_file(name: str, run_dir: Path, path: str) -> str | None:
    """A reason ``run_dir / path`` is, or lies under, one of the run's own files (:data:`RUN_FILES`), or None."""
    target = (Path(run_dir) / path).resolve()
    for own_name in RUN_FILES:
        own = (Path(run_dir) / own_name).resolve()
        if target == own or own in target.parents:
            return f"{name}={path} is the run's own {own_name}: name another path"
    return None


class Logger:
    """Base class: every hook is optional."""

    def check(self, run_dir: Path) -> list[str]:
        return []

    def on_start(self, search) -> None: ...

    def on_submit(self, step: int | None, archs: list[str]) -> None: ...

    def on_child(self, child: ChildResult, origin: str) -> None: ...

    def on_step(self, step: int, stats: dict) -> None: ...

    def on_end(self, summary: dict) -> None: ...

    def close(self) -> None: ...


class ProgressBar(Logger):
    """tqdm bar: children done of the budget, best reward, front size, what the evaluator's workers are doing (seen
    every ``refresh_s`` seconds, also while no child finishes), ETA."""

    def __init__(self, *, enabled: bool = True, refresh_s: float = 2.0):
        if not isinstance(enabled, bool):
            raise ValueError(f"logger.progress.enabled must be true or false, got {enabled!r}")
        self.enabled = enabled
        if not is_number(refresh_s) or refresh_s < 0:
            raise ValueError("logger.progress.refresh_s must be a number of seconds >= 0 (0: no refresh between "
                             f"children), got {refresh_s!r}")
        self.refresh_s = float(refresh_s)
        self.bar = None
        self.search = None
        self._stop = threading.Event()

    def on_start(self, search) -> None:
        from tqdm.auto import tqdm

        self.search = search
        self.bar = tqdm(total=search.budget, initial=search.committed, desc="search", unit="child",
                        disable=not self.enabled, dynamic_ncols=True)
        self._postfix(refresh=True)
        if self.enabled and self.refresh_s > 0:
            threading.Thread(target=self._refresh, name="progress", daemon=True).start()

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self._postfix(refresh=True)
            except Exception:  # a status read while the evaluator changes: the next tick shows it
                continue

    def _postfix(self, refresh: bool) -> None:
        stats = self.search.stats
        postfix = {"best": f"{stats.best_reward:.4f}" if math.isfinite(stats.best_reward) else "-",
                   "front": len(self.search.front)}
        status = self.search.evaluator.status()
        if status:
            postfix["workers"] = status
        self.bar.set_postfix(postfix, refresh=refresh)

    def on_child(self, child: ChildResult, origin: str) -> None:
        self.bar.update(1)
        self._postfix(refresh=False)

    def on_step(self, step: int, stats: dict) -> None:
        self._postfix(refresh=True)

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorBoard(Logger):
    """Scalars per step, the accuracy-latency scatter with its front, and the run's hyper-parameters.

    A resumed run reopens the log with ``purge_step`` at its next step: events a killed run wrote past its last
    committed step are hidden.
    """

    def __init__(self, *, log_dir: str = "tb", scatter_every: int = 5):
        self.log_dir = _relative_path("logger.tensorboard.log_dir", log_dir)
        self.scatter_every = positive_int("logger.tensorboard.scatter_every", scatter_every)
        self.writer = None
        self.points: list[ChildResult] = []

    def check(self, run_dir: Path) -> list[str]:
        own = _run_file("logger.tensorboard.log_dir", run_dir, self.log_dir)
        return [own] if own else [p for p in [_writable(Path(run_dir) / self.log_dir / "events")] if p]

    def on_start(self, search) -> None:
        # tensorboard imports TensorFlow (seconds, C++ log lines) unless its "notf" switch exists (the module the
        # tensorboard-notf package adds); event files need only the protos. The latency workers keep their own TF.
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
        from torch.utils.tensorboard import SummaryWriter

        self.search = search
        self.writer = SummaryWriter(str(Path(search.run_dir) / self.log_dir), purge_step=search.next_step)
        self.points = [c for c in search.history if c.measured]
        self.last_step = None

    def on_child(self, child: ChildResult, origin: str) -> None:
        if child.measured:
            self.points.append(child)

    def on_step(self, step: int, stats: dict) -> None:
        for key, value in stats.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        if step % self.scatter_every == 0:
            self._scatter(step)
        self.last_step = step
        self.writer.flush()

    def _scatter(self, step: int) -> None:
        from nas.pareto import scatter_figure

        if self.points:
            reward = self.search.reward_fn
            figure = scatter_figure([c.to_dict() for c in self.points], title=f"step {step}",
                                    target_ms=reward.target if getattr(reward, "uses_latency", False) else None)
            self.writer.add_figure("pareto/accuracy_vs_latency", figure, step)

    def on_end(self, summary: dict) -> None:
        if self.last_step is not None and self.last_step % self.scatter_every:
            self._scatter(self.last_step)  # the final front, whatever the interval
        flat = {k: v for k, v in self.search.hparams.items() if isinstance(v, (int, float, str, bool))}
        metrics = {"best_reward": summary["best_reward"], "best_top1": self.search.stats.best_top1,
                   "front_size": summary["front_size"]}
        metrics = {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if flat:
            self.writer.add_hparams(flat, metrics, run_name=".")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EventLog(Logger):
    """One JSON line per event in ``<run_dir>/events.jsonl``, appended across resumes: when each evaluation was
    handed to the evaluator, each child placed, each step committed. An audit trail (what was evaluated, how often,
    when) that scripts can follow while the search runs. The run store is the record: a line is written just after
    what it reports is stored, so a kill -9 in between loses that one line (a child's ``evaluated`` line; the resumed
    search then places it from the store, ``stored``), never a result. A committed step whose line was lost (an
    interrupt while a logger before this one handled the step) gets it when the run resumes, ``recovered: true``."""

    def __init__(self, *, path: str = "events.jsonl"):
        self.path = _relative_path("logger.events.path", path)
        self.file = None

    def check(self, run_dir: Path) -> list[str]:
        own = _run_file("logger.events.path", run_dir, self.path)
        return [own] if own else [p for p in [_writable(Path(run_dir) / self.path)] if p]

    def _write(self, event: str, **fields) -> None:
        with _naming(self.file):
            self.file.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")
            self.file.flush()

    def on_start(self, search) -> None:
        path = Path(search.run_dir) / self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        logged = _logged_steps(path)
        self.file = open(path, "a")
        self._write("start", pid=os.getpid(), committed=search.committed, next_step=search.next_step)
        for row in search.store.steps():  # committed, but their line was lost
            if row["step"] not in logged:
                stats = {k: v for k, v in row.items() if k not in ("step", "created_at")}
                self._write("step", step=row["step"], stats=stats, recovered=True)

    def on_submit(self, step: int | None, archs: list[str]) -> None:
        for arch in archs:
            self._write("submit", step=step, arch=arch)

    def on_child(self, child: ChildResult, origin: str) -> None:
        latency = {k: getattr(child, k) for k in ("latency_predicted_ms", "latency_prediction_error")
                   if getattr(child, k) is not None}  # latency.mode predict/hybrid: the predictor, live
        if child.latency_source is not None:
            latency["latency_source"] = str(child.latency_source)
        self._write("child", step=child.step, idx=child.idx, arch=child.arch, origin=origin,
                    status=str(child.status), reward=child.reward, **latency)

    def on_step(self, step: int, stats: dict) -> None:
        self._write("step", step=step, stats=stats)

    def on_end(self, summary: dict) -> None:
        self._write("end", summary=summary)

    def close(self) -> None:
        if self.file is not None:
            file, self.file = self.file, None
            _close(file)


def _logged_steps(path: Path) -> set[int]:
    """The steps an event log has a ``step`` line for (a line cut short by a kill is skipped). Only a regular file is
    read: an event log sent to a device (``/dev/stdout`` to follow it, ``/dev/null``) has no earlier lines, and
    reading one blocked on the terminal, or never ended (``/dev/zero``: the search grew until the OOM killer)."""
    steps = set()
    if path.is_file():
        with open(path) as f:
            for line in f:
                if '"event": "step"' in line:
                    try:
                        steps.add(json.loads(line)["step"])
                    except (ValueError, KeyError, TypeError):
                        pass
    return steps


class CsvLog(Logger):
    """``<run_dir>/children.csv``: every committed child, one row each (columns: the record's export fields),
    rewritten from the store when a run starts and appended as steps commit."""

    def __init__(self, *, path: str = "children.csv"):
        self.path = _relative_path("logger.csv.path", path)
        self.file = None
        self.writer = None
        self.step_children: list[ChildResult] = []

    def check(self, run_dir: Path) -> list[str]:
        own = _run_file("logger.csv.path", run_dir, self.path)
        return [own] if own else [p for p in [_writable(Path(run_dir) / self.path)] if p]

    def on_start(self, search) -> None:
        path = Path(search.run_dir) / self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=export_fields(), extrasaction="ignore")
        self.writer.writeheader()
        self._rows(search.history)

    def _rows(self, children) -> None:
        with _naming(self.file):
            self.writer.writerows({**c.to_dict(), "scores": json.dumps(c.scores)} for c in children)
            self.file.flush()

    def on_child(self, child: ChildResult, origin: str) -> None:
        self.step_children.append(child)

    def on_step(self, step: int, stats: dict) -> None:
        self._rows([c for c in self.step_children if c.step == step])
        self.step_children = [c for c in self.step_children if c.step != step]

    def close(self) -> None:
        if self.file is not None:
            file, self.file = self.file, None
            _close(file)
