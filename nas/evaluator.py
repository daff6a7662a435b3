"""Where children are evaluated, behind one small interface: architecture strings in, :class:`ChildResult` out.

The search loop only ever calls ``submit(arch)`` and ``next_result()`` (or ``evaluate(archs)``, both at once);
nothing that crosses the interface is a live object, so an evaluator may train on this machine
(:class:`LocalEvaluator`), on a Ray cluster, or nowhere at all (:class:`nas.synthetic.SyntheticEvaluator`). Which
one runs is a config choice (``evaluator=local``); the loop does not change.

Life cycle: ``check()`` reports problems without starting or writing anything (so a bad config leaves no trace),
``start(run_dir)`` does the heavy set-up once the run is validated and locked, ``close()`` releases everything it
owns (worker processes, the latency service).
"""

from __future__ import annotations

import logging
import time
import zlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from mnas_common.checks import positive_int, positive_number
from mnas_common.errors import first_line

from nas.components import build
from nas.record import ChildResult, LatencySource, Status

log = logging.getLogger("nas.evaluator")

GiB = 2**30


class EvaluatorStopped(RuntimeError):
    """The evaluator cannot go on (every timing device dropped, say): the search stops with this one-line reason,
    everything committed so far stays, and the same command resumes once the cause is fixed."""


def child_seed(seed: int, arch: str) -> int:
    """A training seed that depends only on the run seed and the architecture (not on evaluation order)."""
    return (seed * 1_000_003 + zlib.crc32(arch.encode())) % 2**31


class Evaluator(ABC):
    """Evaluates children; see the module docstring for the life cycle."""

    #: children worked on at once; a steady-state search keeps this many in flight
    capacity: int = 1
    #: closed-form children, not trained ones: part of a run's identity, never mixed with trained children
    synthetic: bool = False

    @classmethod
    def training_threads(cls, settings: dict, threads: int | None) -> int | None:
        """The torch threads the children train with, from the evaluator's config ``settings`` and the search's
        ``threads``: part of a run's identity (they decide how a child's floats round), named alike for every
        evaluator so that a run may move between them where they train alike. Here: the search's own threads."""
        return threads

    def check(self) -> list[str]:
        """Problems that would make every child fail (a missing dataset, device or GPU), found without side effects."""
        return []

    def start(self, run_dir: Path) -> None:
        """Heavy set-up (prepare the dataset, start workers) before the first ``submit``."""

    @abstractmethod
    def submit(self, arch: str) -> None:
        """Start evaluating ``arch`` (a canonical architecture string)."""

    @abstractmethod
    def next_result(self) -> ChildResult:
        """Block until a submitted child is finished and return it (in any order)."""

    @abstractmethod
    def pending(self) -> int:
        """Submitted children not yet returned by ``next_result``."""

    def evaluate(self, archs: Sequence[str]) -> Iterator[ChildResult]:
        """Evaluate distinct architectures; yield each result as soon as it is complete."""
        for arch in archs:
            self.submit(arch)
        for _ in archs:
            yield self.next_result()

    def status(self) -> str:
        """A short line of what the evaluator is doing now (shown by the progress bar)."""
        return ""

    def bind(self, view) -> None:
        """Called by the engine before the first ``submit`` with a read-only view of the live search
        (:class:`nas.engine.SearchView`: the current front and rewards); hybrid latency decides with it."""
        modes = getattr(self, "modes", None)
        if modes is not None:
            modes.bind(view)

    def close(self) -> None:
        """Release workers and services; called once, also after an interrupt."""


def check_latency(config: dict | None, service=None) -> tuple[Any, list[str]]:
    """Build the latency service of ``config`` (unless given) and check its device: ``(service, problems)``.
    No phone, no benchmark binary or a bad latency field is found here, not after a batch of failed children."""
    if config is None:
        return None, []
    try:
        service = service or build("latency", config)
        service.check()
        return service, []
    except Exception as exc:
        if service is not None:
            service.close()
        return None, [latency_problem(exc)]


def latency_problem(exc: BaseException) -> str:
    """One line for a latency config's problem, naming the section."""
    message = first_line(exc)
    return message if message.startswith("latency") else f"latency: {message}"


