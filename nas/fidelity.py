"""Proxy fidelity: how well a cheap proxy training ranks architectures against a longer reference training.

The engine behind ``scripts/bench_proxy.py``. Three kinds of job, each keyed by everything that changes its result
(architecture, seed, every trainer field, the trainer's revision, the prepared dataset's identity, thread count,
device):
``train`` (``nas.trainer.train_child`` on ``nas.data.load_dataset``: the same code path as a search's children) for
the proxy and for the reference, and ``zero_cost`` (``nas.zero_cost.compute_scores``).

Results go to an append-only JSON-lines store as each job finishes (:class:`ResultStore`), written by the one
process that runs the benchmark (a second one on the same directory is refused). Running the benchmark again skips
every stored key, so an interrupted run (Ctrl-C, SIGTERM, ``--max-minutes``, a crash) continues where it stopped
and nothing is trained twice; a line cut short by a kill is dropped on the next start.

Jobs run in ``workers`` spawned processes with ``threads`` torch threads each; a worker dies with the benchmark
(``PR_SET_PDEATHSIG``) so no orphan keeps a core busy after an interruption.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import os
import platform
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas import rank_stats

__all__ = ["Job", "ResultStore", "analyse", "cost_against", "fidelity_figure", "run_jobs", "setting_label", "succeeded"]

STORE_NAME = "results.jsonl"
# identity of a trainer config: every field but the loader's prefetch depth (it changes speed, not results)
NOT_IDENTITY = ("prefetch",)


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:20]


def trainer_identity(trainer: dict) -> dict:
    return {k: v for k, v in sorted(trainer.items()) if k not in NOT_IDENTITY}


def dataset_key(dataset: dict) -> str:
    from nas.data import DatasetConfig

    return DatasetConfig.from_config(dataset).key()


def setting_key(trainer: dict, dataset: dict) -> str:
    """One proxy (or reference) setting: the trainer's identity plus the prepared dataset's identity."""
    return _digest({"trainer": trainer_identity(trainer), "dataset": dataset_key(dataset)})


@dataclass(frozen=True)
class Job:
    """One training or one training-free score of one architecture under one seed."""

    role: str                       # proxy | reference | baseline | zero_cost (for display; not part of the key)
    arch: str                       # reference name or architecture string
    seed: int
    dataset: dict
    trainer: dict | None = None     # train jobs
    score: str | None = None        # zero_cost jobs
    batch_size: int | None = None   # zero_cost jobs: minibatch size
    threads: int = 1
    device: str = "cpu"

    @property
    def kind(self) -> str:
        return "zero_cost" if self.score else "train"

    def key(self) -> str:
        from search_spaces import resolve_arch

        payload: dict[str, Any] = {"kind": self.kind, "arch": resolve_arch(self.arch), "seed": self.seed,
                                   "dataset": dataset_key(self.dataset), "threads": self.threads,
                                   "device": self.device}
        if self.kind == "train":
            from nas.trainer import TRAINING_REVISION

            payload["trainer"] = trainer_identity(self.trainer or {})
            if TRAINING_REVISION != 1:  # absent at revision 1, so the keys stored before it existed stay valid
                payload["training_revision"] = TRAINING_REVISION
        else:
            payload.update(score=self.score, batch_size=self.batch_size)
        return _digest(payload)

    def work(self, num_train: int, num_val: int) -> float:
        """Expected cost in images processed (for the progress bar's ETA); a score costs about 200 images' time."""
        if self.kind == "zero_cost":
            return 200.0
        t = self.trainer or {}
        batch = t.get("batch_size", 128)
        steps = t.get("epochs", 1) * max(1, num_train // batch)
        if t.get("max_steps"):
            steps = min(steps, t["max_steps"])
        return steps * batch + num_val / 5


class StoreBusy(RuntimeError):
    pass


class ResultStore:
    """Append-only JSON lines under ``directory``, one record per finished job; one writer at a time."""

    def __init__(self, directory: str | Path, *, write: bool = True):
        self.directory = Path(directory)
        self.path = self.directory / STORE_NAME
        self._lock = None
        self._records: dict[str, dict] | None = None  # the writer's copy: no one else appends while it holds the lock
        if write:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.directory / ".lock", "w")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.close()
                raise StoreBusy(f"another bench_proxy run is writing to {self.directory}") from None
            self._drop_partial_line()

    def _drop_partial_line(self) -> None:
        """A kill during a write can leave half a line at the end: cut it, so the next record starts clean."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def load(self) -> dict[str, dict]:
        if self._records is not None:
            return dict(self._records)
        records: dict[str, dict] = {}
        if not self.path.exists():
            return self._keep(records)
        lines = self.path.read_text().splitlines()
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):  # cut short by a kill (read-only readers do not repair the file)
                    break
                raise ValueError(f"{self.path}:{n}: not a JSON line") from None
            if not isinstance(record, dict) or not isinstance(record.get("key"), str):
                raise ValueError(f"{self.path}:{n}: not a record (a JSON object with a \"key\")")
            records[record["key"]] = record
        return self._keep(records)

    def _keep(self, records: dict[str, dict]) -> dict[str, dict]:
        """The writer keeps what it read (and appends to it) so it reads the file once; a reader always rereads."""
        if self._lock is not None:
            self._records = dict(records)
        return records

    def append(self, record: dict) -> None:
        if self._lock is None:
            raise RuntimeError("this ResultStore was opened read-only")
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._records is not None:
            self._records[record["key"]] = record

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


