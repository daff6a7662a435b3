"""From a config to a finished search: build every part, validate everything, lock the run, run the engine.

The order is what keeps a run directory safe:

1. build every component from its config group and check the top-level values, the dataset, the devices and every
   path; all problems are collected and reported together in one :class:`~nas.components.ConfigError` line;
2. take the run's writer lock and open its store (a second search on the same run directory stops here);
3. check the store before writing to it: the same search (identity), a budget no smaller than what it holds, the
   controller state it resumes from (hash and unpickling);
4. start the evaluator (prepare the dataset, start workers) and only then write the run's identity and settings;
5. run; close the evaluator and the loggers whatever happens (an interrupt included).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnas_common.checks import is_int, is_seed, positive_int, seed
from mnas_common.config import to_plain
from mnas_common.errors import first_line
from mnas_common.paths import directory_problem

from nas.components import ConfigError, build, strip_targets
from nas.engine import Search
from nas.evaluator import check_latency
from nas.store import RunStore, StoreError

# Config sections that define a run's results: resuming with different values would mix two searches in one store.
# (Where children run, what is logged and the budget do not change the results of the children already stored.)
# threads: torch's thread count rounds float reductions differently (the controller's update, training in the search's
# process), which is why nas.fidelity keys an evaluation by it too.
# training_threads: the threads children train with (``Evaluator.training_threads``): the search's threads for
# evaluator=local, the trainer actors' trainers.threads for evaluator=ray.
IDENTITY_KEYS = ("search_space", "controller", "reward", "trainer", "dataset", "deploy", "seed", "batch_size",
                 "steady_state", "threads", "training_threads", "latency", "evaluator", "evaluator_settings")
# The latency settings that decide a child's latency (device and protocol, how the search uses it, which conversions
# fail); not where the cache lives, how many workers convert, timeouts or retries.
LATENCY_IDENTITY = ("runner", "threads", "warmup_runs", "num_runs", "rounds", "anchor", "quiet", "pin_cpu", "cpu_mask",
                    "use_xnnpack", "fixed_performance", "tolerance_abs", "tolerance_rel", "mode", "hybrid_top_k",
                    "table_space", "table", "cooldown_s")
# Added to LATENCY_IDENTITY later: a store whose latency identity lacks one is compared on the others
LATER_LATENCY_KEYS = ("cooldown_s",)
# The evaluator settings that decide which children fail and what is stored with them (the memory limit, the
# training-free scores, the synthetic evaluator's failures), named alike for evaluator=local and ray so that a run may
# move between them; not how many actors, CPUs or slots, where the cluster is or how often it is polled.
EVALUATOR_IDENTITY = ("max_child_memory_gb", "scores", "score_batch_size", "failure_rate")
# Written by later versions than some stores: a store without them is compared on the others (steady_state: False)
LATER_KEYS = {"steady_state": False, "threads": None, "training_threads": None, "latency": None, "evaluator": None,
              "evaluator_settings": None}
DEPLOY_KEYS = ("resolution", "channels", "num_classes")

log = logging.getLogger(__name__)


@dataclass
class Parts:
    space: Any = None
    controller: Any = None
    reward: Any = None
    evaluator: Any = None
    loggers: list = field(default_factory=list)
    references: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        """Release what the parts own; every part is closed even when another fails to."""
        errors = []
        for part in [self.evaluator, *self.loggers]:
            try:
                if part is not None:
                    part.close()
            except Exception as exc:  # pragma: no cover - reported after the others are closed
                errors.append(exc)
        if errors:
            raise errors[0]


def check_values(cfg) -> list[str]:
    """Problems with the top-level values of a search's config (each component checks its own when it is built)."""
    problems = []
    for check, key in ((positive_int, "budget"), (positive_int, "batch_size"), (seed, "seed")):
        try:
            check(key, cfg.get(key))
        except ValueError as exc:
            problems.append(str(exc))
    deploy = to_plain(cfg.get("deploy")) or {}
    for key in DEPLOY_KEYS:
        try:
            positive_int(f"deploy.{key}", deploy.get(key))
        except ValueError as exc:
            problems.append(str(exc))
    problems += [f"unknown deploy field {key!r}; known: {', '.join(DEPLOY_KEYS)}" for key in deploy
                 if key not in DEPLOY_KEYS]
    try:
        positive_int("threads", cfg.get("threads"), allow_none=True)
    except ValueError as exc:
        problems.append(str(exc))
    name = cfg.get("name")  # the default run directory (runs/<name>/seed<seed>) and a sweep's (multirun/<name>/...)
    if not isinstance(name, (str, int)) or isinstance(name, bool) or not str(name).strip():
        problems.append(f"name must be a non-empty name for the run's directory, got {name!r}")
    run_dir = cfg.get("run_dir")
    if not isinstance(run_dir, str) or not run_dir.strip():
        problems.append(f"run_dir must be a directory path, got {run_dir!r}")
    for key in ("measure_latency", "reuse_evaluations", "steady_state"):
        if not isinstance(cfg.get(key), bool):
            problems.append(f"{key} must be true or false, got {cfg.get(key)!r}")
    references = to_plain(cfg.get("measure_references"))
    if references is not None and not isinstance(references, list):
        problems.append(f"measure_references must be a list of architectures, e.g. [mnasnet_a1], got {references!r}")
    pareto = to_plain(cfg.get("pareto")) or {}
    if not isinstance(pareto.get("enabled", True), bool):
        problems.append(f"pareto.enabled must be true or false, got {pareto.get('enabled')!r}")
    top = pareto.get("export_top", 0)
    if not is_int(top) or top < 0:
        problems.append(f"pareto.export_top must be a whole number >= 0 (0: no export), got {top!r}")
    return problems


