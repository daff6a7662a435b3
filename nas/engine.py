"""The search engine: propose -> take stored or reused results -> evaluate -> commit.

The loop knows nothing of where children run (the :class:`~nas.evaluator.Evaluator` decides), nothing of progress
bars or TensorBoard (loggers hear about every child and step) and nothing of Hydra (``nas.run`` builds the parts
from the config). It reads the run store once, when it resumes; the Pareto front and the running statistics are
then kept in memory, child by child.

Two schedules:

- **batches** (every controller; on-policy PPO and REINFORCE need them): a step samples ``batch_size`` children,
  evaluates them (the evaluator may run them all at once), then updates the controller and commits the step;
- **steady state** (controllers whose ``asynchronous`` flag is set: random search, aging evolution, which Real et
  al. 2019 run asynchronously by design): the evaluator is kept full, each child updates the controller and is
  committed as one step of one child the moment it returns, with no batch barrier.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.front import ParetoFront, RunningStats
from nas.record import ChildResult
from search_spaces.arch import canonical

log = logging.getLogger("nas.engine")


@dataclass
class Batch:
    """The children of one controller step, in sampling order."""

    step: int
    tokens: list[list[int]]
    archs: list[str]
    log_probs: list[float]
    entropies: list[float]
    children: list[ChildResult | None] = field(default_factory=list)
    evaluated: int = 0
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.children = [None] * len(self.archs)


class SearchView:
    """What an evaluator may read of the live search, read-only and from memory: whether a point would enter the
    current accuracy-latency front, the reward a result would get, and how many evaluated children beat a reward.
    Hybrid latency (:class:`nas.evaluator.LatencyModes`) decides with it which children to measure for real."""

    def __init__(self, search: Search):
        self._search = search

    def enters_front(self, accuracy: float, latency_ms: float) -> bool:
        return not self._search.front.dominated(accuracy, latency_ms)

    def reward(self, *, accuracy: float, latency_ms: float | None, macs: int | None = None) -> float:
        return float(self._search.reward_fn(accuracy=accuracy, latency_ms=latency_ms, macs=macs))

    def rank(self, reward: float) -> int:
        return self._search.stats.rank(reward)


def _network(arch: str) -> str:
    """What reuse looks an evaluation up by: the network's one spelling. The space decodes to it, but a store written
    before an inert skip was spelt as the default holds other spellings of the same networks (evaluated again once
    per resume otherwise); a string that does not parse is its own key."""
    try:
        return canonical(arch)
    except ValueError:
        return arch


class Search:
    """One search over one run store. ``run()`` resumes from whatever the store already holds.

    Loggers read these attributes: ``budget``, ``committed`` (children committed), ``next_step``, ``front``
    (:class:`~nas.front.ParetoFront` of every child with a latency), ``stats`` (:class:`~nas.front.RunningStats`),
    ``history`` (children committed before this process started), ``reward_fn``, ``evaluator``, ``run_dir``,
    ``hparams``.
    """

    def __init__(self, *, space, controller, reward, evaluator, store, budget: int, batch_size: int,
                 loggers=(), reuse_evaluations: bool = True, steady_state: bool = False,
                 references: dict[str, str] | None = None, run_dir: str | Path | None = None,
                 hparams: dict | None = None):
        if steady_state and not getattr(controller, "asynchronous", False):
            raise ValueError(f"controller {controller.name!r} learns from whole batches (on-policy); steady_state "
                             "needs an asynchronous one (random, evolution)")
        self.space, self.controller, self.reward_fn = space, controller, reward
        self.evaluator, self.store, self.loggers = evaluator, store, list(loggers)
        self.budget, self.batch_size = budget, batch_size
        self.reuse, self.steady_state = reuse_evaluations, steady_state
        self.references = dict(references or {})
        self.run_dir = Path(run_dir) if run_dir else store.path.parent
        self.hparams = dict(hparams or {})  # a flat description of the run, for loggers (TensorBoard's HParams)
        self.front, self.stats = ParetoFront(), RunningStats()
        self.history: list[ChildResult] = []
        self.evaluated: dict[str, ChildResult] = {}  # arch -> its first evaluation, for reuse
        self.committed = self.next_step = 0
        self._resumed = False
        self._pending: dict[int, dict[int, ChildResult]] = {}  # step -> idx -> child stored, not committed

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        self.resume()
        self.evaluator.bind(SearchView(self))
        self._emit("on_start", self)
        self._run_steady() if self.steady_state else self._run_batches()
        self._measure_references()
        summary = self.summary()
        self._emit("on_end", summary)
        return summary

    def _run_batches(self) -> None:
        while self.committed < self.budget:
            batch = self._propose(self._step_size())
            todo = self._take_stored(batch)
            self._emit("on_submit", batch.step, list(todo))
            for result in self.evaluator.evaluate(list(todo)):
                self._place(batch, todo[result.arch], result)
            self._commit(batch)

    def _run_steady(self) -> None:
        """Keep the evaluator full; commit each child, as its own step, the moment it returns."""
        in_flight: dict[str, list[Batch]] = {}
        while self.committed < self.budget:
            while (len(in_flight) < self.evaluator.capacity
                   and self.committed + sum(map(len, in_flight.values())) < self.budget):
                batch = self._propose(1)
                if self._take_stored(batch, store=False):
                    arch = batch.archs[0]
                    if arch not in in_flight:
                        self._emit("on_submit", None, [arch])
                        self.evaluator.submit(arch)
                    in_flight.setdefault(arch, []).append(batch)
                else:
                    self._commit(batch)
            if not in_flight:  # the budget was reached by reused children alone
                continue
            result = self.evaluator.next_result()
            for j, batch in enumerate(in_flight.pop(result.arch)):
                batch.step = self.next_step  # steps are numbered in the order children return
                self._place(batch, [0], result, reused=j > 0, store=False)
                self._commit(batch)

    # ------------------------------------------------------------------ the parts of a step
    def resume(self) -> None:
        """Read the store once: committed children, the controller state (checked before anything is written)."""
        if self._resumed:
            return
        self._resumed = True
        # the pending children too, though only the committed ones are history: a damaged one is found here, before
        # the search writes anything, not when its step is resampled (the store was written by then)
        children = self.store.children()
        self.history = [c for c in children if c.committed_step is not None]
        for child in children:  # kept for the step they belong to, which is sampled again next: not read twice
            if child.committed_step is None:
                self._pending.setdefault(child.step, {})[child.idx] = child
        for child in self.history:
            self._account(child)
        last = self.store.last_step()
        if last >= 0:
            self.controller.load_state_dict(self.store.controller_state(last))
        self.committed, self.next_step = len(self.history), last + 1

    def _step_size(self) -> int:
        """Children of the next step: ``batch_size``, the last step fewer where it does not divide the budget. A step
        interrupted after some of its children were stored is sampled again at the size it had, though the budget
        has changed since (a controller's first samples depend on how many it draws): its stored children are
        taken, not trained again. A short step's size is stored before its first child (a full one needs no record:
        it is resampled full, or, the budget having shrunk below it, smaller either way)."""
        left = self.budget - self.committed
        started = self.store.get_meta("step_in_progress")
        if isinstance(started, dict) and started.get("step") == self.next_step and \
                isinstance(started.get("size"), int) and 0 < started["size"] <= left:
            return started["size"]
        size = min(self.batch_size, left)
        if size < self.batch_size:  # a full step is resampled full whatever the budget: only a short one is stored
            self.store.set_meta("step_in_progress", {"step": self.next_step, "size": size})
        return size

    def _propose(self, n: int) -> Batch:
        sample = self.controller.sample(n)
        tokens = [list(map(int, t)) for t in sample.tokens]
        return Batch(step=self.next_step, tokens=tokens, archs=[self.space.decode(t) for t in tokens],
                     log_probs=[float(x) for x in sample.log_probs], entropies=[float(x) for x in sample.entropies])

    def _take_stored(self, batch: Batch, *, store: bool = True) -> dict[str, list[int]]:
        """Place what needs no evaluation: children stored before an interruption (the same batch is sampled again
        on resume) and architectures already evaluated in this run. Returns the rest: arch -> its indices."""
        # what resume() read: rows not committed are the interrupted step's (this process commits every step it
        # stores children of before it samples the next)
        pending = self._pending.pop(batch.step, {}) if store else {}
        todo: dict[str, list[int]] = {}
        siblings: dict[str, ChildResult] = {}  # arch -> its evaluation stored in this step before an interruption
        for idx, arch in enumerate(batch.archs):
            stored = pending.get(idx)
            if stored is not None and stored.tokens == batch.tokens[idx]:
                self._place(batch, [idx], stored, reused=stored.reused, store=False, evaluation=False)
                if not stored.reused:
                    siblings.setdefault(arch, stored)
            elif self.reuse and arch in self.evaluated:
                self._place(batch, [idx], self.evaluated[arch], reused=True, store=store)
            else:
                if stored is not None:
                    log.warning("step %d child %d in the store differs from the resampled one; re-evaluating",
                                batch.step, idx)
                todo.setdefault(arch, []).append(idx)
        # Within a step an architecture is evaluated once and its other indices are copies, reuse_evaluations or
        # not; each copy is its own row, so an interruption can fall between them. A copy not stored yet is made
        # from the stored evaluation, as it would have been: not evaluated a second time.
        for arch in [a for a in todo if a in siblings]:
            self._place(batch, todo.pop(arch), siblings[arch], reused=True, store=store)
        return todo

    def _place(self, batch: Batch, idxs: list[int], result: ChildResult, *, reused: bool = False,
               store: bool = True, evaluation: bool = True) -> None:
        """Give a result its place(s) in the batch, its reward, and (batch mode) its row in the store."""
        for j, idx in enumerate(idxs):
            child = result
            if evaluation:
                # arch: the sample's spelling, where the result reused is a store's older one of the same network
                child = dataclasses.replace(result.evaluation(), arch=batch.archs[idx], step=batch.step, idx=idx,
                                            tokens=batch.tokens[idx], log_prob=batch.log_probs[idx],
                                            reused=reused or j > 0)
            batch.evaluated += not child.reused  # a stored child counts as it did when evaluated before a resume
            child.reward = self._reward(child)
            if store:
                self.store.add_child(child)
            batch.children[idx] = child
            self._account(child)
            self._emit("on_child", child, "evaluated" if evaluation and not child.reused else
                       "reused" if evaluation else "stored")

    def _commit(self, batch: Batch) -> None:
        """Update the controller with the batch's rewards and commit the step, its children and the new state."""
        children = batch.children
        rewards = [c.reward for c in children]
        update = self.controller.update(batch.tokens, rewards) or {}
        stats = self._step_stats(batch, update)
        self.store.commit_step(batch.step, {c.idx: c.reward for c in children}, stats, self.controller.state_dict(),
                               children=children if self.steady_state else ())
        for child in children:
            child.committed_step = batch.step
        self.committed += len(children)
        self.next_step = batch.step + 1
        self._emit("on_step", batch.step, stats)

    # ------------------------------------------------------------------ bookkeeping
    def _reward(self, child: ChildResult) -> float:
        """A failed child, or one missing the measurement its reward needs, gets the configured invalid reward."""
        fn = self.reward_fn
        missing = (getattr(fn, "uses_latency", False) and child.latency_ms is None) or (
            getattr(fn, "uses_macs", False) and child.macs is None)
        if not child.ok or child.top1 is None or missing:
            return float(fn(accuracy=None))
        return float(fn(accuracy=child.top1, latency_ms=child.latency_ms, macs=child.macs))

    def _account(self, child: ChildResult) -> None:
        self.stats.add(child)
        if not child.reused and not child.transient:  # a transient failure is evaluated again when resampled
            self.evaluated.setdefault(_network(child.arch), child)
        if child.measured:
            self.front.add(child.top1, child.latency_ms, child)

    def _step_stats(self, batch: Batch, update: dict[str, Any]) -> dict[str, float]:
        children, rewards = batch.children, [c.reward for c in batch.children]
        ok = [c for c in children if c.ok and c.top1 is not None]
        stats = {f"controller/{k}": float(v) for k, v in update.items() if isinstance(v, (int, float))}
        stats.update({
            "reward/mean": sum(rewards) / len(rewards),
            "reward/max": max(rewards),
            "reward/best": self.stats.best_reward,
            "children/failed": float(len(children) - len(ok)),
            "children/evaluated": float(batch.evaluated),
            "controller/entropy": sum(batch.entropies) / len(children),
            "controller/log_prob": sum(batch.log_probs) / len(children),
            "pareto/front_size": float(len(self.front)),
            "time/step_seconds": time.perf_counter() - batch.started,
        })
        if ok:
            stats["accuracy/mean"] = sum(c.top1 for c in ok) / len(ok)
            stats["accuracy/max"] = max(c.top1 for c in ok)
            lat = [c.latency_ms for c in ok if c.latency_ms is not None]
            if lat:
                stats["latency_ms/mean"] = sum(lat) / len(lat)
                stats["latency_ms/min"] = min(lat)
        fresh = [c for c in children if not c.reused and c.latency_source is not None]
        if any(c.latency_predicted_ms is not None for c in fresh):  # latency.mode predict or hybrid
            stats["latency/measured_share"] = sum(str(c.latency_source) == "measured" for c in fresh) / len(fresh)
            errors = [c.latency_prediction_error for c in fresh if c.latency_prediction_error is not None]
            if errors:  # the predictor's live error on the children measured for real (hybrid)
                stats["latency/prediction_error_mean"] = sum(errors) / len(errors)
                stats["latency/prediction_abs_error_max"] = max(abs(e) for e in errors)
        return stats

    def _measure_references(self) -> None:
        """Evaluate the reference architectures the same way as the children, once per run, for the plots."""
        done = self.store.references()
        todo = {arch: name for name, arch in self.references.items() if name not in done}
        if todo:
            self._emit("on_submit", None, list(todo))
            for result in self.evaluator.evaluate(list(todo)):
                self.store.add_reference(todo[result.arch], result.arch, result.to_dict())

    def _emit(self, hook: str, *args) -> None:
        for logger in self.loggers:
            getattr(logger, hook)(*args)

    def summary(self) -> dict:
        best = self.stats.best
        return {
            "run_dir": str(self.run_dir),
            "steps": self.next_step,
            "children": self.committed,
            "failed": self.stats.failed,
            "unique_architectures": len(self.stats.archs),
            "best_reward": None if best is None else best.reward,
            "best_arch": None if best is None else best.arch,
            "best_top1": None if best is None else best.top1,
            "best_latency_ms": None if best is None else best.latency_ms,
            "front_size": len(self.front),
        }
