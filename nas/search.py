"""``python -m nas.search``: the MnasNet search loop.

Each controller step samples a batch of token sequences, decodes them to architecture strings, evaluates the
children (proxy accuracy and real TFLite latency, identical architectures once), turns them into rewards, updates
the controller and commits everything to the run store in one transaction. Re-running with the same run directory
resumes where the store ends (see ``nas.store`` for why no finished child is lost or evaluated twice).

    python -m nas.search +experiment=quickstart
    python -m nas.search +experiment=smoke run_dir=runs/try1 budget=16
    python -m nas.search -m +experiment=quickstart reward=soft,hard seed=0,1,2
"""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# TensorFlow (imported by tensorboard and the latency workers) logs from C++ at import; keep the console readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from mnas_common.paths import config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from nas.evaluator import ChildResult, Evaluator, LocalEvaluator  # noqa: E402
from nas.pareto import front_mask  # noqa: E402
from nas.store import RunStore, StoreError  # noqa: E402

log = logging.getLogger("nas.search")

# Config sections that define a run: resuming with different values would mix two searches in one store.
IDENTITY_KEYS = ("search_space", "controller", "reward", "trainer", "dataset", "deploy", "seed", "batch_size")


class SearchError(RuntimeError):
    """A problem the user can fix (bad config, missing dataset or device); printed as one line."""