# ----------------------------------------------------------------------------------------------------------------
# worker side


_DATA: dict[str, Any] = {}


def _init_worker(threads: int) -> None:
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop; it terminates us
    try:  # die with the parent, even when it is killed with SIGKILL
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    torch.set_num_threads(threads)
    import nas.trainer  # noqa: F401  imported before the first job: its wall time is the child's own
    import nas.zero_cost  # noqa: F401
    import search_spaces.builder  # noqa: F401


def _dataset(cfg: dict, cache_dir: str | None):
    from nas.data import load_dataset

    key = dataset_key(cfg)
    if key not in _DATA:
        _DATA[key] = load_dataset(cfg, cache_dir=cache_dir, progress=False)
    return _DATA[key]


def execute(job: Job, cache_dir: str | None = None) -> dict:
    """Run one job in this process and return its record (never raises for a bad child)."""
    from search_spaces import resolve_arch

    from nas.trainer import TrainerConfig, train_child
    from nas.zero_cost import compute_scores

    data = _dataset(job.dataset, cache_dir)
    start = time.perf_counter()
    if job.kind == "train":
        result = train_child(job.arch, data, TrainerConfig(**(job.trainer or {})), seed=job.seed,
                             device=job.device).to_dict()
    else:
        result = compute_scores(job.arch, data, (job.score,), seed=job.seed, batch_size=job.batch_size or 64)
    import torch

    return {
        "key": job.key(), "kind": job.kind, "role": job.role, "arch": job.arch, "arch_string": resolve_arch(job.arch),
        "seed": job.seed, "threads": job.threads, "device": job.device, "trainer": job.trainer,
        "dataset": job.dataset, "dataset_key": dataset_key(job.dataset), "setting": (
            setting_key(job.trainer, job.dataset) if job.kind == "train" else None),
        "score": job.score, "batch_size": job.batch_size, "result": result,
        "wall_seconds": time.perf_counter() - start, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": platform.node(), "torch": torch.__version__,
    }


def _worker_execute(job: Job, cache_dir: str | None) -> dict:
    return execute(job, cache_dir)


# ----------------------------------------------------------------------------------------------------------------
# driver side


@dataclass
class RunSummary:
    stored_before: int = 0
    ran: int = 0
    pending: int = 0
    interrupted: bool = False
    failed: list[str] = field(default_factory=list)


class _Interrupted(Exception):
    pass


class JobCrashed(RuntimeError):
    """A job's function broke (not a failed child, which is a stored record) or its worker process died."""


def transient(record: dict) -> bool:
    """Whether a stored record failed for a reason of the moment (out of memory beside another worker): such a job
    is run again, not reused."""
    return bool((record.get("result") or {}).get("transient"))


