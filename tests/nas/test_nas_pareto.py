"""Pareto front maths and the export of tables, plot and summary from run stores."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.front import ParetoFront, front_mask, hypervolume
from nas.pareto import main
from nas.record import ChildResult
from nas.store import RunStore


def brute_force_front(acc, lat):
    n = len(acc)
    mask = []
    for i in range(n):
        dominated = any(
            acc[j] >= acc[i] and lat[j] <= lat[i] and (acc[j] > acc[i] or lat[j] < lat[i]) for j in range(n)
        )
        duplicate_before = any(acc[j] == acc[i] and lat[j] == lat[i] for j in range(n) if j != i and
                               (lat[j], -acc[j], j) < (lat[i], -acc[i], i))
        mask.append(not dominated and not duplicate_before)
    return np.array(mask, dtype=bool)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(1, 20)), min_size=1, max_size=40))
def test_front_matches_brute_force(points):
    acc = [a / 20 for a, _ in points]
    lat = [float(b) for _, b in points]
    assert front_mask(acc, lat).tolist() == brute_force_front(acc, lat).tolist()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(1, 20)), min_size=1, max_size=40))
def test_incremental_front_matches_the_batch_front(points):
    front = ParetoFront()
    for i, (a, b) in enumerate(points):
        front.add(a / 20, float(b), key=i)
    mask = front_mask([a / 20 for a, _ in points], [float(b) for _, b in points])
    assert sorted(key for _, _, key in front.points()) == [i for i, m in enumerate(mask) if m]
    assert [lat for lat, _, _ in front.points()] == sorted(lat for lat, _, _ in front.points())


def test_hypervolume_by_hand():
    # front: (lat 1, acc 0.5), (lat 3, acc 0.8); dominated (lat 4, acc 0.6) adds nothing
    assert hypervolume([0.5, 0.8, 0.6], [1.0, 3.0, 4.0], latency_ref=5.0) == pytest.approx(4 * 0.5 + 2 * 0.3)
    with pytest.raises(ValueError, match="differ in length"):
        front_mask([0.1], [1.0, 2.0])


def make_run(path, points, *, label_overrides=None, references=None, scores=None, config=None):
    with RunStore(path) as store:
        store.set_meta("config", config or {"deploy": {"resolution": 32, "channels": 1, "num_classes": 10}})
        store.set_meta("overrides", label_overrides or [])
        for i, (arch, top1, lat, status) in enumerate(points):
            store.add_child(ChildResult(arch=arch, status=status, top1=top1, latency_ms=lat, macs=1000 * i,
                                        params=100 * i, step=0, idx=i, tokens=[i], scores=(scores or {}).get(i, {}),
                                        latency_source="predicted" if i == 1 else "measured"))
        store.commit_step(0, {i: p[1] or -1.0 for i, p in enumerate(points)}, {}, {})
        for name, (top1, lat) in (references or {}).items():
            store.add_reference(name, f"ref_{name}", {"status": "ok", "top1": top1, "latency_ms": lat})


POINTS = [
    ("ds_r1_k3_s1_c16", 0.70, 2.0, "ok"),
    ("ds_r1_k3_s1_c24", 0.80, 3.0, "ok"),
    ("ds_r1_k5_s1_c24", 0.75, 4.0, "ok"),  # dominated
    ("ds_r1_k5_s1_c32", None, None, "failed"),
    ("ds_r1_k3_s1_c16", 0.70, 2.0, "ok"),  # the same architecture sampled again
]


def test_a_second_evaluation_of_an_architecture_counts_as_the_search_counts_it(tmp_path):
    """reuse_evaluations=false evaluates an architecture again, and a GPU-trained child need not repeat its first
    result; the export kept the first evaluation only, so its front (2 points) was not the search's (1)."""
    run = tmp_path / "run"
    make_run(run, [("ds_r1_k3_s1_c16", 0.70, 2.0, "ok"), ("ds_r1_k3_s1_c24", 0.80, 3.0, "ok"),
                   ("ds_r1_k3_s1_c16", 0.85, 1.9, "ok")])
    engine = ParetoFront()
    for top1, lat in ((0.70, 2.0), (0.80, 3.0), (0.85, 1.9)):
        engine.add(top1, lat)
    assert main([str(run)]) == 0
    front = json.loads((run / "pareto" / "front.json").read_text())
    assert [(p["arch"], p["top1"]) for p in front] == [("ds_r1_k3_s1_c16", 0.85)]
    with open(run / "pareto" / "runs.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["front_size"]) == len(engine.points()) == 1


def test_export_of_one_run_writes_every_artifact(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run, POINTS, references={"mobilenet_v2": (0.82, 5.0)}, scores={0: {"synflow": 1.5}})
    assert main([str(run)]) == 0
    out = run / "pareto"
    for name in ("front.csv", "front.json", "children.csv", "runs.csv", "pareto.png", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    front = json.loads((out / "front.json").read_text())
    assert [p["arch"] for p in front] == ["ds_r1_k3_s1_c16", "ds_r1_k3_s1_c24"]
    with open(out / "front.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["latency_ms"] for r in rows] == ["2.0", "3.0"]
    assert [r["latency_source"] for r in rows] == ["measured", "predicted"]  # per point: measured or predicted
    with open(out / "children.csv") as f:
        kids = list(csv.DictReader(f))
    assert [k["score_synflow"] for k in kids] == ["1.5", "", "", "", ""] and "tokens" not in kids[0]
    with open(out / "runs.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["children"], row["failed"], row["unique"], row["front_size"]) == ("5", "1", "4", "2")
    summary = (out / "summary.md").read_text()
    assert "mobilenet_v2" in summary and "`ds_r1_k3_s1_c24`" in summary
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "front.csv" in capsys.readouterr().out


def test_sweep_directory_is_summarised_in_one_table(tmp_path):
    common = ["+experiment=ablation_constraint", "budget=2", "hydra.sweep.dir=x"]  # shared: not in the labels
    make_run(tmp_path / "sweep" / "0", POINTS[:2], label_overrides=[*common, "reward=soft"])
    make_run(tmp_path / "sweep" / "1", [("ds_r1_k3_s1_c8", 0.9, 1.0, "ok")],
             label_overrides=[*common, "reward=hard"])
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["reward=soft", "reward=hard"]
    front = json.loads((tmp_path / "out" / "front.json").read_text())
    assert [p["run"] for p in front] == ["reward=hard"]  # one child of run 1 dominates everything


def test_bad_paths_give_one_line_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no run store" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.sqlite").write_bytes(b"garbage" * 500)
    assert main([str(bad)]) == 2
    assert "unreadable" in capsys.readouterr().err
    zero = tmp_path / "zero"
    zero.mkdir()
    (zero / "run.sqlite").write_bytes(b"")
    assert main([str(zero)]) == 2
    assert "not a run store" in capsys.readouterr().err
    assert main([str(tmp_path / "empty"), "--export", "-1"]) == 2
    capsys.readouterr()
    good = tmp_path / "good"
    make_run(good, POINTS)
    (tmp_path / "file").write_text("x")
    assert main([str(good), "--out", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the export") and len(err.strip().splitlines()) == 1


def test_a_damaged_store_in_a_sweep_does_not_stop_the_report(tmp_path, capsys):
    make_run(tmp_path / "sweep" / "0", POINTS[:2], label_overrides=["seed=0"])
    make_run(tmp_path / "sweep" / "1", POINTS[2:], label_overrides=["seed=1"])
    damaged = tmp_path / "sweep" / "2"
    damaged.mkdir()
    (damaged / "run.sqlite").write_bytes(b"garbage" * 500)
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    assert "left out a damaged run" in capsys.readouterr().err
    with open(tmp_path / "out" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows[:2]] == ["seed=0", "seed=1"] and "unreadable" in rows[2]["error"]
    assert "Damaged run stores" in (tmp_path / "out" / "summary.md").read_text()
    assert (damaged / "run.sqlite").read_bytes() == b"garbage" * 500


def test_a_label_leaves_out_where_files_live_and_what_is_logged(tmp_path):
    from nas.pareto import find_runs, load_runs

    make_run(tmp_path / "run", POINTS[:2], label_overrides=[
        "+experiment=quickstart", "budget=16", f"run_dir={tmp_path / 'run'}", f"latency.cache_path={tmp_path}/l.sqlite",
        "logger=[]", "+logger=[csv]", "latency.workers=1", "hydra/launcher=basic", "pareto.export_top=3",
        f"dataset.root={tmp_path}", "evaluator=ray", "evaluator.address=auto", "latency.threads=2"])
    runs = load_runs(find_runs([tmp_path / "run"]))[0]
    # what decides the children stays (evaluator=ray: the Ray evaluator, not where its cluster is)
    assert runs[0]["label"] == "budget=16,evaluator=ray,latency.threads=2"


def test_runs_of_different_experiments_or_sweeps_are_told_apart(tmp_path):
    from nas.pareto import find_runs, incumbent_curves, load_runs

    for name, points in (("smoke", POINTS[:1]), ("quickstart", POINTS[1:2])):  # only the experiment differs
        make_run(tmp_path / "runs" / name / "seed0", points,
                 label_overrides=[f"+experiment={name}", f"run_dir=runs/{name}/seed0"])
    runs = load_runs(find_runs([tmp_path / "runs"]))[0]
    assert [r["label"] for r in runs] == ["+experiment=quickstart", "+experiment=smoke"]
    assert sorted(incumbent_curves(runs)) == ["+experiment=quickstart", "+experiment=smoke"]
    # the same sweep run twice: each sweep's seeds group, the two sweeps stay apart
    for sweep in ("2024-01-01", "2024-01-02"):
        for seed in (0, 1):
            make_run(tmp_path / "multirun" / sweep / str(seed), POINTS[:2],
                     label_overrides=["+experiment=ablation_constraint", "reward=soft", f"seed={seed}"])
    runs = load_runs(find_runs([tmp_path / "multirun"]))[0]
    assert [r["label"] for r in runs] == ["2024-01-01,seed=0", "2024-01-01,seed=1", "2024-01-02,seed=0",
                                          "2024-01-02,seed=1"]
    assert {k: len(v) for k, v in incumbent_curves(runs).items()} == {"2024-01-01": 2, "2024-01-02": 2}
    # every exported point names its run directory
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    front = json.loads((tmp_path / "out" / "front.json").read_text())
    assert {p["dir"] for p in front} == {str(tmp_path / "runs" / n / "seed0") for n in ("smoke", "quickstart")}
    for name in ("front.csv", "children.csv"):
        with open(tmp_path / "out" / name) as f:
            rows = list(csv.DictReader(f))
        assert {r["dir"] for r in rows} == {p["dir"] for p in front}, name


@pytest.mark.parametrize("table, column, value", [
    ("references_", "result", "{not json"), ("children", "result", "null"), ("steps", "stats", "[1]"),
    ("meta", "value", "[1]"), ("meta:overrides", "value", "[1]"),
    ("children", "result", "json_set(result, '$.top1', 'x')"), ("children", "result", "json_set(result, '$.scores', 'a')"),
    ("children", "result", "CAST(X'7B2261223AFF7D' AS TEXT)"),  # not UTF-8: SQLite cannot decode it
])
def test_a_damaged_row_in_a_sweep_does_not_stop_the_report(tmp_path, capsys, table, column, value):
    make_run(tmp_path / "sweep" / "0", POINTS[:2], label_overrides=["seed=0"])
    damaged = tmp_path / "sweep" / "1"
    make_run(damaged, POINTS[2:], label_overrides=["seed=1"], references={"mobilenet_v2": (0.82, 5.0)})
    with sqlite3.connect(damaged / "run.sqlite") as conn:
        conn.executescript("DROP TRIGGER children_committed_are_final; DROP TRIGGER steps_are_final")
        table, _, key = table.partition(":")
        where = f" WHERE key = '{key or 'config'}'" if table == "meta" else ""
        if value.startswith(("json_set", "CAST")):  # a field of the wrong type; text that is not UTF-8
            conn.execute(f"UPDATE {table} SET {column} = {value}")
        else:
            conn.execute(f"UPDATE {table} SET {column} = ?{where}", (value,))
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    assert f"left out a damaged run: run store {damaged / 'run.sqlite'}" in capsys.readouterr().err
    with open(tmp_path / "out" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["run"] == "seed=0" and rows[1]["dir"] == str(damaged) and "damaged" in rows[1]["error"]


def test_a_configuration_run_again_beside_its_seeds_stays_one_group_and_a_run_counts_once(tmp_path):
    from nas.pareto import find_runs, incumbent_curves, load_runs

    base = tmp_path / "runs" / "quickstart"
    for name, seed in (("seed0", 0), ("seed1", 1), ("seed0_again", 0)):
        make_run(base / name, POINTS[:2], label_overrides=["+experiment=quickstart", f"seed={seed}"])
    runs = load_runs(find_runs([base]))[0]
    assert [r["label"] for r in runs] == ["seed=0 (seed0)", "seed=0 (seed0_again)", "seed=1"]  # only the clash
    assert {k: len(v) for k, v in incumbent_curves(runs).items()} == {"search": 3}  # still seeds of one config
    # one run named twice (relative and absolute) is one run; a parent directory is never labelled "."
    assert find_runs([base / "seed1", (base / "seed1").resolve()]) == [base / "seed1"]
    make_run(tmp_path / "flat" / "seed0", POINTS[:1])
    make_run(tmp_path / "flat" / "old" / "seed0", POINTS[1:2])
    assert sorted(r["label"] for r in load_runs(find_runs([tmp_path / "flat"]))[0]) == ["flat", "old"]


def test_best_top1_counts_children_without_a_latency(tmp_path):
    make_run(tmp_path / "run", [("ds_r1_k3_s1_c16", 0.7, 2.0, "ok"), ("ds_r1_k3_s1_c24", 0.9, None, "ok"),
                                ("ds_r1_k5_s1_c24", 0.95, None, "failed")])
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "runs.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["best_top1"] == "0.9"
    assert "| 0.9000 |" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.parametrize("k", [0, -1])
def test_a_non_positive_export_top_exports_nothing(tmp_path, k):
    from nas.pareto import export_runs

    make_run(tmp_path / "run", POINTS)
    assert export_runs([tmp_path / "run"], tmp_path / "out", export_top=k)["exported"] == []
    assert not (tmp_path / "out" / "export").exists()


def test_plot_marks_front_references_and_target():
    from nas.pareto import scatter_figure

    points = [{"latency_ms": 1.0, "top1": 0.5}, {"latency_ms": 2.0, "top1": 0.7}, {"latency_ms": 3.0, "top1": 0.6}]
    refs = {"mobilenet_v2": {"status": "ok", "latency_ms": 2.5, "top1": 0.65},
            "mnasnet_b1": {"status": "failed", "latency_ms": None, "top1": None}}
    fig = scatter_figure(points, title="t", references=refs, target_ms=2.0)
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["mobilenet_v2 (reference)", "target T = 2 ms"]  # unmeasured references are left out
    step = ax.lines[0]
    assert list(step.get_xdata()) == [1.0, 2.0]  # the front: (3.0, 0.6) is dominated by (2.0, 0.7)


def test_incumbent_curves_group_seeds_and_are_running_maxima(tmp_path):
    from nas.pareto import find_runs, incumbent_curves, load_runs

    make_run(tmp_path / "s" / "0", POINTS, label_overrides=["controller=random", "seed=0"])
    make_run(tmp_path / "s" / "1", POINTS[::-1], label_overrides=["controller=random", "seed=1"])
    make_run(tmp_path / "s" / "2", POINTS[:2], label_overrides=["controller=lstm_ppo", "seed=0"])
    curves = incumbent_curves(load_runs(find_runs([tmp_path / "s"]))[0])
    assert sorted(curves) == ["controller=lstm_ppo", "controller=random"]
    # rewards are the top-1 values, -1.0 for the failed child, in sampling order
    assert [c.tolist() for c in curves["controller=random"]] == [[0.7, 0.8, 0.8, 0.8, 0.8],
                                                                  [0.7, 0.7, 0.75, 0.8, 0.8]]
    assert [c.tolist() for c in curves["controller=lstm_ppo"]] == [[0.7, 0.8]]
    assert main([str(tmp_path / "s"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "incumbent.png").stat().st_size > 0
    assert "incumbent.png" in (tmp_path / "out" / "summary.md").read_text()


def test_a_child_with_a_latency_but_no_accuracy_is_not_a_point(tmp_path):
    # status ok, latency measured, top1 missing: not a point of the accuracy-latency plane (ChildResult.measured)
    make_run(tmp_path / "run", [("ds_r1_k3_s1_c16", 0.7, 2.0, "ok"), ("ds_r1_k3_s1_c24", None, 1.0, "ok")])
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    front = json.loads((tmp_path / "out" / "front.json").read_text())
    assert [p["arch"] for p in front] == ["ds_r1_k3_s1_c16"]


def test_a_run_still_starting_is_left_out_and_changes_nothing_else(tmp_path, capsys):
    from nas.pareto import _shared_target, find_runs, load_runs

    common = ["+experiment=ablation_constraint", "budget=2"]
    for job, reward in (("0", "soft"), ("1", "hard")):
        make_run(tmp_path / "sweep" / job, POINTS[:2], label_overrides=[*common, f"reward={reward}"],
                 config={"deploy": {}, "reward": {"target_ms": 5.0}})
    RunStore(tmp_path / "sweep" / "2").close()  # a job just started: its store exists, its config is not written yet
    with RunStore(tmp_path / "engine") as store:  # a store the search engine wrote alone (its API): children, no config
        store.add_child(ChildResult(arch=TINY[0], status="ok", top1=0.7, latency_ms=1.0, step=0, idx=0, tokens=[0]))
        store.commit_step(0, {0: 0.7}, {}, {})
    assert [r["dir"] for r in load_runs([tmp_path / "engine"])[0]] == [tmp_path / "engine"]
    runs = load_runs(find_runs([tmp_path / "sweep"]))[0]
    assert [r["label"] for r in runs] == ["reward=soft", "reward=hard"] and _shared_target(runs) == 5.0
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert err == f"note: left out {tmp_path / 'sweep' / '2'}: starting, no children yet\n"
    assert "starting, no children yet" in (tmp_path / "out" / "summary.md").read_text()
    # only starting runs: nothing to report, one line
    assert main([str(tmp_path / "sweep" / "2")]) == 2
    starting = tmp_path / "sweep" / "2"
    assert capsys.readouterr().err == f"error: no run to report: {starting} is starting, no children yet\n"


# Export: real conversions of tiny networks at a small input (conversions are cached in MNAS_CACHE_DIR)
LATENCY = {"_target_": "latency.build_service", "runner": "host", "threads": 1, "workers": 1, "anchor": None}
DEPLOYED = {"deploy": {"resolution": 32, "channels": 1, "num_classes": 10}, "latency": LATENCY}
TINY = ["ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16", "ds_r1_k5_s1_c8-ir_r1_k3_s2_e6_c16"]


def test_children_without_a_latency_are_exported_by_reward(tmp_path):
    # an accuracy-only search (measure_latency=false, reward=accuracy) times nothing; converting needs no latency
    make_run(tmp_path / "run", [(TINY[0], 0.7, None, "ok"), (TINY[1], 0.8, None, "ok"),
                                (TINY[0], None, None, "failed")], config=DEPLOYED)
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--export", "3"]) == 0
    export = tmp_path / "out" / "export"
    assert [e["arch"] for e in json.loads((export / "architectures.json").read_text())] == [TINY[1], TINY[0]]
    assert (export / "top1" / "model.arch.txt").read_text() == TINY[1] + "\n"
    assert Path(json.loads((export / "architectures.json").read_text())[1]["tflite"]).stat().st_size > 0


def test_a_model_that_cannot_be_exported_is_skipped_with_its_reason(tmp_path, capsys):
    # the best child comes from a run whose conversions cannot pass its (impossible) tolerance: a conversion mismatch
    strict = {**DEPLOYED, "latency": {**LATENCY, "tolerance_abs": 1e-15, "tolerance_rel": 1e-15}}
    make_run(tmp_path / "sweep" / "0", [(TINY[1], 0.8, 2.0, "ok")], label_overrides=["strict"], config=strict)
    make_run(tmp_path / "sweep" / "1", [(TINY[0], 0.7, 1.0, "ok")], label_overrides=["default"], config=DEPLOYED)
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.md").write_text("an old report")
    assert main([str(tmp_path / "sweep"), "--out", str(out), "--export", "2"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "not exported" in line]
    assert len(warning) == 1
    assert f"top1 {TINY[1]} not exported: conversion mismatch" in warning[0]  # the architecture named once
    exported = json.loads((out / "export" / "architectures.json").read_text())
    assert [(e["rank"], e["arch"], "error" in e) for e in exported] == [(1, TINY[1], True), (2, TINY[0], False)]
    assert isinstance(exported[1]["max_abs_err"], float)  # was written as a string
    assert not (out / "export" / "top1").exists() and (out / "export" / "top2" / "model.tflite").stat().st_size > 0
    assert (out / "export" / "architectures.txt").read_text() == TINY[0] + "\n"
    summary = (out / "summary.md").read_text()
    assert f"`{TINY[1]}`: not exported: conversion mismatch" in summary and "| strict |" in summary


def test_export_again_replaces_the_earlier_export(tmp_path, monkeypatch):
    from latency.service import LatencyService

    make_run(tmp_path / "run", [(TINY[0], 0.7, 1.0, "ok"), (TINY[1], 0.8, 2.0, "ok")], config=DEPLOYED)
    abandoned = [tmp_path / "out" / f".export.{pid}.{kind}" for pid, kind in ((2**22 + 1, "new"), (2**22 + 2, "old"))]
    for path in abandoned:  # an export killed before its swap, by pids no process has: nothing removed them
        (path / "top1").mkdir(parents=True)
    for k in (2, 1):  # a smaller K second: no top2 may be left from the first
        assert main([str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--export", str(k)]) == 0
    listing = ["architectures.json", "architectures.txt", "top1"]
    assert sorted(p.name for p in (tmp_path / "out" / "export").iterdir()) == listing
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary directory left
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0  # no --export: the earlier one is kept,
    assert "`export/` is an earlier report's" in (tmp_path / "out" / "summary.md").read_text()  # and said to be

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LatencyService, "export", disk_full)  # an export that fails keeps the earlier one
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--export", "2"]) == 2
    assert sorted(p.name for p in (tmp_path / "out" / "export").iterdir()) == listing
    assert "`export/` is an earlier report's" in (tmp_path / "out" / "summary.md").read_text()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_the_incumbent_curve_counts_evaluated_children_as_the_engine_does(tmp_path):
    # reused copies (reuse_evaluations, the default) cost no evaluation: they were points of the curve, so its x-axis,
    # "children evaluated", overstated what a controller that resamples a lot had paid
    from controllers import build as build_controller
    from nas.engine import Search
    from nas.pareto import find_runs, incumbent_curves, incumbent_figure, load_runs
    from rewards import MnasNetReward
    from search_spaces import SearchSpace
    from tests.nas.fakes import FakeEvaluator

    space = SearchSpace(blocks=[{"channels": 16, "layers": 1, "stride": 1}], conv_ops=["ds", "mbconv3"],
                        kernel_sizes=[3, 5], se_ratios=[0.0], skip_ops=["identity"], filter_multipliers=[1.0],
                        layer_deltas=[0])  # 4 architectures: 12 children of a random search repeat some
    evaluator = FakeEvaluator()
    with RunStore(tmp_path / "run") as store:
        Search(space=space, controller=build_controller("random", space.num_choices, seed=0),
               reward=MnasNetReward(target_ms=5), evaluator=evaluator, store=store, budget=12, batch_size=4).run()
    with RunStore(tmp_path / "run", readonly=True) as store:
        kids = store.children(committed_only=True)
        evaluated = sum(step["children/evaluated"] for step in store.steps())
    assert len(kids) == 12 and evaluated == len(evaluator.evaluations) < 12  # some children were reused
    runs = load_runs(find_runs([tmp_path / "run"]))[0]
    (curve,) = incumbent_curves(runs)["search"]
    fresh = [c.reward for c in sorted(kids, key=lambda c: (c.step, c.idx)) if not c.reused]
    assert curve.tolist() == np.maximum.accumulate(fresh).tolist() and len(curve) == evaluated
    assert max(curve) == max(c.reward for c in kids)  # a copy repeats an earlier result: the best is the same
    line = incumbent_figure(runs).axes[0].lines[0]
    assert list(line.get_xdata()) == list(range(1, int(evaluated) + 1))


def test_runs_csv_and_summary_name_the_hypervolume_reference(tmp_path):
    # the reference latency depends on the runs in the report: one run's hypervolume alone and in a sweep differ
    from nas.front import hypervolume

    make_run(tmp_path / "sweep" / "0", POINTS, label_overrides=["seed=0"])
    make_run(tmp_path / "sweep" / "1", [("ds_r1_k3_s1_c8", 0.6, 10.0, "ok")], label_overrides=["seed=1"])
    tables = {}
    for name, path in (("alone", tmp_path / "sweep" / "0"), ("sweep", tmp_path / "sweep")):
        assert main([str(path), "--out", str(tmp_path / name)]) == 0
        with open(tmp_path / name / "runs.csv") as f:
            reader = csv.DictReader(f)
            tables[name] = list(reader)
        assert reader.fieldnames == ["run", "dir", "children", "failed", "unique", "best_reward", "best_top1",
                                     "min_latency_ms", "front_size", "hypervolume", "error", "hv_latency_ref_ms"]
    alone, sweep = tables["alone"][0], tables["sweep"][0]
    assert float(alone["hv_latency_ref_ms"]) == pytest.approx(4.0 * 1.1)  # the slowest child of this report
    assert [float(r["hv_latency_ref_ms"]) for r in tables["sweep"]] == pytest.approx([10.0 * 1.1] * 2)
    assert float(alone["hypervolume"]) != pytest.approx(float(sweep["hypervolume"]))
    acc, lat = [p[1] for p in POINTS if p[2]], [p[2] for p in POINTS if p[2]]
    for row in (alone, sweep):  # each number is reproduced from the reference written beside it
        assert float(row["hypervolume"]) == pytest.approx(hypervolume(acc, lat, float(row["hv_latency_ref_ms"])))
    assert "below latency 4.4 ms" in (tmp_path / "alone" / "summary.md").read_text()
    assert "below latency 11 ms" in (tmp_path / "sweep" / "summary.md").read_text()


LONG = "controller=lstm_ppo,reward=soft,reward.alpha=-0.07,reward.beta=-0.07,search_space=mnasnet,trainer.epochs=5"


def test_long_run_labels_are_wrapped_inside_the_figure():
    # a run with several overrides has a long label: on one line, title and legend were cropped at the figure's edge
    from nas.pareto import incumbent_figure, scatter_figure

    points = [{"latency_ms": 1.0, "top1": 0.5}, {"latency_ms": 2.0, "top1": 0.7}]
    runs = [{"label": f"{LONG},seed={s}", "group": LONG, "points": points,
             "children": [{"step": 0, "idx": i, "reward": r, "reused": False} for i, r in enumerate([0.5, 0.7])]}
            for s in (0, 1)]
    for fig in (scatter_figure(points, title=runs[0]["label"], runs=runs, target_ms=1.5),
                incumbent_figure(runs, title=runs[0]["label"])):
        ax = fig.axes[0]
        fig.canvas.draw()
        title, legend = ax.title.get_window_extent(), ax.get_legend().get_window_extent()
        assert fig.bbox.x0 <= title.x0 and title.x1 <= fig.bbox.x1  # the title within the figure
        assert ax.bbox.x0 <= legend.x0 and legend.x1 <= ax.bbox.x1  # the legend within the axes, not over the labels
        assert ax.title.get_text().replace("\n", "") == runs[0]["label"]  # wrapped, not shortened


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab=, ", max_size=80), st.integers(1, 30))
def test_wrap_bounds_every_line_and_only_breaks_lines(text, width):
    from nas.pareto import _wrap

    wrapped = _wrap(text, width)
    assert all(len(line) <= width for line in wrapped.split("\n"))
    assert wrapped.replace("\n", "").replace(" ", "") == text.replace(" ", "")  # spaces at a break may go