def size_guard(arch: str, *, deploy: dict, data_shape: tuple[int, int, int] | None, batch_size: int,
               optimizer_slots: int, limit_gb: float, converts: bool = True) -> tuple[Any, str | None]:
    """Profile ``arch`` at the deployment input (exact params/MACs, on the meta device) and refuse it when its
    estimated memory for conversion (``converts``: a run that may convert it, not one without latency or with
    ``latency.mode=predict``), or for training at ``data_shape`` = (resolution, channels, classes), exceeds
    ``limit_gb``. Returns ``(profile, reason)``; ``reason`` is None for an architecture that fits."""
    from search_spaces import profile_arch

    profile = profile_arch(arch, resolution=deploy["resolution"], in_channels=deploy["channels"],
                           num_classes=deploy["num_classes"])
    limit = limit_gb * GiB
    if converts and profile.inference_bytes() > limit:
        return profile, (f"too large: an estimated {profile.inference_bytes() / GiB:.1f} GB to convert at "
                         f"{deploy['resolution']} px exceeds the limit of {limit_gb:g} GB (max_child_memory_gb)")
    if data_shape is not None:
        resolution, channels, classes = data_shape
        train = profile_arch(arch, resolution=resolution, in_channels=channels, num_classes=classes)
        need = train.training_bytes(batch_size, optimizer_slots)
        if need > limit:
            return profile, (f"too large: an estimated {need / GiB:.1f} GB to train at batch {batch_size} exceeds "
                             f"the limit of {limit_gb:g} GB (max_child_memory_gb)")
    return profile, None


def _transient(latency: dict) -> bool:
    """Whether a latency result dict failed for the moment's reasons (see ``latency.result.transient``)."""
    return bool((latency.get("extra") or {}).get("transient"))


def apply_latency(child: ChildResult, latency: dict) -> ChildResult:
    """Fold a latency service result (a ``LatencyResult`` dict) into ``child``."""
    child.latency = latency
    child.latency_seconds = latency.get("wall_seconds")
    if latency.get("status") == "ok":
        child.latency_ms = latency.get("latency_ms")
        child.latency_std_ms = latency.get("std_ms")
        source = (latency.get("extra") or {}).get("source", LatencySource.MEASURED)
        child.latency_source = LatencySource(source)
    else:
        child.fail(f"latency: {first_line(latency.get('error'))}", transient=_transient(latency))
    return child


def apply_training(child: ChildResult, train: dict) -> ChildResult:
    """Fold a trainer result (a ``TrainResult`` dict) into ``child``."""
    child.train = train
    child.train_seconds = train.get("train_seconds")
    if train.get("status") == "ok":
        child.top1, child.top5 = train.get("top1"), train.get("top5")
    else:
        child.fail(f"train: {first_line(train.get('error'))}", transient=bool(train.get("transient")))
    return child


def check_scores(scores: Sequence[str] | None, batch_size: int) -> tuple[tuple[str, ...], int]:
    """``evaluator.scores`` (each training-free score of ``nas.zero_cost`` named once) and
    ``evaluator.score_batch_size``, checked the same way for any evaluator."""
    from nas.zero_cost import SCORES

    if isinstance(scores, str):  # split into its letters, it was refused naming those
        raise ValueError(f"evaluator.scores must be a list of training-free scores, got {scores!r} (one score: "
                         f"evaluator.scores=[{scores}])")
    scores = tuple(scores or ())
    unknown = [name for name in scores if name not in SCORES]
    if unknown or len(set(scores)) != len(scores):
        raise ValueError(f"evaluator.scores must name each training-free score once, from {', '.join(SCORES)}; "
                         f"got {list(scores)}")
    return scores, positive_int("evaluator.score_batch_size", batch_size)


def score_child(arch: str, data, scores: Sequence[str], *, seed: int, batch_size: int) -> dict:
    """Training-free scores from one minibatch, with the child's own seed (its initial weights and the batch):
    ``{"scores": {name: value or None}, "seconds": ..., "error": ... or None}``, plain values for any process."""
    from nas.zero_cost import compute_scores

    out = compute_scores(arch, data, tuple(scores), seed=seed, batch_size=batch_size)
    return {"scores": {name: out[name] for name in scores}, "seconds": out["seconds"], "error": out["error"]}