def run_jobs(jobs: Sequence[Job], store: ResultStore, *, workers: int = 1, threads: int = 1,
             cache_dir: str | None = None, deadline: float | None = None, max_jobs: int | None = None,
             work: Callable[[Job], float] | None = None, progress: bool = True) -> RunSummary:
    """Run every job whose key is not stored yet (or is stored as a transient failure), ``workers`` at a time;
    store each record as it arrives.

    Stops starting new jobs at ``deadline`` (``time.monotonic()``) or after ``max_jobs``; jobs already running
    finish and are stored. SIGINT/SIGTERM stop at once: running jobs are lost (they are rerun next time), every
    finished one is kept. A worker process that dies (killed, out of memory) stops the run the same way, then
    raises :class:`JobCrashed` naming the job it was running.
    """
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from tqdm.auto import tqdm

    from mnas_common.pools import stop_pool

    seen = {key for key, record in store.load().items() if not transient(record)}
    todo = []
    for job in jobs:
        key = job.key()
        if key not in seen:
            seen.add(key)
            todo.append(job)
    summary = RunSummary(stored_before=len(jobs) - len(todo), pending=len(todo))
    if not todo:
        return summary
    work = work or (lambda job: 1.0)
    bar = tqdm(total=round(sum(work(j) for j in todo)), unit="img", unit_scale=True, disable=not progress,
               desc=f"0/{len(todo)} jobs", dynamic_ncols=True)
    # spawn: a fresh interpreter per worker, no torch thread pools inherited from a fork
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(threads,))
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise _Interrupted()

    signal.signal(signal.SIGTERM, on_term)
    pending = iter(todo)
    in_flight: dict = {}  # future -> job
    started = 0
    try:
        while True:
            while len(in_flight) < workers and (max_jobs is None or started < max_jobs) and \
                    (deadline is None or time.monotonic() < deadline):
                job = next(pending, None)
                if job is None:
                    break
                in_flight[pool.submit(_worker_execute, job, cache_dir)] = job
                started += 1
            if not in_flight:
                break
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            crashed: list[tuple[Job, BaseException]] = []
            for future in sorted(done, key=lambda f: f.exception() is not None):  # what finished is stored first
                job = in_flight.pop(future)
                if (exc := future.exception()) is not None:
                    crashed.append((job, exc))
                    continue
                record = future.result()
                store.append(record)
                summary.ran += 1
                summary.pending -= 1
                result = record["result"]
                if result.get("status", "ok") != "ok" or result.get("error"):
                    summary.failed.append(f"{job.role} {job.arch} seed {job.seed}: {result.get('error')}"
                                          + (" (transient: run again to retry it)" if transient(record) else ""))
                bar.set_description(f"{summary.ran}/{len(todo)} jobs")
                bar.update(round(work(job)))
            if crashed:
                def name(job: Job) -> str:
                    return f"{job.role} job for {job.arch} (seed {job.seed})"

                broken = [job for job, exc in crashed if isinstance(exc, BrokenProcessPool)]
                if broken:  # every job in flight fails with the pool: which one's worker died is not known
                    what = name(broken[0]) if len(broken) == 1 else f"one of: {'; '.join(map(name, broken))}"
                    raise JobCrashed(f"a worker process died (killed, out of memory?) while running {what}; every "
                                     "finished job is stored: run the same command again to continue")
                job, exc = crashed[0]
                raise JobCrashed(f"{name(job)} crashed: {exc!r}")  # the job function itself broke: stop, report
    except (KeyboardInterrupt, _Interrupted):
        summary.interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_pool(pool)
        bar.close()
    return summary


# ----------------------------------------------------------------------------------------------------------------
# analysis


