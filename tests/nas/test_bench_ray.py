"""scripts/bench_ray.py without Ray: the ideal schedule, the projection, the steady-state rate and the CLI's plumbing."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_ray")


def test_ideal_makespan_overlaps_training_with_conversion_and_timing(bench):
    # conversion and timing (1 + 1 s) hide behind training (10 s): two trainers, two rounds of two children
    costs = bench.Fixed(train=10.0, convert=1.0, timing=1.0)
    assert bench.ideal_makespan(list("abcd"), costs, trainers=2, converters=1, devices=1) == pytest.approx(20.0)


def test_ideal_makespan_waits_for_the_bottleneck_converter(bench):
    # one converter at 15 s per child: a child holds its place until it is timed, so the converter sets the pace
    # (worked by hand: a 0-16, b 0-31, c 16-46, d 31-61)
    costs = bench.Fixed(train=10.0, convert=15.0, timing=1.0)
    assert bench.ideal_makespan(list("abcd"), costs, trainers=2, converters=1, devices=1) == pytest.approx(61.0)


def test_projection_of_one_batch_with_an_actor_per_child(bench):
    # 64 children, 64 of every kind of actor: one batch lasts one child's training (longer than conversion + timing)
    hours = bench.projection(1.0, children=64, batch=64, gpus=64, phones=64, converters=64)
    assert hours == pytest.approx(bench.ASSUMED["gpu_train_seconds"] / 3600)
    # two phones time the 64 children one after another: the phones are the bound, whatever the GPUs
    two_phones = bench.projection(1.0, children=64, batch=64, gpus=64, phones=2, converters=64)
    assert two_phones * 3600 >= 32 * bench.ASSUMED["phone_seconds"]


def test_steady_rate_leaves_out_the_start_up_and_reused_children(bench, tmp_path):
    events = [{"event": "start", "time": 0.0}]
    events += [{"event": "child", "time": t, "origin": "evaluated"} for t in (50.0, 60.0, 70.0, 80.0)]
    events += [{"event": "child", "time": 85.0, "origin": "reused"}, {"event": "step", "time": 86.0}]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert bench.steady_per_hour(path) == pytest.approx(3600 * 3 / 30)  # 3 children in the 30 s after the first
    path.write_text(json.dumps({"event": "child", "time": 5.0, "origin": "evaluated"}) + "\n")
    assert bench.steady_per_hour(path) is None  # one child: no rate


def test_cpu_seconds_counts_this_process_work(bench):
    before = bench.cpu_seconds()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    assert bench.cpu_seconds() - before >= 0.25  # whole-machine counter: at least this process's 0.3 s


def test_main_passes_overrides_to_both_searches_and_prints_the_json_keys(bench, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(tmp, name, budget, extra):
        calls.append((tmp, name, budget, list(extra)))
        per_hour = 100.0 if name == "local" else 150.0
        events = tmp_path / f"{name}.jsonl"
        events.write_text("".join(json.dumps({"event": "child", "time": t, "origin": "evaluated"}) + "\n"
                                  for t in (0.0, 36.0 if name == "local" else 24.0)))
        return {"wall_seconds": 60.0, "children": 2, "per_hour": per_hour, "cores_busy": 1.5,
                "costs": [{"train": 10.0, "convert": 2.0, "time": 1.0}],
                "steady_per_hour": bench.steady_per_hour(events)}

    monkeypatch.setattr(bench, "real_run", fake_run)
    monkeypatch.setattr(bench, "reexec_in_netns", lambda: None)
    monkeypatch.setattr(sys, "argv", ["bench_ray.py", "--budget", "2", "--skip-sim", "--json",
                                      "--costs", str(tmp_path / "costs.json"), "--keep", str(tmp_path / "kept"),
                                      "--override", "controller=evolution", "--override", "steady_state=true"])
    assert bench.main() == 0
    kept = tmp_path / "kept"  # --keep: the searches' run directories go there
    assert calls == [(kept, "local", 2, ["controller=evolution", "steady_state=true"]),
                     (kept, "ray", 2, ["controller=evolution", "steady_state=true", *bench.RAY])]
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["speedup"] == pytest.approx(1.5) and out["steady_speedup"] == pytest.approx(1.5)
    assert {"local_children_per_hour", "ray_children_per_hour", "local_cores_busy", "ray_cores_busy",
            "projected_hours"} <= set(out)
    assert "simulated_efficiency_128" not in out  # --skip-sim
    assert json.loads((tmp_path / "costs.json").read_text()) == [{"train": 10.0, "convert": 2.0, "time": 1.0}] * 2


def test_keep_refuses_a_directory_that_holds_a_run(bench, tmp_path, monkeypatch):
    (tmp_path / "ray").mkdir()  # a search there would resume, not start afresh
    monkeypatch.setattr(bench, "real_run", lambda *a: pytest.fail("no search may start"))
    monkeypatch.setattr(bench, "reexec_in_netns", lambda: None)
    monkeypatch.setattr(sys, "argv", ["bench_ray.py", "--skip-sim", "--keep", str(tmp_path)])
    with pytest.raises(SystemExit, match="already holds a local/ or ray/ run"):
        bench.main()


@pytest.mark.parametrize("argv, message", [
    (["--skip-real", "--costs", "COSTS", "--keep", "KEEP"], "--keep: only for part 1"),
    (["--skip-real", "--costs", "COSTS", "--override", "seed=1"], "--override: only for part 1"),
    (["--skip-real"], "--skip-real needs --costs"),
    (["--skip-real", "--costs", "MISSING"], "no such file"),
])
def test_flags_that_skip_real_would_ignore_are_refused(bench, tmp_path, monkeypatch, capsys, argv, message):
    (tmp_path / "costs.json").write_text("[]")
    paths = {"COSTS": str(tmp_path / "costs.json"), "KEEP": str(tmp_path / "kept"), "MISSING": str(tmp_path / "no")}
    monkeypatch.setattr(bench, "reexec_in_netns", lambda: pytest.fail("nothing may start"))
    monkeypatch.setattr(sys, "argv", ["bench_ray.py", *[paths.get(a, a) for a in argv]])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    # each was a traceback (ConfigError, ZeroDivisionError, int()'s ValueError), some after part 1's real searches
    (["--children", "64"], "--children must be > 64"),
    (["--children", "0"], "--children must be > 64"),
    (["--actors", "8,x"], "--actors must be distinct ints >= 1"),
    (["--actors", "8,,32"], "--actors must be distinct ints >= 1"),
    (["--actors", "0"], "--actors must be distinct ints >= 1"),
    (["--actors", "8,8"], "--actors must be distinct ints >= 1"),  # the second reused sim8/: the first's figures
    (["--sim-seconds", "0"], "--sim-seconds must be a number > 0"),
    (["--budget", "0"], "--budget must be >= 1"),
    (["--skip-real", "--costs", "EMPTY"], "expected a non-empty JSON list"),
    (["--skip-real", "--costs", "BROKEN"], "not readable JSON"),
    (["--skip-real", "--costs", "OBJECT"], "expected a non-empty JSON list"),
    (["--skip-real", "--costs", "NOTIME"], "entry 0 is not {train, convert, time} seconds"),
])
def test_bad_counts_and_costs_are_one_line_before_anything_starts(bench, tmp_path, monkeypatch, capsys, argv,
                                                                  message):
    files = {"EMPTY": "[]", "BROKEN": "[{", "OBJECT": "{}", "NOTIME": '[{"train": 1, "convert": 2}]'}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(bench, "reexec_in_netns", lambda: pytest.fail("nothing may start"))
    monkeypatch.setattr(sys, "argv", ["bench_ray.py", *[str(tmp_path / a) if a in files else a for a in argv]])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.count("\n") == 1, err


def test_keep_is_resolved_where_the_command_runs(bench, tmp_path, monkeypatch):
    """The searches run from the repository root: a relative --keep was two directories, the runs under the root
    and the emptiness check and the store reading under the current directory."""
    class Seen(Exception):
        pass

    def real_run(runs, *args):
        raise Seen(runs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "real_run", real_run)
    monkeypatch.setattr(bench, "reexec_in_netns", lambda: None)
    monkeypatch.setattr(sys, "argv", ["bench_ray.py", "--skip-sim", "--keep", "kept"])
    with pytest.raises(Seen) as seen:
        bench.main()
    assert seen.value.args[0] == tmp_path.resolve() / "kept"


def test_a_failed_search_names_its_last_error_line(bench, tmp_path, monkeypatch):
    import subprocess

    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="progress\nerror: budget must be positive\n")
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(SystemExit, match=r"^error: the local search failed: error: budget must be positive$"):
        bench.real_run(tmp_path, "local", 2, [])
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess([], -9, "", ""))
    with pytest.raises(SystemExit, match="failed: exit code -9$"):
        bench.real_run(tmp_path, "local", 2, [])


def test_skip_real_and_skip_sim_leave_the_projection_from_stored_costs(bench, tmp_path, monkeypatch, capsys):
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps([{"train": 10.0, "convert": c, "time": 1.0} for c in (2.0, 3.0, 4.0)]))
    monkeypatch.setattr(bench, "reexec_in_netns", lambda: None)
    monkeypatch.setattr(bench, "simulate_all", lambda *a: pytest.fail("--skip-sim: no simulated search"))
    monkeypatch.setattr(sys, "argv", ["bench_ray.py", "--skip-real", "--skip-sim", "--costs", str(costs), "--json"])
    assert bench.main() == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == {"projected_hours": round(bench.projection(3.0), 1)}  # the median conversion, nothing else