def _container(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def validate_config(cfg: DictConfig) -> None:
    for key in ("budget", "batch_size"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SearchError(f"{key} must be a positive integer, got {value!r}")
    if not isinstance(cfg.get("seed"), int):
        raise SearchError(f"seed must be an integer, got {cfg.get('seed')!r}")
    deploy = cfg.get("deploy") or {}
    for key in ("resolution", "channels", "num_classes"):
        value = deploy.get(key)
        if not isinstance(value, int) or value < 1:
            raise SearchError(f"deploy.{key} must be a positive integer, got {value!r}")
    threads = cfg.get("threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise SearchError(f"threads must be a positive integer or null, got {threads!r}")


def _environment() -> dict:
    import numpy
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "argv": sys.argv,
    }
    for module in ("onnx2tf", "tensorflow", "ai_edge_litert"):
        try:
            from importlib.metadata import version

            env[module] = version(module.replace("_", "-"))
        except Exception:
            env[module] = None
    return env


def _check_identity(store: RunStore, cfg: DictConfig) -> None:
    identity = {k: _container(cfg.get(k)) for k in IDENTITY_KEYS}
    stored = store.get_meta("identity")
    if stored is None:
        store.set_meta("identity", identity)
        store.set_meta("config", _container(cfg))
        store.set_meta("environment", _environment())
        store.set_meta("created_at", time.time())
        return
    changed = [k for k in IDENTITY_KEYS if stored.get(k) != identity[k]]
    if changed:
        raise SearchError(
            f"run store {store.path} was created by a different search ({', '.join(changed)} changed); "
            "resume with the original settings or choose a new run_dir"
        )


class TensorBoardLog:
    """Scalars per step, the accuracy-latency scatter with its front, and the run's hyper-parameters."""

    def __init__(self, log_dir: Path, purge_step: int):
        import sys
        import types

        # tensorboard imports TensorFlow (seconds, C++ log lines) unless its "notf" switch exists (the module the
        # tensorboard-notf package adds); event files need only the protos. The latency workers keep their own TF.
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events a killed run wrote past its last committed step.
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def step(self, step: int, stats: dict) -> None:
        for key, value in stats.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def scatter(self, step: int, records: list, target_ms: float | None = None) -> None:
        from nas.pareto import scatter_figure

        points = [r for r in records if r["status"] == "ok" and r.get("latency_ms") is not None]
        if points:
            figure = scatter_figure(points, title=f"step {step}", target_ms=target_ms)
            self.writer.add_figure("pareto/accuracy_vs_latency", figure, step)

    def hparams(self, cfg: DictConfig, metrics: dict) -> None:
        flat = {}
        for key in ("controller", "reward", "search_space", "trainer", "dataset"):
            section = _container(cfg.get(key)) or {}
            for name, value in section.items():
                if isinstance(value, (int, float, str, bool)):
                    flat[f"{key}.{name}"] = value
        flat.update(seed=cfg.seed, batch_size=cfg.batch_size, budget=cfg.budget)
        self.writer.add_hparams(flat, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        self.writer.close()


def _reward_of(reward_fn, result: ChildResult) -> float:
    """A failed child, or one missing the measurement its reward needs, gets the configured invalid reward."""
    missing = (getattr(reward_fn, "uses_latency", False) and result.latency_ms is None) or (
        getattr(reward_fn, "uses_macs", False) and result.macs is None
    )
    if not result.ok or result.top1 is None or missing:
        return float(reward_fn(accuracy=None))
    return float(reward_fn(accuracy=result.top1, latency_ms=result.latency_ms, macs=result.macs))


def _records(store: RunStore) -> list[dict]:
    return [
        {
            "step": c.step,
            "arch": c.arch,
            "status": c.status,
            "top1": c.top1,
            "latency_ms": c.latency_ms,
            "reward": c.reward,
            "macs": c.macs,
        }
        for c in store.children(committed_only=True)
    ]


def _front_size(records: list[dict]) -> int:
    pts = [(r["top1"], r["latency_ms"]) for r in records if r["status"] == "ok" and r["latency_ms"] is not None]
    if not pts:
        return 0
    return int(sum(front_mask([p[0] for p in pts], [p[1] for p in pts])))


class Search:
    """One search run bound to a run directory. ``run()`` resumes from whatever the store already holds."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: str | Path,
        *,
        evaluator: Evaluator | None = None,
        overrides: list[str] | None = None,
    ):
        validate_config(cfg)
        self.cfg = cfg
        self.overrides = list(overrides or [])
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._evaluator = evaluator
        self._service = None

    # ------------------------------------------------------------------ parts
    def _build_parts(self):
        from hydra.utils import instantiate

        from search_spaces import SearchSpace

        cfg = self.cfg
        try:
            space = SearchSpace.from_config(cfg.search_space)
            reward_fn = instantiate(cfg.reward)
            controller = instantiate(cfg.controller, num_choices=space.num_choices, seed=cfg.seed)
        except Exception as exc:  # Hydra wraps the component's own ValueError; show the cause in one line
            cause = exc.__cause__ or exc
            raise SearchError(str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)) from None
        needs_latency = bool(getattr(reward_fn, "uses_latency", False))
        if needs_latency and not cfg.measure_latency:
            raise SearchError(f"reward {cfg.reward.get('_target_')} uses latency but measure_latency is false")
        return space, reward_fn, controller

    def _make_evaluator(self) -> Evaluator:
        if self._evaluator is not None:
            return self._evaluator
        from hydra.utils import instantiate

        from nas.data import load_dataset
        from nas.trainer import TrainerConfig

        cfg = self.cfg
        try:
            data = load_dataset(cfg.dataset)
            trainer_config = TrainerConfig(**_container(cfg.trainer))
        except (ValueError, FileNotFoundError) as exc:
            raise SearchError(str(exc).splitlines()[0]) from None
        if cfg.measure_latency:
            cache = cfg.latency_cache or None
            try:
                self._service = instantiate(cfg.latency, cache_path=cache, work_dir=str(self.run_dir / "latency"))
                self._service.check()  # no phone or no benchmark binary: stop now, not after a batch of failures
            except Exception as exc:
                cause = exc.__cause__ or exc
                if self._service is not None:
                    self._service.close()
                    self._service = None
                raise SearchError(f"latency: {str(cause).strip().splitlines()[0]}") from None
        self._evaluator = LocalEvaluator(
            data=data,
            trainer_config=trainer_config,
            latency_service=self._service,
            deploy=_container(cfg.deploy),
            seed=cfg.seed,
            audit_log=cfg.get("audit_log"),
        )
        return self._evaluator

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        cfg = self.cfg
        if cfg.get("threads"):
            import torch

            torch.set_num_threads(cfg.threads)
        space, reward_fn, controller = self._build_parts()
        with RunStore(self.run_dir) as store:
            _check_identity(store, cfg)
            store.set_meta("budget", cfg.budget)
            store.set_meta("overrides", self.overrides)
            last = store.last_step()
            if last >= 0:
                controller.load_state_dict(store.controller_state(last))
            num_steps = math.ceil(cfg.budget / cfg.batch_size)
            if last + 1 < num_steps:
                self._loop(store, space, reward_fn, controller, first_step=last + 1, num_steps=num_steps)
            else:
                log.info("run %s is complete (%d steps); nothing to evaluate", self.run_dir, last + 1)
            if cfg.measure_references:
                self._measure_references(store)
            summary = self._summary(store)
        self.close()
        if cfg.pareto.enabled:
            from nas.pareto import export_runs

            export_runs([self.run_dir], self.run_dir / "pareto", export_top=cfg.pareto.export_top, cfg=cfg)
        return summary

    def _loop(self, store: RunStore, space, reward_fn, controller, *, first_step: int, num_steps: int) -> None:
        from tqdm.auto import tqdm

        cfg = self.cfg
        evaluator = self._make_evaluator()
        tb = TensorBoardLog(self.run_dir / "tb", purge_step=first_step) if cfg.tensorboard else None
        records = _records(store)
        best = max((r["reward"] for r in records if r["reward"] is not None), default=-math.inf)
        bar = tqdm(
            total=num_steps * cfg.batch_size,
            initial=first_step * cfg.batch_size,
            desc="search",
            unit="child",
            disable=not cfg.progress,
            dynamic_ncols=True,
        )
        try:
            for step in range(first_step, num_steps):
                started = time.perf_counter()
                sample = controller.sample(cfg.batch_size)
                tokens = [list(map(int, t)) for t in sample.tokens]
                archs = [space.decode(t) for t in tokens]
                log_probs = [float(x) for x in sample.log_probs]
                results: list[ChildResult | None] = [None] * len(archs)

                for idx, rec in store.pending_children(step).items():
                    if idx < len(tokens) and rec.tokens == tokens[idx]:
                        results[idx] = ChildResult.from_dict(rec.result)
                        bar.update(1)
                    else:
                        log.warning("step %d child %d in the store differs from the resampled one; re-evaluating", step, idx)
                todo: dict[str, list[int]] = {}
                for idx, arch in enumerate(archs):
                    if results[idx] is not None:
                        continue
                    previous = store.find_result(arch) if cfg.reuse_evaluations else None
                    if previous is not None:
                        results[idx] = ChildResult.from_dict(previous)
                        store.add_child(step=step, idx=idx, tokens=tokens[idx], arch=arch, result=previous,
                                        log_prob=log_probs[idx], reused=True)
                        bar.update(1)
                    else:
                        todo.setdefault(arch, []).append(idx)
                for arch, result in evaluator.evaluate(list(todo)):
                    for j, idx in enumerate(todo[arch]):
                        store.add_child(step=step, idx=idx, tokens=tokens[idx], arch=arch, result=result.to_dict(),
                                        log_prob=log_probs[idx], reused=j > 0)
                        results[idx] = result
                        bar.update(1)
                    best = max(best, _reward_of(reward_fn, result))
                    live = [{"status": r.status, "top1": r.top1, "latency_ms": r.latency_ms} for r in results if r]
                    bar.set_postfix(best=f"{best:.4f}", front=_front_size(records + live), refresh=False)

                rewards = [_reward_of(reward_fn, r) for r in results]
                update_stats = controller.update(tokens, rewards) or {}
                ok = [r for r in results if r.ok]
                stats = {f"controller/{k}": float(v) for k, v in update_stats.items() if isinstance(v, (int, float))}
                stats.update(
                    {
                        "reward/mean": sum(rewards) / len(rewards),
                        "reward/max": max(rewards),
                        "children/failed": len(results) - len(ok),
                        "children/evaluated": sum(len(v) for v in todo.values()),
                        "controller/entropy": sum(float(e) for e in sample.entropies) / len(archs),
                        "controller/log_prob": sum(log_probs) / len(archs),
                        "time/step_seconds": time.perf_counter() - started,
                    }
                )
                if ok:
                    stats["accuracy/mean"] = sum(r.top1 for r in ok) / len(ok)
                    stats["accuracy/max"] = max(r.top1 for r in ok)
                    lat = [r.latency_ms for r in ok if r.latency_ms is not None]
                    if lat:
                        stats["latency_ms/mean"] = sum(lat) / len(lat)
                        stats["latency_ms/min"] = min(lat)
                store.commit_step(step, rewards, stats, controller.state_dict())
                records = _records(store)
                best = max(r["reward"] for r in records if r["reward"] is not None)
                stats["reward/best"] = best
                stats["pareto/front_size"] = _front_size(records)
                bar.set_postfix(best=f"{best:.4f}", front=stats["pareto/front_size"], refresh=True)
                if tb is not None:
                    tb.step(step, stats)
                    if step == num_steps - 1 or step % max(1, cfg.scatter_every) == 0:
                        tb.scatter(step, records, reward_fn.target if reward_fn.uses_latency else None)
            if tb is not None:
                ok = [r for r in records if r["status"] == "ok"]
                tb.hparams(
                    cfg,
                    {
                        "best_reward": best,
                        "best_top1": max((r["top1"] for r in ok), default=0.0),
                        "front_size": _front_size(records),
                    },
                )
        finally:
            bar.close()
            if tb is not None:
                tb.close()

    def _measure_references(self, store: RunStore) -> None:
        """Evaluate the reference architectures the same way as the children, once per run, for the plots."""
        from search_spaces import resolve_arch

        done = store.references()
        names = [n for n in self.cfg.measure_references if n not in done]
        if not names:
            return
        evaluator = self._make_evaluator()
        by_arch = {resolve_arch(n): n for n in names}
        for arch, result in evaluator.evaluate(list(by_arch)):
            store.add_reference(by_arch[arch], arch, result.to_dict())

    def _summary(self, store: RunStore) -> dict:
        records = _records(store)
        ok = [r for r in records if r["status"] == "ok"]
        best = max(records, key=lambda r: r["reward"] if r["reward"] is not None else -math.inf, default=None)
        return {
            "run_dir": str(self.run_dir),
            "steps": store.last_step() + 1,
            "children": len(records),
            "failed": len(records) - len(ok),
            "unique_architectures": len({r["arch"] for r in records}),
            "best_reward": best and best["reward"],
            "best_arch": best and best["arch"],
            "best_top1": best and best["top1"],
            "best_latency_ms": best and best["latency_ms"],
            "front_size": _front_size(records),
        }

    def close(self) -> None:
        if self._evaluator is not None:
            self._evaluator.close()
        if self._service is not None:
            self._service.close()
            self._service = None


def _run_dir_from_hydra(cfg: DictConfig) -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path(cfg.run_dir)


def main() -> None:
    import hydra

    @hydra.main(version_base=None, config_path=str(config_dir()), config_name="search")
    def _main(cfg: DictConfig) -> dict:
        from hydra.core.hydra_config import HydraConfig

        run_dir = _run_dir_from_hydra(cfg)
        overrides = list(HydraConfig.get().overrides.task)
        try:
            summary = Search(cfg, run_dir, overrides=overrides).run()
        except (SearchError, StoreError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        import json

        print(json.dumps(summary))
        return summary

    _main()


if __name__ == "__main__":
    main()