def build_parts(cfg, run_dir: str | Path) -> Parts:
    """Every component of the search, validated; raises one ConfigError naming every problem found."""
    from search_spaces import resolve_arch

    problems = check_values(cfg)
    parts = Parts()

    def attempt(group: str, node, **runtime):
        try:
            return build(group, node, **runtime)
        except ConfigError as exc:
            problems.extend(exc.problems)
            return None

    parts.space = attempt("search_space", cfg.search_space)
    parts.reward = attempt("reward", cfg.reward)
    if parts.space is not None and is_seed(cfg.get("seed")):
        parts.controller = attempt("controller", cfg.controller, num_choices=parts.space.num_choices, seed=cfg.seed)
    if (cfg.get("steady_state") is True and parts.controller is not None
            and not getattr(parts.controller, "asynchronous", False)):
        problems.append(f"steady_state=true needs an asynchronous controller (random, evolution); "
                        f"{parts.controller.name!r} learns from whole batches (on-policy)")
    population = getattr(parts.controller, "population_size", None)
    if population is not None and is_int(cfg.get("budget")) and population >= cfg.budget:
        problems.append(f"controller.population_size {population} >= budget {cfg.budget}: aging evolution samples "
                        "at random until its population is full, so no child would be a mutation (this run would be "
                        "the random search, child for child); use controller=evolution_small or set "
                        "controller.population_size and controller.tournament_size below the budget")
    trainer = attempt("trainer", cfg.trainer)
    dataset = attempt("dataset", cfg.dataset)
    measure = cfg.get("measure_latency") is True
    if getattr(parts.reward, "uses_latency", False) and not measure:
        problems.append(f"reward {cfg.reward.get('name')!r} uses latency but measure_latency is false")
    latency = to_plain(cfg.latency) if measure else None
    if trainer is not None and dataset is not None:
        parts.evaluator = attempt("evaluator", cfg.evaluator, trainer=trainer, dataset=dataset, latency=latency,
                                  deploy=to_plain(cfg.deploy), seed=cfg.seed, threads=cfg.get("threads"))
    elif latency is not None:  # no evaluator to ask, but a missing phone is worth naming with the rest
        service, latency_problems = check_latency(latency)
        problems += latency_problems
        if service is not None:
            service.close()
    for name, node in (to_plain(cfg.get("logger")) or {}).items():
        logger = attempt(f"logger.{name}", node)
        if logger is not None:
            parts.loggers.append(logger)
    names = cfg.get("measure_references")
    for name in names if isinstance(to_plain(names), list) else []:
        try:
            parts.references[str(name)] = resolve_arch(str(name))
        except ValueError as exc:
            problems.append(f"measure_references: {exc}")
    if parts.evaluator is not None:
        problems += parts.evaluator.check()
    problems += check_run_dir(Path(run_dir))
    for logger in parts.loggers:
        problems += logger.check(Path(run_dir))
    if problems:
        parts.close()
        raise ConfigError(problems)
    return parts


def check_run_dir(run_dir: Path, name: str = "run_dir") -> list[str]:
    problem = directory_problem(run_dir)
    return [f"{name} {run_dir}: {problem}"] if problem else []