def apply_scores(child: ChildResult, scored: dict) -> ChildResult:
    """Fold :func:`score_child`'s result into ``child`` (``scores``; ``extra`` seconds and error)."""
    child.scores = dict(scored["scores"])
    child.extra["scores_seconds"] = scored["seconds"]
    if scored.get("error"):
        child.extra["scores_error"] = scored["error"]
    return child


LATENCY_MODES = ("measure", "predict", "hybrid")
MODE_KEYS = ("mode", "hybrid_top_k", "table_space", "table")


class LatencyModes:
    """Where each child's latency comes from (``latency.mode``), decided on the driver, in one place for every
    evaluator.

    - ``measure`` (default): every child is converted and timed (the evaluator may start at submit, beside training);
    - ``predict``: no child is converted; its latency is the per-device table predictor's (loaded once, at
      :meth:`load`; a missing table is one problem line naming the build command);
    - ``hybrid``: every child is predicted; after training, a child is measured for real when, with its predicted
      latency, it would enter the current accuracy-latency front or the ``hybrid_top_k`` best rewards so far (or
      when it cannot be predicted); its record then holds the measured latency, the prediction and the relative error.

    An evaluator calls, per child: :meth:`predict` at submit (a dict or None), :meth:`measure_at_submit` to know
    whether to start measuring at once, then after training :meth:`wants_measurement` (hybrid: reads the engine's
    :class:`~nas.engine.SearchView` given to :meth:`bind`), and :meth:`finish` to fold prediction and measurement
    into the child. Decisions depend only on the children placed before, so a resumed run decides as the original.
    """

    def __init__(self, mode: str = "measure", hybrid_top_k: int = 5, table_space: str = "mnasnet",
                 table: str | None = None):
        if mode not in LATENCY_MODES:
            raise ValueError(f"latency.mode must be one of {', '.join(LATENCY_MODES)}, got {mode!r}")
        self.mode = mode
        self.top_k = positive_int("latency.hybrid_top_k", hybrid_top_k)
        if not isinstance(table_space, str) or not table_space:
            raise ValueError(f"latency.table_space must name a search space, got {table_space!r}")
        self.table_space, self.table = table_space, table
        self.predictor = None
        self.view = None
        self.counts = {"measured": 0, "predicted": 0}

    @classmethod
    def split(cls, config: dict | None) -> tuple[LatencyModes, dict | None]:
        """``(modes, service_config)``: the mode keys of a latency config, and the rest (what builds the service)."""
        if config is None:
            return cls(), None
        config = dict(config)
        modes = cls(**{k: config.pop(k) for k in MODE_KEYS if k in config})
        return modes, config

    @property
    def uses_predictor(self) -> bool:
        return self.mode != "measure"

    @property
    def measures(self) -> bool:
        """Whether any child may be converted and timed (every mode but ``predict``)."""
        return self.mode != "predict"

    @property
    def measure_at_submit(self) -> bool:
        """Measure every child, starting when it is submitted (overlapping its training)."""
        return self.mode == "measure"

    def load(self, service, deploy: dict) -> list[str]:
        """Load the predictor of ``service``'s device for the deployment input (predict/hybrid), once. Returns the
        problems (one line naming the build command when there is no table); nothing is written anywhere."""
        if not self.uses_predictor or self.predictor is not None:
            return []
        from latency.predictor import LatencyTableMissing, Predictor

        try:
            self.predictor = Predictor.from_service(
                service, resolution=deploy["resolution"], channels=deploy["channels"],
                num_classes=deploy["num_classes"], space=self.table_space, table=self.table)
        except LatencyTableMissing as exc:
            return [f"latency.mode={self.mode}: {first_line(exc)}"]
        return []

    def bind(self, view) -> None:
        self.view = view

    def predict(self, arch: str) -> dict | None:
        """The predicted latency result of ``arch`` (a ``LatencyResult`` dict), or None in measure mode."""
        if not self.uses_predictor:
            return None
        if self.predictor is None:
            raise RuntimeError(f"latency.mode={self.mode}: the predictor was not loaded (call load() first)")
        started = time.perf_counter()
        return {**self.predictor.predict(arch).to_dict(), "wall_seconds": time.perf_counter() - started}

    def wants_measurement(self, child: ChildResult, predicted: dict | None) -> str | None:
        """Why ``child`` (trained) must be measured for real: ``measure``, ``front``, ``top_k``, ``unpredictable``;
        None when its prediction stands."""
        if self.mode == "measure":
            return "measure"
        if self.mode == "predict" or not child.ok:
            return None
        if predicted is None or predicted.get("status") != "ok":
            return "unpredictable"
        if child.top1 is None:
            return None
        latency = predicted["latency_ms"]
        if self.view is None or self.view.enters_front(child.top1, latency):
            return "front"
        reward = self.view.reward(accuracy=child.top1, latency_ms=latency, macs=child.macs)
        return "top_k" if self.view.rank(reward) < self.top_k else None

    def finish(self, child: ChildResult, predicted: dict | None, measured: dict | None,
               reason: str | None = None) -> ChildResult:
        """Fold the prediction and (if taken) the measurement into ``child``: the measurement wins; the prediction
        is kept beside it (``latency_predicted_ms``) with the relative error of the predictor on this child."""
        if predicted is not None and predicted.get("status") == "ok":
            child.latency_predicted_ms = predicted["latency_ms"]
            child.extra["latency_prediction"] = {k: predicted.get(k) for k in ("latency_ms", "extra")}
        if reason is not None and self.mode == "hybrid":
            child.extra["latency_measured_because"] = reason
        if (measured is not None and measured.get("status") != "ok" and predicted is not None
                and predicted.get("status") == "ok" and _transient(measured)):
            # hybrid: the measurement failed for the device's reasons, not the model's: the prediction stands
            child.extra["latency_measurement_failed"] = first_line(measured.get("error"))
            measured = None
        if measured is not None:
            apply_latency(child, measured)
            self.counts["measured"] += 1
            if child.latency_predicted_ms is not None and child.ok and child.latency_ms:
                child.latency_prediction_error = (child.latency_predicted_ms - child.latency_ms) / child.latency_ms
        elif predicted is not None:
            apply_latency(child, predicted)
            self.counts["predicted"] += 1
        return child

    def status(self) -> str:
        if not self.uses_predictor:
            return ""
        return f"latency {self.counts['measured']} measured / {self.counts['predicted']} predicted"


