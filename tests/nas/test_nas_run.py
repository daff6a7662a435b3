"""From config to run: every problem found before anything is written, one writer per run, budgets, identity,
damaged stores, the command line's one-line errors and clean interrupts.

Most searches here use ``evaluator=synthetic`` (no training, no conversion): the machinery under test is the same.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from mnas_common.paths import config_dir
from nas.components import ConfigError
from nas.run import run_search
from nas.store import SCHEMA_VERSION, RunStore, StoreError
from tests.conftest import ROOT, message_lines

FAST = ["+experiment=smoke", "evaluator=synthetic", "logger=[events]", "pareto.enabled=false"]


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose("search", overrides=[*FAST, *overrides])


def search(run_dir: Path, *overrides: str) -> dict:
    return run_search(config(*overrides), run_dir)


def cli(run_dir: Path, *overrides: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nas.search", *FAST, f"run_dir={run_dir}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def committed(run_dir: Path) -> list[tuple]:
    with RunStore(run_dir, readonly=True) as store:
        return [(c.step, c.idx, c.arch, c.reward) for c in store.children(committed_only=True)]


@pytest.mark.parametrize("override", ["trainer.lr=nan", "trainer.epochs=0", "dataset.images_per_class=-1",
                                      "+dataset.foo=1", "+trainer.foo=1", "budget=0", "measure_references=[nope]",
                                      "deploy.resolution=0", "evaluator.failure_rate=2", "+evaluator.foo=1",
                                      "steady_state=true", "pareto.export_top=-1", "pareto.enabled=maybe",
                                      "measure_references=mnasnet_a1",
                                      # a dry run (evaluator=synthetic) never looked at the latency config
                                      "+latency.num_run=3", "latency.num_runs=-3",
                                      # float32 logits overflow: a torch.multinomial traceback at the first sample
                                      "controller.init_range=1e38", "controller.lr=1e38"])
def test_a_rejected_config_writes_nothing_and_the_corrected_one_runs(tmp_path, override):
    with pytest.raises(ConfigError) as info:
        search(tmp_path, override)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run.sqlite").exists()
    assert search(tmp_path)["children"] == 4


def test_a_reward_beyond_what_the_controller_can_take_is_one_error_line(tmp_path):
    """alpha -50 with a target far above the children's latency was an OverflowError traceback mid-search."""
    line = one_error_line(cli(tmp_path, "reward.alpha=-50", "target_ms=1e9"))
    assert re.fullmatch(r"error: reward 'soft': \(latency_ms \S+ / target_ms 1e\+09\) \*\* alpha -50 = inf, beyond "
                        r"1e\+06: .*, or alpha nearer 0", line), line


def test_a_policy_that_diverges_mid_search_stops_it_by_name_and_keeps_what_was_committed(tmp_path, monkeypatch):
    """An update that leaves NaN parameters: the next sample was torch.multinomial's traceback, naming no cause
    (nas.search prints PolicyDiverged as one error line)."""
    from controllers.base import PolicyDiverged
    from controllers.lstm import LSTMController

    step = LSTMController._step

    def blow_up(self, loss):
        norm = step(self, loss)
        with torch.no_grad():
            self.policy.head_bias.fill_(float("nan"))
        return norm

    monkeypatch.setattr(LSTMController, "_step", blow_up)
    with pytest.raises(PolicyDiverged, match="controller policy diverged: the logits of decision 0 are not finite"):
        search(tmp_path)
    assert len(committed(tmp_path)) == 2  # the first step's children, placed before its update


def test_a_dry_run_of_a_phone_config_checks_its_fields_but_needs_no_phone(tmp_path):
    assert search(tmp_path / "ok", "latency=adb", "latency.serial=S1")["children"] == 4
    with pytest.raises(ConfigError, match=r"latency.cpu_mask must be a hex CPU mask such as f0, got 'xyz'"):
        search(tmp_path / "bad", "latency=adb", "latency.cpu_mask=xyz")


def test_every_problem_is_named_in_one_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        search(tmp_path, "trainer.lr=-1", "dataset.val_per_class=0", "batch_size=0", "+deploy.size=1")
    message = str(info.value)
    for part in ("trainer.lr", "dataset.val_per_class", "batch_size", "deploy field 'size'"):
        assert part in message