def environment() -> dict:
    """Library versions and hardware, recorded with every run (Lindauer & Hutter's checklist)."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
           "processor": platform.processor(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "numpy": numpy.__version__, "argv": sys.argv}
    for package in ("onnx2tf", "tensorflow", "ai-edge-litert", "ray"):
        try:
            env[package.replace("-", "_")] = version(package)
        except PackageNotFoundError:
            env[package.replace("-", "_")] = None
    return env


def identity(cfg) -> dict:
    out = {k: strip_targets(cfg.get(k)) for k in IDENTITY_KEYS
           if k not in ("training_threads", "latency", "evaluator", "evaluator_settings")}
    latency = to_plain(cfg.get("latency")) or {}
    out["latency"] = ({k: latency.get(k) for k in LATENCY_IDENTITY if k in latency}
                      if cfg.get("measure_latency") is True else None)
    out["evaluator"] = _results_of(cfg)
    out["training_threads"] = _training_threads(cfg)
    evaluator = to_plain(cfg.get("evaluator")) or {}
    out["evaluator_settings"] = {k: evaluator[k] for k in EVALUATOR_IDENTITY if k in evaluator}
    return out


def _completed(stored: dict, config: Any) -> tuple[dict, set[str]]:
    """A store's identity with the keys added since it was written (``LATER_KEYS``, ``LATER_LATENCY_KEYS``) taken
    from the config it was created with (its meta ``config``, written once, at creation) where that config held
    them; the keys so taken. What its config did not hold stays unknown: the store is compared on the rest."""
    if not isinstance(config, dict):
        return stored, set()
    later: dict = {}
    if "evaluator" not in stored:
        later["evaluator"] = _results_of(config)
    if "threads" not in stored and "threads" in config:
        later["threads"] = config["threads"]
    evaluator = config.get("evaluator") if isinstance(config.get("evaluator"), dict) else {}
    trainers = evaluator.get("trainers") if isinstance(evaluator.get("trainers"), dict) else {}
    if "training_threads" not in stored and ("threads" in config or "threads" in trainers):
        later["training_threads"] = _training_threads(config)
    if "evaluator_settings" not in stored and (held := {k: evaluator[k] for k in EVALUATOR_IDENTITY
                                                        if k in evaluator}):
        later["evaluator_settings"] = held
    latency = config.get("latency") if isinstance(config.get("latency"), dict) else {}
    if isinstance(stored.get("latency"), dict) and (held := {k: latency[k] for k in LATER_LATENCY_KEYS
                                                             if k in latency and k not in stored["latency"]}):
        later["latency"] = {**stored["latency"], **held}
    return {**stored, **later}, set(later)


def _fields(group: str, was: Any, now: Any, key: str) -> str:
    """The fields of a section of the identity (``key``) that differ, by name: ``latency.num_runs, latency.threads``."""
    if not isinstance(was, dict) or not isinstance(now, dict):
        return key
    return ", ".join(f"{group}.{k}" for k in sorted({*was, *now}) if was.get(k) != now.get(k)) or key


def _evaluator_class(cfg):
    """The evaluator class ``cfg`` builds, or None where it cannot be imported (refused when the parts are built)."""
    from hydra.utils import get_class

    target = (to_plain(cfg.get("evaluator")) or {}).get("_target_")
    try:
        return get_class(target) if target else None
    except Exception:
        return None


def _training_threads(cfg) -> int | None:
    """The threads ``cfg``'s children train with (``Evaluator.training_threads``)."""
    from nas.evaluator import Evaluator

    cls = _evaluator_class(cfg)
    if not (isinstance(cls, type) and issubclass(cls, Evaluator)):  # refused when the parts are built
        cls = Evaluator
    return cls.training_threads(to_plain(cfg.get("evaluator")) or {}, cfg.get("threads"))


def _results_of(cfg) -> str:
    """What the evaluator's children are: ``trained`` (local and Ray give the same results, so a run may move between
    them) or ``synthetic`` (closed-form; mixed into a trained run's store they would pass for real children)."""
    return "synthetic" if getattr(_evaluator_class(cfg), "synthetic", False) else "trained"


def hparams(cfg) -> dict:
    """A flat description of the run for TensorBoard's HParams tab."""
    flat = {}
    for key in ("controller", "reward", "search_space", "trainer", "dataset"):
        for name, value in (strip_targets(cfg.get(key)) or {}).items():
            if isinstance(value, (int, float, str, bool)):
                flat[f"{key}.{name}"] = value
    flat.update(seed=cfg.seed, batch_size=cfg.batch_size, budget=cfg.budget)
    return flat