def setting_label(trainer: dict, data_info: dict | None, dataset: dict) -> str:
    """A short readable name of a proxy: images, epochs, resolution, batch, learning rate, schedule."""
    per_class = dataset.get("images_per_class")
    images = f"{per_class}/class" if per_class else "all images"
    if data_info:
        images += f" ({data_info['num_train']:,})"
    parts = [images, f"{trainer.get('epochs')} ep"]
    if trainer.get("max_steps"):
        parts.append(f"<= {trainer['max_steps']} steps")
    parts += [f"{dataset.get('resolution')} px", f"bs {trainer.get('batch_size')}",
              f"{trainer.get('optimizer')} lr {trainer.get('lr')} {trainer.get('schedule')}"]
    if trainer.get("warmup_steps"):
        parts[-1] += f" wu {trainer['warmup_steps']}"
    if trainer.get("dropout") is not None:
        parts.append(f"dropout {trainer['dropout']}")
    if trainer.get("augment"):
        parts.append("augment")
    return ", ".join(parts)


def succeeded(record: dict | None) -> bool:
    """A stored job that finished with a value (a failed child or a missing score is not one)."""
    if record is None:
        return False
    result = record["result"]
    if record["kind"] == "train":
        return result.get("status") == "ok" and result.get("top1") is not None
    return result.get(record["score"]) is not None


def _value(record: dict) -> float:
    result = record["result"]
    return float(result["top1"] if record["kind"] == "train" else result[record["score"]])


def _mean_over_seeds(stat: Callable[[np.ndarray, np.ndarray], float]):
    """Statistic of a (archs x seeds) score matrix against the reference means: the mean over the seeds."""

    def f(scores: np.ndarray, truth: np.ndarray) -> float:
        values = [stat(scores[:, s], truth) for s in range(scores.shape[1])]
        return float(np.mean(values)) if all(math.isfinite(v) for v in values) else math.nan

    return f


def _seed_agreement(scores: np.ndarray) -> float:
    """Mean Spearman over pairs of seeds: how well one run of the proxy predicts another (its noise ceiling)."""
    pairs = list(itertools.combinations(range(scores.shape[1]), 2))
    if not pairs:
        return math.nan
    values = [rank_stats.spearman(scores[:, a], scores[:, b]) for a, b in pairs]
    return float(np.mean(values)) if all(math.isfinite(v) for v in values) else math.nan


def _with_ci(stat, *columns, n_boot: int, seed: int) -> dict:
    value = stat(*columns)
    if not math.isfinite(value):
        return {"value": None, "ci": None}
    lo, hi = rank_stats.bootstrap_ci(stat, *columns, n_boot=n_boot, seed=seed)
    return {"value": value, "ci": [lo, hi] if math.isfinite(lo) else None}


def _matrix(records: dict[str, dict], keys: dict[tuple[str, int], str], archs: Sequence[str], seeds: Sequence[int]):
    """archs x seeds matrix of values; the archs missing a seed and those with a failed job, listed apart."""
    rows, missing, failed = {}, [], []
    for arch in archs:
        recs = [records.get(keys[(arch, s)]) for s in seeds]
        if any(r is None for r in recs):
            missing.append(arch)
        elif not all(succeeded(r) for r in recs):
            failed.append(arch)
        else:
            rows[arch] = [_value(r) for r in recs]
    return rows, missing, failed


def _cost(records: Iterable[dict]) -> dict:
    recs = list(records)
    if not recs:
        return {}
    wall = [r["wall_seconds"] for r in recs]
    out = {"seconds": float(np.mean(wall)), "seconds_median": float(np.median(wall))}
    if recs[0]["kind"] == "train":
        out["train_seconds"] = float(np.mean([r["result"]["train_seconds"] for r in recs]))
        out["eval_seconds"] = float(np.mean([r["result"]["eval_seconds"] for r in recs]))
    return out


def cost_against(records: dict[str, dict], proxy: Sequence[Job], baseline: Sequence[Job]) -> dict:
    """The proxy's cost per child against a baseline proxy's, on the children both have run (same arch and seed).

    Failed children count: their time was spent. ``ratio`` is proxy / baseline of the mean wall seconds over those
    pairs; ``{}`` when there is no pair yet.
    """
    proxy_keys = {(j.arch, j.seed): j.key() for j in proxy}
    pairs = []
    for job in baseline:
        p = records.get(proxy_keys.get((job.arch, job.seed), ""))
        b = records.get(job.key())
        if p is not None and b is not None:
            pairs.append((p, b))
    if not pairs:
        return {}
    p_cost, b_cost = _cost(p for p, _ in pairs), _cost(b for _, b in pairs)
    return {"pairs": len(pairs), "proxy": p_cost, "baseline": b_cost, "ratio": p_cost["seconds"] / b_cost["seconds"]}