def test_missing_dataset_and_missing_phone_are_reported_together(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    adb = fake_bin / "adb"
    adb.write_text("#!/bin/sh\n[ \"$1\" = devices ] && echo 'List of devices attached' && exit 0\nexit 1\n")
    adb.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "IMAGENET_ROOT": str(tmp_path / "no_imagenet")}
    result = subprocess.run([sys.executable, "-m", "nas.search", "+experiment=mnas_pixel1", f"run_dir={tmp_path / 'r'}",
                             "latency.benchmark_binary=/bin/true"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=env)
    line = one_error_line(result)
    assert "no_imagenet" in line and "no Android device attached" in line
    assert not (tmp_path / "r" / "run.sqlite").exists()


def test_a_missing_training_gpu_fails_fast(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="trainer.device=cuda but this machine has no CUDA GPU"):
        search(tmp_path, "evaluator=local", "trainer.device=cuda")


def test_resuming_with_a_different_search_is_refused_and_changes_nothing(tmp_path):
    search(tmp_path, "budget=2")
    before = committed(tmp_path)
    with pytest.raises(StoreError, match=r"different search \(controller changed\)"):
        search(tmp_path, "budget=2", "controller=random")
    assert committed(tmp_path) == before


def test_resuming_with_other_latency_settings_is_refused_where_they_change_the_results(tmp_path):
    """A child timed in 5 runs and one timed in 20, on another device or predicted, were mixed in one front."""
    search(tmp_path, "budget=2")
    before = committed(tmp_path)
    for overrides, named in ((["latency.num_runs=20", "latency.threads=2"], "latency.num_runs, latency.threads"),
                             (["latency.mode=predict"], "latency.mode"), (["measure_latency=false", "reward=accuracy"],
                                                                          "measure_latency")):
        with pytest.raises(StoreError, match=rf"different search \(.*{named} changed\)"):
            search(tmp_path, "budget=4", *overrides)
        assert committed(tmp_path) == before
    assert search(tmp_path, "budget=4", "latency.workers=1", "latency.task_timeout_s=60")["children"] == 4


def test_synthetic_children_never_join_a_trained_run(tmp_path):
    """The README's dry run (evaluator=synthetic) on a trained run's run_dir was accepted: closed-form children were
    committed beside trained ones and passed for measured ones in the front. Local and Ray may still be swapped."""
    search(tmp_path, "budget=2")
    before = committed(tmp_path)
    with pytest.raises(StoreError, match=r"different search \(evaluator \(synthetic children, now trained\) changed"):
        search(tmp_path, "budget=4", "evaluator=local")
    assert committed(tmp_path) == before
    with RunStore(tmp_path) as store:  # a store from before the key: judged by the evaluator it was created with
        store.set_metas({"identity": {k: v for k, v in store.get_meta("identity").items() if k != "evaluator"}})
    with pytest.raises(StoreError, match=r"evaluator \(synthetic children, now trained\) changed"):
        search(tmp_path, "budget=4", "evaluator=local")
    assert search(tmp_path, "budget=4")["children"] == 4
    from nas.run import identity

    local, ray = (identity(config(f"evaluator={name}")) for name in ("local", "ray"))
    assert local == ray and local["evaluator"] == "trained"
    assert identity(config())["evaluator"] == "synthetic"


def test_resuming_with_evaluator_settings_or_threads_that_change_the_results_is_refused(tmp_path, one_thread):
    """Which children fail (the synthetic failure_rate, the memory limit), what is stored with them (scores) and how
    floats round (torch threads: nas.fidelity keys an evaluation by them) were not part of the run's identity: a
    resume with other values mixed two searches in one store. How many run at once is not."""
    search(tmp_path, "budget=2")
    before = committed(tmp_path)
    for overrides, named in ((["evaluator.failure_rate=0.5"], "evaluator.failure_rate"), (["threads=2"], "threads")):
        with pytest.raises(StoreError, match=rf"different search \({named} changed\)"):
            search(tmp_path, "budget=4", *overrides)
        assert committed(tmp_path) == before
    assert search(tmp_path, "budget=4", "evaluator.capacity=2", "evaluator.seconds=0.001")["children"] == 4
    from nas.run import identity

    with RunStore(tmp_path) as store:  # as a trained run (evaluator=local) would have stored it
        store.set_metas({"identity": identity(config("budget=2", "evaluator=local"))})
    before = committed(tmp_path)
    with pytest.raises(StoreError, match=r"different search \(evaluator.max_child_memory_gb, evaluator.scores "
                                         r"changed\)"):
        search(tmp_path, "budget=6", "evaluator=local", "evaluator.max_child_memory_gb=4", "evaluator.scores=[synflow]")
    assert committed(tmp_path) == before


def test_a_store_from_before_latency_was_part_of_the_identity_resumes(tmp_path):
    search(tmp_path, "budget=2")
    with RunStore(tmp_path) as store:
        old = {k: v for k, v in store.get_meta("identity").items()
               if k not in ("latency", "steady_state", "evaluator", "threads", "evaluator_settings")}
        store.set_metas({"identity": old})
    # latency was not compared then (its config's latency is not taken over: measure_latency decided whether it
    # counted); the evaluator's failure_rate its config held is (see the test below)
    assert search(tmp_path, "budget=4", "latency.num_runs=20")["children"] == 4


def as_schema_2(run_dir: Path) -> None:
    """The run's store as schema 2 left it: no latency_source columns, no state hash, no triggers."""
    conn = sqlite3.connect(run_dir / "run.sqlite")
    try:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        for column in ("latency_source", "latency_predicted_ms", "latency_prediction_error"):
            conn.execute(f"ALTER TABLE children DROP COLUMN {column}")
        conn.execute("ALTER TABLE steps DROP COLUMN state_sha256")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        conn.commit()
    finally:
        conn.close()  # the last connection: the WAL is checkpointed into the file, which is the whole store


def test_an_old_store_a_search_refuses_is_not_migrated(tmp_path):
    """The store was migrated when it was opened, before the search checked it: an older store refused for another
    seed or a smaller budget had the new schema by then, though the refusal said it was not modified."""
    search(tmp_path, "budget=2")
    as_schema_2(tmp_path)
    before = (tmp_path / "run.sqlite").read_bytes()
    for overrides, message in ((["budget=4", "seed=1"], r"different search \(seed changed\)"),
                               (["budget=1"], "budget=1 is below the 2 children")):
        with pytest.raises(StoreError, match=message):
            search(tmp_path, *overrides)
        assert (tmp_path / "run.sqlite").read_bytes() == before
    assert search(tmp_path, "budget=4")["children"] == 4  # resumed: migrated
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert "latency_source" in {r[1] for r in conn.execute("PRAGMA table_info(children)")}
        assert conn.execute("SELECT COUNT(*) FROM steps WHERE state_sha256 IS NULL").fetchone()[0] == 1  # the old one
    assert len(committed(tmp_path)) == 4


def test_a_failed_pareto_export_does_not_fail_a_finished_search(tmp_path, caplog):
    (tmp_path / "pareto").write_text("a file where the export's directory goes")
    summary = search(tmp_path, "budget=2", "pareto.enabled=true")
    assert summary["children"] == 2
    assert "Pareto export" in caplog.text and "python -m nas.pareto" in caplog.text


def test_a_model_the_end_of_search_export_skips_is_logged(tmp_path, caplog, monkeypatch):
    """Said only in summary.md and architectures.json: a user watching the search saw nothing."""
    from latency.service import LatencyService

    def mismatch(self, arch, *args, **kwargs):
        raise RuntimeError(f"cannot export {arch}: conversion mismatch: max abs error 1e-07 > 1e-15")

    monkeypatch.setattr(LatencyService, "export", mismatch)
    search(tmp_path, "budget=2", "pareto.enabled=true", "pareto.export_top=1")
    assert "top1 " in caplog.text and "not exported: conversion mismatch" in caplog.text


def test_budget_is_exact_and_never_below_what_the_store_holds(tmp_path):
    assert search(tmp_path, "budget=3", "batch_size=2")["children"] == 3
    assert len(committed(tmp_path)) == 3
    with pytest.raises(StoreError, match="budget=2 is below the 3 children"):
        search(tmp_path, "budget=2", "batch_size=2")
    with RunStore(tmp_path, readonly=True) as store:
        assert store.get_meta("budget") == 3
    assert search(tmp_path, "budget=6", "batch_size=2")["children"] == 6  # a larger budget extends the run


def test_a_damaged_controller_state_is_reported_before_anything_is_written(tmp_path):
    search(tmp_path, "budget=4")
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:
        conn.execute("DROP TRIGGER steps_are_final")
        blob = bytearray(conn.execute("SELECT controller_state FROM steps WHERE step = 1").fetchone()[0])
        blob[len(blob) // 3] ^= 0x55
        conn.execute("UPDATE steps SET controller_state = ? WHERE step = 1", (bytes(blob),))
        meta = conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
    with pytest.raises(StoreError, match="controller state of step 1 is damaged"):
        search(tmp_path, "budget=8")
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:
        assert conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall() == meta  # budget not rewritten


@pytest.mark.parametrize("value", ["[1]", '"x"'])
def test_a_damaged_identity_is_one_store_error_not_a_traceback(tmp_path, value):
    """A list was {**stored}'s TypeError, a string stored.get's AttributeError: tracebacks, exit 1."""
    search(tmp_path, "budget=2")
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'identity'", (value,))
    with pytest.raises(StoreError, match=r"meta 'identity' is damaged \(a JSON (list|str), not an object\); it was "
                                         "not modified"):
        search(tmp_path, "budget=4")


def test_an_oversized_child_is_a_failed_child_not_an_out_of_memory_kill(tmp_path):
    from nas.evaluator import size_guard

    deploy = {"resolution": 224, "channels": 3, "num_classes": 1000}
    profile, reason = size_guard("ir_r1_k3_s1_e6_c100000", deploy=deploy, data_shape=(28, 1, 10), batch_size=64,
                                 optimizer_slots=1, limit_gb=8)
    assert profile.params == 148_693_128 and "too large" in reason and "max_child_memory_gb" in reason
    assert size_guard("mnasnet_a1", deploy=deploy, data_shape=(28, 1, 10), batch_size=64, optimizer_slots=1,
                      limit_gb=8)[1] is None


# ---------------------------------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize(("override", "message"), [
    ("controller=nope", "Could not find 'controller/nope'"),
    ("dataset=no_such_set", "Could not find 'dataset/no_such_set'"),
    ("foo=1", "Could not override 'foo'"),
    ("+budgte=100", "unknown config key 'budgte' (did you mean budget?)"),
    ("+deploy.size=3", "unknown config key 'deploy.size'"),
    ("evaluator=nope", "Could not find 'evaluator/nope'"),
    ("trainer.lr=nan", "trainer.lr must be a positive number"),
    (f"seed={2**64}", "error: seed must be an integer in [0, 2**64), got 18446744073709551616"),  # was torch's
    # aging evolution with a population no smaller than the budget was the random search, child for child
    ("controller=evolution", "controller.population_size 64 >= budget 4: aging evolution samples at random until"),
    # the search's seed replaced it without a word, though it entered the run's identity
    ("+controller.seed=5", "error: controller.seed: set by the search, not by the controller config; set the "
                           "top-level seed=N instead"),
    ("+controller.num_choices=[2,2]", "error: controller.num_choices: set by the search, not by the controller"),
    # a reward's message that starts with 'reward' but names no group got no 'reward:' prefix
    ("reward.reward_for_invalid=inf", "error: reward: reward_for_invalid must be a finite number, got inf"),
])
def test_bad_command_lines_are_one_error_line_with_exit_2(tmp_path, override, message):
    line = one_error_line(cli(tmp_path / "run", override))
    assert message in line
    assert "Config search path" not in line  # Hydra's providers, appended to a missing config: noise
    assert not (tmp_path / "run" / "run.sqlite").exists()