def _check_store(store: RunStore, cfg) -> bool:
    """Refuse a store written by another search or holding more children than the budget; True when it is new."""
    stored = store.get_meta("identity")
    if stored is None:
        return True
    if not isinstance(stored, dict):  # {**stored} / stored.get below: a TypeError or AttributeError traceback
        raise store.damaged("meta 'identity' is damaged", f"a JSON {type(stored).__name__}, not an object")
    mine = identity(cfg)
    stored, derived = _completed(stored, store.get_meta("config"))
    if isinstance(stored.get("latency"), dict) and isinstance(mine["latency"], dict):
        mine["latency"] = {k: v for k, v in mine["latency"].items()
                           if k in stored["latency"] or k not in LATER_LATENCY_KEYS}
    if "evaluator_settings" in derived:  # compared on the settings its config held
        mine["evaluator_settings"] = {k: v for k, v in mine["evaluator_settings"].items()
                                      if k in stored["evaluator_settings"]}
    changed = [k for k in IDENTITY_KEYS if (k in stored or k not in LATER_KEYS)
               and strip_targets(stored.get(k)) != mine[k]]
    # stores written before the evaluator group existed had no steady_state: it was always off
    if "steady_state" not in stored and mine["steady_state"] != LATER_KEYS["steady_state"]:
        changed.append("steady_state")
    if "latency" in changed:  # name the settings
        was, now = stored["latency"], mine["latency"]
        changed[changed.index("latency")] = ("measure_latency" if was is None or now is None
                                             else _fields("latency", was, now, "latency"))
    if "evaluator_settings" in changed:  # another kind of children (below) has other settings: that one is named
        changed[changed.index("evaluator_settings")] = _fields("evaluator", stored["evaluator_settings"],
                                                               mine["evaluator_settings"], "evaluator_settings")
    if "training_threads" in changed:  # named with its values: threads (local) or evaluator.trainers.threads (ray)
        was, now = stored.get("training_threads"), mine["training_threads"]
        same_setting = "threads" in changed and was == stored.get("threads") and now == mine["threads"]
        at = changed.index("training_threads")
        if same_setting or "evaluator" in changed:  # the threads or the kind of children named already
            del changed[at]
        else:
            changed[at] = f"training threads ({was}, now {now})"
    if "evaluator" in changed:
        changed = [k for k in changed if not k.startswith("evaluator.")]
        changed[changed.index("evaluator")] = f"evaluator ({stored['evaluator']} children, now {mine['evaluator']})"
    if changed:
        raise StoreError(f"run store {store.path} was created by a different search ({', '.join(changed)} changed); "
                         "resume with the original settings or choose a new run_dir")
    held = store.num_committed_children()
    if cfg.budget < held:
        raise StoreError(f"budget={cfg.budget} is below the {held} children run {store.path.parent} already holds; "
                         f"the budget counts children: use budget>={held}")
    return False


def _write_record(run_dir: Path, cfg, overrides: list[str] | None) -> None:
    """Hydra's record of the command (``.hydra/config.yaml``, ``overrides.yaml``), written once the search is valid
    and holds the run (Hydra's own is turned off: it wrote before any check, also for a refused command)."""
    from omegaconf import OmegaConf

    record = run_dir / ".hydra"
    record.mkdir(exist_ok=True)
    (record / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (record / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides or [])))


def run_search(cfg, run_dir: str | Path, *, overrides: list[str] | None = None) -> dict:
    """Validate, lock, resume or start, run and export one search; returns its summary."""
    run_dir = Path(run_dir)
    parts = build_parts(cfg, run_dir)
    if cfg.threads:  # the driver's own torch work (the controller) and, with the local evaluator, proxy training
        import torch

        torch.set_num_threads(cfg.threads)
    try:
        with RunStore(run_dir) as store:
            new = _check_store(store, cfg)
            search = Search(space=parts.space, controller=parts.controller, reward=parts.reward,
                            evaluator=parts.evaluator, store=store, loggers=parts.loggers, budget=cfg.budget,
                            batch_size=cfg.batch_size, reuse_evaluations=cfg.reuse_evaluations,
                            steady_state=cfg.steady_state, references=parts.references, run_dir=run_dir,
                            hparams=hparams(cfg))
            search.resume()  # reads and checks the stored controller state before anything is written
            parts.evaluator.start(run_dir)
            meta = {"budget": cfg.budget, "overrides": list(overrides or [])}
            if new:
                meta.update(identity=identity(cfg), config=to_plain(cfg), environment=environment(),
                            created_at=time.time())
            store.set_metas(meta)
            _write_record(run_dir, cfg, overrides)
            summary = search.run()
    finally:
        parts.close()
    pareto = to_plain(cfg.get("pareto")) or {}
    if pareto.get("enabled"):
        from nas.pareto import export_failures, export_runs

        try:
            report = export_runs([run_dir], run_dir / "pareto", export_top=pareto.get("export_top", 0))
        except (OSError, ValueError, RuntimeError) as exc:  # the search itself is done and stored: say so, go on
            log.warning("the Pareto export to %s failed (%s); the run is complete: export it again with "
                        "python -m nas.pareto %s", run_dir / "pareto", first_line(exc), run_dir)
        else:  # a model that could not be exported was said only in summary.md and architectures.json
            for line in export_failures(report["exported"]):
                log.warning("%s", line)
    return summary