def analyse(records: dict[str, dict], archs: Sequence[str], *, proxy: Sequence[Job], reference: Sequence[Job],
            zero_cost: Sequence[Job] = (), top_k: int = 5, n_boot: int = 2000, boot_seed: int = 0) -> dict:
    """Rank statistics of the proxy (and each training-free score) against the reference's mean over its seeds.

    Only architectures whose every proxy and reference job succeeded count (``archs``), except in the seed-to-seed
    figures: ``noise_spearman`` is over every architecture whose proxy jobs all succeeded, ``reference_noise_spearman``
    over every one whose reference jobs did (the same set once every job succeeded; a run still waiting for its
    references already has its proxy's noise). Reported per proxy seed then averaged
    (a search trains each child once, so one seed is what it sees); ``spearman_seed_mean`` is the proxy averaged
    over its seeds. Confidence intervals: percentile bootstrap over architectures.
    """
    def keyed(jobs):
        return {(j.arch, j.seed): j.key() for j in jobs}, sorted({j.seed for j in jobs})

    pkeys, pseeds = keyed(proxy)
    rkeys, rseeds = keyed(reference)
    prow, pmiss, pfail = _matrix(records, pkeys, archs, pseeds)
    rrow, rmiss, rfail = _matrix(records, rkeys, archs, rseeds)
    used = [a for a in archs if a in prow and a in rrow]
    out: dict[str, Any] = {
        "archs": len(used), "archs_requested": len(archs), "proxy_seeds": pseeds, "reference_seeds": rseeds,
        "missing_proxy": pmiss, "missing_reference": rmiss, "failed": sorted(set(pfail) | set(rfail)),
        "complete": not pmiss and not rmiss,
    }
    out["proxy_cost"] = _cost(records[pkeys[(a, s)]] for a in prow for s in pseeds)
    out["reference_cost"] = _cost(records[rkeys[(a, s)]] for a in rrow for s in rseeds)
    out["proxy_seconds"] = out["proxy_cost"].get("seconds")
    p_only = np.array([prow[a] for a in prow]) if prow else np.zeros((0, len(pseeds)))
    out["noise_spearman"] = _with_ci(_seed_agreement, p_only, n_boot=n_boot, seed=boot_seed) if len(prow) >= 3 else \
        {"value": None, "ci": None}
    r_only = np.array([rrow[a] for a in rrow]) if rrow else np.zeros((0, len(rseeds)))
    out["reference_noise_spearman"] = _with_ci(_seed_agreement, r_only, n_boot=n_boot, seed=boot_seed) \
        if len(rrow) >= 3 else {"value": None, "ci": None}
    out["per_arch"] = {a: {"proxy": prow.get(a), "reference": rrow.get(a)} for a in archs}
    if len(used) < 3:
        out.update(spearman={"value": None, "ci": None}, kendall={"value": None, "ci": None},
                   spearman_seed_mean={"value": None, "ci": None}, top_k_overlap=None, zero_cost={})
        return out
    P = np.array([prow[a] for a in used])
    truth = np.array([np.mean(rrow[a]) for a in used])
    k = min(top_k, len(used))
    out["spearman"] = _with_ci(_mean_over_seeds(rank_stats.spearman), P, truth, n_boot=n_boot, seed=boot_seed)
    out["kendall"] = _with_ci(_mean_over_seeds(rank_stats.kendall), P, truth, n_boot=n_boot, seed=boot_seed)
    out["spearman_seed_mean"] = _with_ci(lambda p, t: rank_stats.spearman(p.mean(1), t), P, truth, n_boot=n_boot,
                                         seed=boot_seed)
    out["top_k"] = k
    out["top_k_overlap"] = _top_k_overlap(truth, P, k)
    out["proxy_top1"] = {"mean": float(P.mean()), "min": float(P.mean(1).min()), "max": float(P.mean(1).max())}
    out["reference_top1"] = {"mean": float(truth.mean()), "min": float(truth.min()), "max": float(truth.max())}

    out["zero_cost"] = {}
    for name in sorted({j.score for j in zero_cost}):
        jobs = [j for j in zero_cost if j.score == name]
        zkeys, zseeds = keyed(jobs)
        zrow, zmiss, zfail = _matrix(records, zkeys, archs, zseeds)
        zused = [a for a in used if a in zrow]
        entry: dict[str, Any] = {"archs": len(zused), "missing": zmiss, "failed": zfail,
                                 "cost": _cost(records[zkeys[(a, s)]] for a in zrow for s in zseeds)}
        for a in archs:
            out["per_arch"][a][name] = zrow.get(a)
        if len(zused) >= 3:
            Z = np.array([zrow[a] for a in zused])
            zt = np.array([np.mean(rrow[a]) for a in zused])
            entry["spearman"] = _with_ci(_mean_over_seeds(rank_stats.spearman), Z, zt, n_boot=n_boot, seed=boot_seed)
            entry["kendall"] = _with_ci(_mean_over_seeds(rank_stats.kendall), Z, zt, n_boot=n_boot, seed=boot_seed)
            entry["noise_spearman"] = _with_ci(_seed_agreement, Z, n_boot=n_boot, seed=boot_seed)
            if (overlap := _top_k_overlap(zt, Z, k)) is not None:
                entry["top_k_overlap"] = overlap
        out["zero_cost"][name] = entry
    return out