@pytest.mark.parametrize(("sweep", "message"), [
    ("budget=4,0,4", "sweep job budget=0: budget must be a positive integer, got 0"),
    ("controller=random,nope", "sweep job controller=nope: In 'search': Could not find 'controller/nope'"),
])
def test_every_job_of_a_sweep_is_checked_before_the_first_runs(tmp_path, sweep, message):
    """A bad value in a later job used to stop the sweep after the jobs before it had run (half an hour each)."""
    cmd = [sys.executable, "-m", "nas.search", "-m", *FAST, sweep, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    line = one_error_line(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300))
    assert message in line.replace("+experiment=smoke evaluator=synthetic logger=[events] pareto.enabled=false ", "")
    assert not (tmp_path / "sweep").exists()
    under_a_file = tmp_path / "file"
    under_a_file.write_text("")
    cmd = [sys.executable, "-m", "nas.search", "-m", *FAST, "seed=0,1", f"hydra.sweep.dir={under_a_file / 'x'}"]
    assert "hydra.sweep.dir" in one_error_line(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True))


def test_a_sweep_needs_multirun_and_an_experiments_own_sweep_is_checked_too(tmp_path):
    """Without -m, seed=0,1 passed the check and Hydra then refused it in many lines; an ablation experiment's own
    sweep (hydra.sweeper.params) was not checked at all: Hydra's multi-line error after multirun.yaml was written."""
    line = one_error_line(cli(tmp_path / "run", "seed=0,1"))
    assert "seed=0,1 is a sweep: add -m (--multirun)" in line
    cmd = [sys.executable, "-m", "nas.search", "-m", "+experiment=ablation_controllers", "evaluator=synthetic",
           "controller.epochs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    line = one_error_line(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300))
    assert "sweep job controller=lstm_reinforce seed=0 " in line and "Could not override 'controller.epochs'" in line
    assert not (tmp_path / "sweep").exists()


def _sweep_jobs(*argv: str) -> list[list[str]]:
    """The jobs nas.cli expands a command line into, composed as check_command_line does."""
    from hydra.core.global_hydra import GlobalHydra

    from nas.cli import _jobs

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return _jobs(list(argv), lambda o: compose("search", overrides=o, return_hydra_config=True),
                     GlobalHydra.instance().config_loader())


def test_sweep_jobs_are_the_ones_hydra_runs():
    """As Hydra's basic sweeper: an experiment's own sweep is read without the command line's sweeps (a sweep over
    two ablation experiments is two jobs, not the first experiment's eight crossed with both), glob() sweeps expand
    over the config group, and hydra.mode=MULTIRUN is a sweep like -m."""
    assert _sweep_jobs("-m", "+experiment=ablation_controllers,ablation_constraint") == [
        ["+experiment=ablation_controllers"], ["+experiment=ablation_constraint"]]
    jobs = _sweep_jobs("-m", "+experiment=ablation_controllers", "seed=5")
    assert len(jobs) == 4 and jobs[0] == ["controller=lstm_ppo", "seed=5", "+experiment=ablation_controllers"]
    assert [j[0] for j in _sweep_jobs("-m", "controller=glob(*)")] == [
        "controller=evolution", "controller=evolution_small", "controller=lstm_ppo", "controller=lstm_reinforce",
        "controller=random"]
    assert len(_sweep_jobs("hydra.mode=MULTIRUN", "seed=1,2")) == 2
    with pytest.raises(ConfigError, match="is a sweep"):
        _sweep_jobs("seed=1,2")


def test_an_interrupted_sweep_names_its_directory_to_resume(tmp_path):
    """'run the same command to resume' started a new sweep: its directory is named by the time it started."""
    proc = subprocess.Popen([sys.executable, "-m", "nas.search", "-m", *FAST, "seed=0,1", "budget=400",
                             "evaluator.seconds=0.05"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("multirun/*/*/0/run.sqlite")):
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    sweep, = tmp_path.glob("multirun/*/*")
    lines = message_lines(proc.stderr.read())
    assert proc.returncode == 130 and len(lines) == 1, lines
    assert lines[0].endswith(f"run the same command with hydra.sweep.dir={sweep.relative_to(tmp_path)} to resume")


def test_unusable_run_dir_and_logger_paths_are_one_error_line(tmp_path):
    for value in ("null", "", "5"):  # null was a TypeError traceback; '' ran in the current directory
        assert f"run_dir must be a directory path, got {value or repr('')}".replace("null", "None") \
            in one_error_line(cli(tmp_path / "run", f"run_dir={value}"))
    assert not list(ROOT.glob("run.sqlite"))
    for value in ("", "null", "true"):  # '' ran in runs/seed0 (runs/${name}/seed0), null in runs/None/seed0
        assert f"name must be a non-empty name for the run's directory, got {value!r}".replace(
            "'null'", "None").replace("'true'", "True") in one_error_line(cli(tmp_path / "run", f"name={value}"))
    assert not (tmp_path / "run").exists()
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in one_error_line(cli(tmp_path / "file" / "run"))
    line = one_error_line(cli(tmp_path / "run", f"logger.events.path={tmp_path / 'file' / 'events.jsonl'}"))
    assert f"cannot create {tmp_path / 'file' / 'events.jsonl'}" in line
    (tmp_path / "adir").mkdir()
    assert "is a directory" in one_error_line(cli(tmp_path / "run", f"logger.events.path={tmp_path / 'adir'}"))
    assert not (tmp_path / "run" / "run.sqlite").exists()


def test_an_event_log_on_a_device_and_a_full_disk(tmp_path):
    """The event log read its file whole at the start, for the steps it had logged: /dev/stdout (to follow the
    events) blocked on the terminal, or on the pipe here, and /dev/full never ended (the search grew to 24 GB until
    the OOM killer took it). A write that fails (a full disk) was a Hydra traceback; it is one line naming the file."""
    followed = cli(tmp_path / "out", "logger.events.path=/dev/stdout", timeout=120)
    assert followed.returncode == 0, followed.stderr[-2000:]
    events = [json.loads(line) for line in followed.stdout.splitlines()[:-1]]
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"
    line = one_error_line(cli(tmp_path / "full", "logger.events.path=/dev/full", timeout=120))
    assert line == (f"error: /dev/full: No space left on device; 0 children committed (0 steps) in {tmp_path / 'full'}; "
                    "free space and run the same command to resume")


@pytest.mark.parametrize("override, message", [
    ("logger.progress.refresh_s=fast", "logger.progress.refresh_s must be a number of seconds >= 0"),
    ("logger.progress.refresh_s=-1", "logger.progress.refresh_s must be a number of seconds >= 0"),
    ("logger.progress.enabled=2", "logger.progress.enabled must be true or false"),
    ("logger.events.path=null", "logger.events.path must be a file name or path"),
    ("logger.csv.path=null", "logger.csv.path must be a file name or path"),
    ("logger.tensorboard.log_dir=null", "logger.tensorboard.log_dir must be a file name or path"),
    ("logger.events.path=run.sqlite", "logger.events.path=run.sqlite is the run's own run.sqlite"),
    ("logger.csv.path=pareto/children.csv", "logger.csv.path=pareto/children.csv is the run's own pareto"),
    ("logger.tensorboard.log_dir=.hydra", "logger.tensorboard.log_dir=.hydra is the run's own .hydra"),
])
def test_bad_logger_settings_are_refused_before_the_run_is_written(tmp_path, override, message):
    """A bad refresh_s or a null path was a traceback (exit 1) once the store was written; a path onto the run's own
    store had the event log's lines appended into run.sqlite."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        search(tmp_path / "run", "logger=[progress,events,csv,tensorboard]", override)
    assert not (tmp_path / "run" / "run.sqlite").exists()


def test_a_second_search_on_the_same_run_dir_exits_2_naming_the_holder(tmp_path):
    first = subprocess.Popen([sys.executable, "-m", "nas.search", *FAST, f"run_dir={tmp_path}", "budget=400",
                              "evaluator.seconds=0.05"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "run.sqlite").exists():
            time.sleep(0.1)
        line = one_error_line(cli(tmp_path, "budget=400", "evaluator.seconds=0.05"))
        assert f"being written by another search (pid {first.pid}" in line
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    stderr = first.stderr.read()
    assert first.returncode == 130
    # Ctrl-C: one line, what was committed, how to resume; no traceback
    lines = message_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("interrupted (SIGINT): ") and "resume" in lines[0], stderr
    rows = committed(tmp_path)
    assert search(tmp_path, "budget=400")["children"] == 400  # resumes
    assert committed(tmp_path)[: len(rows)] == rows


def test_sigterm_stops_with_one_line_and_no_leaked_workers(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "nas.search", "+experiment=smoke", f"run_dir={tmp_path}",
                             "logger=[events]", "budget=40", f"latency.cache_path={tmp_path / 'latency.sqlite'}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    from tests.nas.test_nas_search import children_of, stored_children

    workers: set[int] = set()
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not workers:
        if stored_children(tmp_path) >= 1:
            workers = children_of(proc.pid)
        time.sleep(0.1)
    started = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert time.time() - started < 15
    stderr = proc.stderr.read()
    assert proc.returncode == 143, stderr
    lines = message_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("interrupted (SIGTERM): "), stderr
    assert "leaked" not in stderr and "Traceback" not in stderr
    deadline = time.time() + 5  # the workers were stopped; the resource tracker leaves when its pipe closes
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    assert workers and not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_a_signal_that_ray_re_raised_as_keyboard_interrupt_keeps_its_name_and_exit_code():
    """Ray turns the exception our handler raises during its blocking calls (ray.get while actors start) into a
    plain KeyboardInterrupt: the search printed a traceback and exited -2 instead of one line and 143."""
    from nas.cli import Interrupted, as_interrupted, interrupts

    def like_ray():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Interrupted:
            raise KeyboardInterrupt from None

    with pytest.raises(KeyboardInterrupt) as caught, interrupts():
        like_ray()
    assert type(caught.value) is KeyboardInterrupt
    stop = as_interrupted(caught.value)
    assert str(stop) == "SIGTERM" and stop.exit_code == 143
    assert as_interrupted(Interrupted(signal.SIGINT)).exit_code == 130


def test_a_refused_command_leaves_the_runs_hydra_record_as_it_was(tmp_path):
    """Hydra wrote .hydra/ before any check: a refused command (another controller) left a record saying the run
    was made with it."""
    assert cli(tmp_path, "budget=2").returncode == 0
    record = (tmp_path / ".hydra" / "config.yaml").read_text()
    assert "lstm_ppo" in record and "budget=2" in (tmp_path / ".hydra" / "overrides.yaml").read_text()
    assert "different search" in one_error_line(cli(tmp_path, "budget=2", "controller=random"))
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == record


def test_a_quoted_run_dir_under_home_is_a_run_in_the_home_directory(tmp_path):
    """run_dir='~/runs/x' (quoted, as Hydra needs) made a directory named ~ in the working directory."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT), "MNAS_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "nas.search", *FAST, "run_dir='~/runs/x'", "budget=2"]
    result = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (work / "~").exists() and len(committed(home / "runs" / "x")) == 2


class _Stored:
    """The meta a store holds, for the identity check alone."""

    def __init__(self, identity: dict):
        self.meta, self.path = {"identity": identity}, Path("run.sqlite")

    def get_meta(self, key, default=None):
        return self.meta.get(key, default)

    def num_committed_children(self) -> int:
        return 0


def test_the_threads_children_train_with_are_compared_on_resume_whichever_evaluator_trains_them():
    """evaluator=ray trains children with its actors' trainers.threads, not the search's threads: a resume with other
    trainers.threads mixed two roundings in one store unnoticed. Local and Ray may still be swapped where the children
    train with the same threads (threads for local, trainers.threads for ray)."""
    from mnas_common.config import to_plain
    from nas.run import _check_store, identity

    def ray(trainer_threads: int, *more: str):
        return config("evaluator=ray", "threads=2", f"evaluator.trainers.threads={trainer_threads}", *more)

    created = ray(2)
    assert identity(created)["training_threads"] == 2
    assert identity(config("evaluator=local", "threads=3"))["training_threads"] == 3
    assert identity(config())["training_threads"] is None  # synthetic: nothing is trained
    store = _Stored(identity(created))
    assert _check_store(store, ray(2, "evaluator.trainers.actors=4")) is False  # resumes
    assert _check_store(store, config("evaluator=local", "threads=2")) is False  # the same threads: may move
    with pytest.raises(StoreError, match=r"different search \(training threads \(2, now 1\) changed\)"):
        _check_store(store, ray(1))
    local = _Stored(identity(config("evaluator=local", "threads=2")))
    with pytest.raises(StoreError, match=r"different search \(training threads \(2, now 1\) changed\)"):
        _check_store(local, ray(1))
    # local on both sides: the search's threads are the training threads, named once
    with pytest.raises(StoreError, match=r"different search \(threads changed\)"):
        _check_store(local, config("evaluator=local", "threads=1"))
    # a store from before the key: compared on what its config held (trainers.threads), else on the rest
    older = _Stored({k: v for k, v in identity(created).items() if k != "training_threads"})
    older.meta["config"] = to_plain(created)
    assert _check_store(older, ray(2)) is False
    with pytest.raises(StoreError, match=r"different search \(training threads \(2, now 1\) changed\)"):
        _check_store(older, ray(1))
    held = {k: v for k, v in to_plain(created).items() if k != "threads"}
    held["evaluator"] = {k: v for k, v in held["evaluator"].items() if k != "trainers"}
    older.meta["config"] = held
    assert _check_store(older, ray(1)) is False


def test_the_phones_cooldown_is_part_of_the_identity_and_older_stores_without_it_resume():
    """latency.cooldown_s changes a phone's temperature and so its timings, but was not compared: a resume with
    another cooldown mixed two protocols in one run."""
    from nas.run import _check_store, identity

    cfg = config("latency=adb", "latency.cooldown_s=1.0", "measure_latency=true")
    mine = identity(cfg)
    assert mine["latency"]["cooldown_s"] == 1.0
    with pytest.raises(StoreError, match=r"different search \(latency.cooldown_s changed\)"):
        _check_store(_Stored({**mine, "latency": {**mine["latency"], "cooldown_s": 0.0}}), cfg)
    older = {k: v for k, v in mine["latency"].items() if k != "cooldown_s"}  # written before it was compared
    assert _check_store(_Stored({**mine, "latency": older}), cfg) is False


def test_a_store_written_before_the_later_identity_keys_is_compared_on_the_config_it_was_created_with():
    """threads, the evaluator's settings and the phone's cooldown joined the identity later: a store written before
    was never compared on them, though the config it was created with (its meta, written once) holds them."""
    from mnas_common.config import to_plain
    from nas.run import _check_store, identity

    settings = ["latency=adb", "measure_latency=true"]
    created = config(*settings, "latency.cooldown_s=1.0", "threads=2", "evaluator.failure_rate=0.1")
    mine = identity(created)
    older = {k: v for k, v in mine.items() if k not in ("threads", "evaluator_settings")}
    older["latency"] = {k: v for k, v in mine["latency"].items() if k != "cooldown_s"}
    store = _Stored(older)
    store.meta["config"] = to_plain(created)
    assert _check_store(store, created) is False
    for change, named in (("threads=1", "threads"), ("latency.cooldown_s=0", "latency.cooldown_s"),
                          ("evaluator.failure_rate=0.2", "evaluator.failure_rate")):
        cfg = config(*settings, "latency.cooldown_s=1.0", "threads=2", "evaluator.failure_rate=0.1", change)
        with pytest.raises(StoreError, match=rf"different search \({named} changed\)"):
            _check_store(store, cfg)
    # what its config did not hold (written by a version without the setting) stays unknown: compared on the rest
    store.meta["config"] = {k: v for k, v in to_plain(created).items() if k != "threads"}
    store.meta["config"]["evaluator"] = {k: v for k, v in store.meta["config"]["evaluator"].items()
                                         if k != "failure_rate"}
    assert _check_store(store, config(*settings, "latency.cooldown_s=1.0", "threads=1",
                                      "evaluator.failure_rate=0.2")) is False
    with pytest.raises(StoreError, match=r"different search \(latency.cooldown_s changed\)"):
        _check_store(store, config(*settings, "latency.cooldown_s=2.0"))
