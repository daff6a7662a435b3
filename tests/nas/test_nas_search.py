"""The search loop end to end with the real parts: smoke run, resume after kill -9, sweeps, config errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nas.search import Search, SearchError
from nas.store import RunStore
from tests.conftest import ROOT

CONFIGS = ROOT / "configs"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="Debian package dataset-fashion-mnist not installed")

# The cheapest real search: no latency conversion (the MACs reward), a few hundred images, tiny space.
FAST = ["+experiment=smoke", "reward=macs", "measure_latency=false", "tensorboard=false", "progress=false"]


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("search", overrides=list(overrides), return_hydra_config=False)


def search_cmd(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "nas.search", *FAST, f"run_dir={run_dir}", *overrides]


def run_search(run_dir: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
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
def test_every_experiment_composes_and_instantiates(experiment):
    from hydra.utils import instantiate

    from search_spaces import SearchSpace

    cfg = config(f"+experiment={experiment}")
    space = SearchSpace.from_config(cfg.search_space)
    controller = instantiate(cfg.controller, num_choices=space.num_choices, seed=cfg.seed)
    assert len(controller.sample(2).tokens) == 2
    reward = instantiate(cfg.reward)
    assert reward(accuracy=None) == cfg.reward.reward_for_invalid
    assert cfg.budget >= cfg.batch_size >= 1


@needs_fmnist
@pytest.mark.slow
def test_smoke_search_with_real_latency(tmp_path):
    cfg = config("+experiment=smoke", f"run_dir={tmp_path}", "progress=false")
    summary = Search(cfg, tmp_path).run()
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
        assert c.result["latency"]["runs"] >= 1 and Path(c.result["latency"]["tflite_path"]).exists()
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
    result = run_search(reference, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = committed(reference)
    assert len(expected) == 12

    run_dir = tmp_path / "killed"
    audit = tmp_path / "audit.jsonl"
    kills = 0
    # kill at different moments: early (before any commit), after 2 children, after 5, after 8
    for wait_for in (0, 2, 5, 8):
        proc = subprocess.Popen(search_cmd(run_dir, *args, f"audit_log={audit}"), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if wait_for == 0 and audit.exists():
                break
            if wait_for and stored_children(run_dir) >= wait_for:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    result = run_search(run_dir, *args, f"audit_log={audit}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert kills >= 2
    assert committed(run_dir) == expected  # same children, same order, same rewards as the uninterrupted run
    evaluations = [json.loads(line)["arch"] for line in audit.read_text().splitlines()]
    unique = {row[2] for row in expected}
    assert set(evaluations) == unique
    # at most the one child in flight at each kill is evaluated again
    assert len(evaluations) - len(unique) <= kills


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
def test_resuming_with_a_different_search_is_refused(tmp_path):
    result = run_search(tmp_path, "budget=2")
    assert result.returncode == 0, result.stderr[-2000:]
    before = committed(tmp_path)
    result = run_search(tmp_path, "budget=2", "controller=random")
    assert result.returncode == 2
    assert "different search (controller changed)" in result.stderr
    assert committed(tmp_path) == before


@needs_fmnist
def test_failing_children_get_the_invalid_reward_and_the_search_goes_on(tmp_path):
    result = run_search(tmp_path, "trainer.lr=1e30", "budget=2")
    assert result.returncode == 0, result.stderr[-2000:]
    with RunStore(tmp_path, readonly=True) as store:
        kids = store.children(committed_only=True)
    assert len(kids) == 2
    assert all(c.status == "failed" and "loss is" in c.error and c.reward == 0.0 for c in kids)


@needs_fmnist
def test_missing_phone_stops_the_search_with_one_line(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    adb = fake_bin / "adb"
    adb.write_text("#!/bin/sh\n[ \"$1\" = devices ] && echo 'List of devices attached' && exit 0\nexit 1\n")
    adb.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    cmd = search_cmd(tmp_path, "latency=adb", "measure_latency=true", "reward=soft", "dataset.images_per_class=20")
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: latency: no Android device attached")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("budget=0", "budget must be a positive integer"),
        ("batch_size=-3", "batch_size must be a positive integer"),
        ("deploy.resolution=0", "deploy.resolution must be a positive integer"),
    ],
)
def test_bad_config_values_are_one_line_errors(tmp_path, override, message):
    result = run_search(tmp_path, override)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1]


def test_missing_dataset_is_a_clear_error(tmp_path):
    cfg = config(*FAST, f"run_dir={tmp_path}", "dataset=imagenet_subset", f"dataset.root={tmp_path / 'no_imagenet'}")
    with pytest.raises(SearchError, match="no_imagenet"):
        Search(cfg, tmp_path).run()


def _children_of(pid: int) -> set[int]:
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
    cmd = [sys.executable, "-m", "nas.search", "+experiment=smoke", f"run_dir={tmp_path}", "tensorboard=false",
           "progress=false", "budget=40", f"latency_cache={tmp_path / 'latency.sqlite'}"]  # really converts
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None and not workers:
            if stored_children(tmp_path) >= 1:
                workers = _children_of(proc.pid)  # a child was timed: the workers are up
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert workers, "the search finished or failed before a child was timed"
    deadline = time.time() + 60
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.2)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