class LocalEvaluator(Evaluator):
    """Proxy-train children one after another in this process while the latency service converts and times them
    in its own worker processes, so training and conversion overlap; a host timing pauses both (quiet timing).

    Built from ``configs/evaluator/local.yaml``; the search passes the run's trainer and dataset configs, the
    latency config (``None`` when latency is not measured), the deployment input and the seed. ``latency.mode``
    (:class:`LatencyModes`): ``measure`` starts each child's measurement at submit; ``predict`` converts nothing;
    ``hybrid`` predicts at submit and measures after training the children that would enter the front or top-k.

    ``scores`` names training-free scores (``nas.zero_cost``: synflow, naswot) computed for each child from one
    minibatch of ``score_batch_size`` training images before it trains; they are stored in ``ChildResult.scores``
    (a score that cannot be computed is ``None``, the reason in ``extra["scores_error"]``). They cost well under a
    second per child (``scripts/bench_proxy.py`` measures them and how they rank against the proxy).
    """

    def __init__(self, *, trainer: Any, dataset: Any, latency: dict | None, deploy: dict, seed: int = 0,
                 threads: int | None = None, max_child_memory_gb: float = 8.0, scores: Sequence[str] = (),
                 score_batch_size: int = 64):
        self.scores, self.score_batch_size = check_scores(scores, score_batch_size)
        self.trainer = trainer
        self.dataset = dataset
        self.modes, self.latency_config = LatencyModes.split(latency)
        self.deploy = dict(deploy)
        self.seed = seed
        self.threads = positive_int("threads", threads, allow_none=True)
        self.max_child_memory_gb = positive_number("evaluator.max_child_memory_gb", max_child_memory_gb)
        self.data = None
        self._source_checked = False
        self.service = None
        self._queue: deque[tuple[ChildResult, Future | None, dict | None]] = deque()

    # ------------------------------------------------------------------ life cycle
    def check(self) -> list[str]:
        from nas.data import check_dataset
        from nas.trainer import check_device

        dataset_problem = check_dataset(self.dataset)
        self._source_checked = dataset_problem is None  # start() need not fingerprint the source again
        problems = [p for p in (dataset_problem, check_device(self.trainer.device)) if p]
        self.service, latency_problems = check_latency(self.latency_config, self.service)
        if self.service is not None and not latency_problems:
            latency_problems = self.modes.load(self.service, self.deploy)
        return problems + latency_problems

    def start(self, run_dir: Path) -> None:
        import torch

        from nas.data import load_dataset

        if self.threads:  # training runs in this process: its torch threads are the search's ``threads``
            torch.set_num_threads(self.threads)
        self.data = load_dataset(self.dataset, source_checked=self._source_checked)
        if note := self.trainer.schedule_note(len(self.data.train)):
            log.warning(note)
        if self.latency_config is not None and self.service is None:
            self.service = build("latency", self.latency_config)
        if self.service is not None:
            self.service.work_dir = Path(run_dir) / "latency"
            problems = self.modes.load(self.service, self.deploy)
            if problems:
                raise ValueError(problems[0])

    def close(self) -> None:
        self._queue.clear()
        if self.service is not None:
            self.service.close()
            self.service = None

    # ------------------------------------------------------------------ evaluation
    def _measure(self, arch: str) -> Future:
        """Hand ``arch`` to the latency service's own threads; the future's result is the result dict."""
        from latency.result import transient

        started = time.perf_counter()
        future: Future = Future()

        def done(measured: Future) -> None:
            try:
                result = {**measured.result().to_dict(), "wall_seconds": time.perf_counter() - started}
            except Exception as exc:  # the service reports failures as values; anything else is a bug upstream
                result = {"status": str(Status.FAILED), "error": first_line(exc, with_type=True),
                          "extra": transient()}
            future.set_result(result)

        self.service.submit(arch, resolution=self.deploy["resolution"], channels=self.deploy["channels"],
                            num_classes=self.deploy["num_classes"]).add_done_callback(done)
        return future

    def submit(self, arch: str) -> None:
        child = ChildResult(arch=arch, seed=child_seed(self.seed, arch))
        data = self.data
        try:
            profile, too_large = size_guard(
                arch, deploy=self.deploy, batch_size=self.trainer.batch_size,
                data_shape=(data.resolution, data.channels, data.num_classes) if data is not None else None,
                optimizer_slots=2 if self.trainer.optimizer == "rmsprop" else 1, limit_gb=self.max_child_memory_gb,
                converts=self.service is not None and self.modes.measures)
            child.params, child.macs = profile.params, profile.macs
            if too_large:
                child.fail(too_large)
        except Exception as exc:  # a child that cannot even be built is a failed child, not a crash
            child.fail(f"build: {first_line(exc, with_type=True)}")
        future = predicted = None
        if child.ok and self.service is not None:
            if self.modes.measure_at_submit:
                future = self._measure(arch)
            else:
                predicted = self.modes.predict(arch)
        self._queue.append((child, future, predicted))

    def pending(self) -> int:
        return len(self._queue)

    def next_result(self) -> ChildResult:
        from nas.trainer import train_child

        if not self._queue:
            raise RuntimeError("next_result() with nothing submitted")
        child, future, predicted = self._queue.popleft()
        if child.ok and self.scores:
            self._score(child)
        if child.ok:
            # with host latency, every training step passes the latency service's gate: no step runs while the
            # host times a model, so timings are quiet (latency.quiet)
            guard = self.service.gate.busy if self.service is not None else nullcontext
            apply_training(child, train_child(child.arch, self.data, self.trainer, seed=child.seed,
                                              step_guard=guard).to_dict())
        if self.service is None or (future is None and predicted is None):
            return child  # no latency asked, or a child that failed before it could be measured
        reason = self.modes.wants_measurement(child, predicted)
        if reason is not None and future is None:
            future = self._measure(child.arch)  # hybrid: after training, once the child is known to matter
        return self.modes.finish(child, predicted, future.result() if future is not None else None, reason)

    def _score(self, child: ChildResult) -> None:
        apply_scores(child, score_child(child.arch, self.data, self.scores, seed=child.seed,
                                        batch_size=self.score_batch_size))

    def status(self) -> str:
        parts = [f"queued {len(self._queue)}" if self._queue else "", self.modes.status()]
        return ", ".join(p for p in parts if p)
