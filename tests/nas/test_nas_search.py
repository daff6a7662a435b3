"""The search end to end with the real parts (local evaluator: real training, real TFLite latency): smoke run,
resume after kill -9, sweeps, the non-editable install, workers that die with the search."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nas.components import ConfigError
from nas.run import run_search
from nas.store import RunStore
from tests.conftest import ROOT, needs_fmnist

CONFIGS = ROOT / "configs"

# The cheapest real search: no latency conversion (the MACs reward), a few hundred images, tiny space.
FAST = ["+experiment=smoke", "reward=macs", "measure_latency=false", "logger=[events]"]


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("search", overrides=list(overrides), return_hydra_config=False)


def search_cmd(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "nas.search", *FAST, f"run_dir={run_dir}", *overrides]


def search(run_dir: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(search_cmd(run_dir, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def stored_children(run_dir: Path) -> int:
    """Children a running search has stored so far (read-only peek; 0 while the store does not exist yet)."""
    if not (run_dir / "run.sqlite").exists():
        return 0
    try:
        with sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM children").fetchone()[0]
    except sqlite3.Error:
        return 0


def committed(run_dir: Path) -> list[tuple]:
    with RunStore(run_dir, readonly=True) as store:
        return [(c.step, c.idx, c.arch, c.reward, c.top1) for c in store.children(committed_only=True)]


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_builds(experiment, tmp_path):
    from nas.components import build
    from nas.evaluator import Evaluator
    from nas.loggers import Logger

    cfg = config(f"+experiment={experiment}", f"dataset.root={tmp_path}")  # mnas_pixel1 needs an ImageNet root
    space = build("search_space", cfg.search_space)
    controller = build("controller", cfg.controller, num_choices=space.num_choices, seed=cfg.seed)
    assert len(controller.sample(2).tokens) == 2
    reward = build("reward", cfg.reward)
    assert reward(accuracy=None) == cfg.reward.reward_for_invalid
    assert cfg.budget >= cfg.batch_size >= 1
    trainer, dataset = build("trainer", cfg.trainer), build("dataset", cfg.dataset)
    evaluator = build("evaluator", cfg.evaluator, trainer=trainer, dataset=dataset, latency=None,
                      deploy=dict(cfg.deploy), seed=cfg.seed, threads=cfg.threads)
    assert isinstance(evaluator, Evaluator)
    assert all(isinstance(build(f"logger.{k}", v), Logger) for k, v in cfg.logger.items())


@needs_fmnist
@pytest.mark.slow
def test_smoke_search_with_real_latency(tmp_path):
    cfg = config("+experiment=smoke", f"run_dir={tmp_path}", "logger=[tensorboard,events,csv]")
    summary = run_search(cfg, tmp_path)
    assert summary["children"] == cfg.budget
    rows = committed(tmp_path)
    assert len(rows) == cfg.budget and all(r[3] is not None for r in rows)
    with RunStore(tmp_path, readonly=True) as store:
        kids = store.children(committed_only=True)
        assert store.last_step() == cfg.budget // cfg.batch_size - 1
        assert store.get_meta("environment")["torch"]
    ok = [c for c in kids if c.status == "ok"]
    assert ok, [c.error for c in kids]
    from nas.evaluator import child_seed

    assert all(c.seed == child_seed(cfg.seed, c.arch) for c in kids)  # each child's training seed is recorded
    for c in ok:
        assert 0 <= c.top1 <= 1 and c.latency_ms > 0 and c.params > 0 and c.macs > 0
        assert c.latency_source == "measured" and c.latency["runs"] >= 1 and c.train["steps"] >= 1
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    for name in ("front.csv", "front.json", "pareto.png", "summary.md"):
        assert (tmp_path / "pareto" / name).exists()
    # TensorBoard holds the per-step scalars the issue names
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"reward/mean", "accuracy/mean", "latency_ms/mean", "controller/entropy", "controller/loss"} <= tags
    assert events.Tags()["images"]  # the accuracy-latency scatter
    # deployable export of the best child: .onnx and .tflite
    from nas.pareto import main as pareto_main

    assert pareto_main([str(tmp_path), "--out", str(tmp_path / "export_out"), "--export", "1"]) == 0
    top = tmp_path / "export_out" / "export" / "top1"
    assert (top / "model.onnx").stat().st_size > 0 and (top / "model.tflite").stat().st_size > 0
    best = max(kids, key=lambda c: c.reward)
    assert (top / "model.arch.txt").read_text().strip() == best.arch


@needs_fmnist
@pytest.mark.slow
def test_resume_after_kill_9_loses_nothing_and_continues_the_same_sequence(tmp_path):
    args = ("budget=12", "batch_size=3")
    reference = tmp_path / "reference"
    result = search(reference, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = committed(reference)
    assert len(expected) == 12

    run_dir = tmp_path / "killed"
    audit = run_dir / "events.jsonl"
    kills = 0
    # kill at different moments: early (before any commit), after 2 children, after 5, after 8
    for wait_for in (0, 2, 5, 8):
        proc = subprocess.Popen(search_cmd(run_dir, *args), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if wait_for == 0 and audit.exists() and '"submit"' in audit.read_text():
                break
            if wait_for and stored_children(run_dir) >= wait_for:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    result = search(run_dir, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert kills >= 2
    assert committed(run_dir) == expected  # same children, same order, same rewards as the uninterrupted run
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    unique = {row[2] for row in expected}
    assert {e["arch"] for e in events if e["event"] == "submit"} == unique
    # a finished child is never evaluated again: no architecture has two evaluation results ...
    finished = Counter(e["arch"] for e in events if e["event"] == "child" and e["origin"] == "evaluated")
    assert set(finished.values()) == {1}
    # ... and one without an evaluation line was evaluated by a killed search: the kill came in the instant between
    # its commit to the store and its audit line (this test kills as soon as it sees a commit); the resumed search
    # placed it from the store ("stored") without evaluating it
    restored = {e["arch"] for e in events if e["event"] == "child" and e["origin"] == "stored"}
    assert unique - set(finished) <= restored
    # ... and what was handed out again is at most what was in flight (one batch) at each kill
    submits = [e["arch"] for e in events if e["event"] == "submit"]
    assert len(submits) - len(unique) <= kills * 3


@needs_fmnist
@pytest.mark.slow
def test_two_run_sweep_and_its_pareto_summary(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "nas.search", "-m", *FAST, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.parent.name for p in sweep.rglob("run.sqlite")) == ["0", "1"]
    result = subprocess.run([sys.executable, "-m", "nas.pareto", str(sweep), "--out", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = (tmp_path / "out" / "runs.csv").read_text().splitlines()
    assert len(runs) == 3 and "seed=0" in runs[1] and "seed=1" in runs[2]


@needs_fmnist
def test_failing_children_get_the_invalid_reward_and_the_search_goes_on(tmp_path):
    result = search(tmp_path, "trainer.lr=1e30", "budget=2")
    assert result.returncode == 0, result.stderr[-2000:]
    with RunStore(tmp_path, readonly=True) as store:
        kids = store.children(committed_only=True)
    assert len(kids) == 2
    assert all(c.status == "failed" and "loss is" in c.error and c.reward == 0.0 for c in kids)


def test_missing_dataset_is_a_clear_error(tmp_path):
    cfg = config(*FAST, f"run_dir={tmp_path}", "dataset=imagenet_subset", f"dataset.root={tmp_path / 'no_imagenet'}")
    with pytest.raises(ConfigError, match="no_imagenet"):
        run_search(cfg, tmp_path)


@needs_fmnist
def test_a_dataset_that_cannot_give_what_the_config_asks_is_one_line(tmp_path):
    result = search(tmp_path / "run", "dataset.classes=99")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("error: dataset fashion_mnist: dataset.classes = 99, but the "
                                                      "dataset has 10 classes")
    with RunStore(tmp_path / "run", readonly=True) as store:
        assert store.num_committed_children() == 0 and store.last_step() == -1


def children_of(pid: int) -> set[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


@needs_fmnist
@pytest.mark.slow
def test_latency_workers_do_not_outlive_a_killed_search(tmp_path):
    # Orphaned workers would keep a phone's lock file and the caller's terminal (or CI's output pipe) open.
    cmd = [sys.executable, "-m", "nas.search", "+experiment=smoke", f"run_dir={tmp_path}", "logger=[events]",
           "budget=40", f"latency.cache_path={tmp_path / 'latency.sqlite'}"]  # really converts
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None and not workers:
            if stored_children(tmp_path) >= 1:
                workers = children_of(proc.pid)  # a child was timed: the workers are up
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert workers, "the search finished or failed before a child was timed"
    deadline = time.time() + 60
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.2)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


@needs_fmnist
@pytest.mark.slow
def test_a_regular_install_runs_a_search_from_any_directory(tmp_path):
    # configs ship inside the installed package: no checkout, no editable install, another working directory
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True,
                   capture_output=True, timeout=300)
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), *map(str, wheels.glob("*.whl"))], check=True,
                   capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import nas, configs; print(nas.__file__, configs.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where)
    result = subprocess.run([sys.executable, "-m", "nas.search", *FAST, "run_dir=run", "budget=2"], cwd=elsewhere,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1])["children"] == 2
    assert (elsewhere / "run" / "run.sqlite").exists()