def _top_k_overlap(truth: np.ndarray, scores: np.ndarray, k: int) -> float | None:
    """The top-k overlap of each seed's column of ``scores`` with ``truth``, averaged; None where k is not below the
    number of architectures (every one is in both top k: 1.0 would say nothing)."""
    if k >= len(truth):
        return None
    return float(np.mean([rank_stats.top_k_overlap(truth, scores[:, s], k) for s in range(scores.shape[1])]))


def fidelity_figure(stats: dict, *, references: Sequence[str] = (), title: str = ""):
    """Matplotlib figure of an ``analyse`` result: proxy top-1 against reference top-1 per architecture (mean of
    seeds, bars from the lowest to the highest seed), then one panel per training-free score, its rank against the
    reference's (scores span many decades; Spearman is a statement about ranks). Named references are labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = stats["per_arch"]
    names = ["proxy", *stats.get("zero_cost", {})]
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.2), dpi=110, squeeze=False)
    for ax, name in zip(axes[0], names):
        archs = [a for a, v in per.items() if v.get("reference") and v.get(name)]
        if not archs:
            ax.set_axis_off()
            continue
        truth = np.array([np.mean(per[a]["reference"]) for a in archs])
        values = [np.asarray(per[a][name], dtype=float) for a in archs]
        if name == "proxy":
            x, y = truth, np.array([v.mean() for v in values])
            err = np.array([[y[i] - v.min(), v.max() - y[i]] for i, v in enumerate(values)]).T
            ax.errorbar(x, y, yerr=err, fmt="o", ms=4, capsize=2, alpha=0.8)
            ax.set_xlabel("reference top-1 (mean of seeds)")
            ax.set_ylabel("proxy top-1 (mean of seeds; bar: seed range)")
            stat = stats.get("spearman", {})
        else:
            x = rank_stats.rankdata(truth)
            y = rank_stats.rankdata(np.array([v.mean() for v in values]))
            ax.plot(x, y, "o", ms=4, alpha=0.8)
            ax.set_xlabel("reference rank (1 = worst)")
            ax.set_ylabel(f"{name} rank (mean of seeds)")
            stat = stats["zero_cost"][name].get("spearman", {})
        for i, arch in enumerate(archs):
            if arch in references:
                ax.annotate(arch, (x[i], y[i]), fontsize=7, xytext=(4, -8), textcoords="offset points")
        value = (stat or {}).get("value")
        ax.set_title(f"{name}: Spearman {'n/a' if value is None else f'{value:.2f}'} ({len(archs)} archs)",
                     fontsize=10)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
