"""latency.mode measure | predict | hybrid: the decisions (engine + fakes, milliseconds), the record, the export, the
events and the resume of a hybrid run; then the local evaluator for real (nothing converted in predict mode, the
missing-table error, hybrid measuring its entrants) on the host and on a phone through the adb double."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from nas.engine import Search
from nas.evaluator import LatencyModes, LocalEvaluator
from nas.front import ParetoFront
from nas.loggers import EventLog
from nas.pareto import export_runs
from nas.record import ChildResult, LatencySource, Status
from nas.store import RunStore
from rewards import MnasNetReward
from tests.conftest import ROOT, needs_fmnist
from tests.nas.fakes import FakeLatencyEvaluator, FakePredictor
from tests.nas.test_nas_engine import SPACE, run, states
from tests.nas.test_nas_local_evaluator import DATASET, DEPLOY, SMALL, TRAINER

REWARD = MnasNetReward(target_ms=5.0)
OTHER = "ds_r1_k3_s1_c8-ir_r1_k5_s2_e3_c16"


def children(run_dir) -> list[ChildResult]:
    with RunStore(run_dir, readonly=True) as store:
        return store.children(committed_only=True)


def fields(c: ChildResult) -> tuple:
    return (c.step, c.idx, c.arch, c.reward, c.top1, c.latency_ms, str(c.latency_source), c.latency_predicted_ms,
            c.latency_prediction_error, c.reused)


# ------------------------------------------------------------------------------------------------ the decisions
def test_modes_refuse_bad_settings_in_one_line():
    with pytest.raises(ValueError, match="latency.mode must be one of measure, predict, hybrid, got 'predikt'"):
        LatencyModes.split({"mode": "predikt", "runner": "host"})
    with pytest.raises(ValueError, match="latency.hybrid_top_k"):
        LatencyModes("hybrid", hybrid_top_k=0)
    modes, rest = LatencyModes.split({"runner": "host", "mode": "hybrid", "hybrid_top_k": 3, "num_runs": 5})
    assert (modes.mode, modes.top_k) == ("hybrid", 3) and rest == {"runner": "host", "num_runs": 5}


def test_predict_mode_measures_nothing_and_says_so_per_child(tmp_path):
    evaluator = FakeLatencyEvaluator("predict")
    run(tmp_path, evaluator, budget=12)
    rows = children(tmp_path)
    assert evaluator.measured == [] and len(rows) == 12
    for c in rows:
        assert c.latency_source is LatencySource.PREDICTED and c.latency_ms == c.latency_predicted_ms
        assert c.latency_prediction_error is None and c.latency["extra"]["source"] == "predicted"


def test_measure_mode_is_unchanged(tmp_path):
    evaluator = FakeLatencyEvaluator("measure")
    run(tmp_path, evaluator, budget=8)
    rows = children(tmp_path)
    assert len(evaluator.measured) == len({c.arch for c in rows})
    assert all(c.latency_source is LatencySource.MEASURED and c.latency_predicted_ms is None for c in rows)


def expected_reasons(rows: list[ChildResult], top_k: int) -> dict[tuple[int, int], str | None]:
    """Replay a run from its store, child by child in the order the engine placed them, with a front and a reward
    list of our own: which evaluated children hybrid must have measured, and why."""
    front, rewards, out = ParetoFront(), [], {}
    for c in rows:
        if c.reused:
            continue
        reason = None
        if c.ok and c.top1 is not None:
            if c.latency_predicted_ms is None:
                reason = "unpredictable"
            elif not front.dominated(c.top1, c.latency_predicted_ms):
                reason = "front"
            elif sum(r > REWARD(accuracy=c.top1, latency_ms=c.latency_predicted_ms) for r in rewards) < top_k:
                reason = "top_k"
        out[c.step, c.idx] = reason
        rewards.append(c.reward)
        if c.measured:
            front.add(c.top1, c.latency_ms)
    return out


def test_hybrid_measures_exactly_the_front_and_top_k_entrants(tmp_path):
    evaluator = FakeLatencyEvaluator("hybrid", top_k=6, fail={SPACE.decode([0] * len(SPACE.num_choices))})
    run(tmp_path, evaluator, budget=40, batch_size=4)
    rows = children(tmp_path)
    expected = expected_reasons(rows, top_k=6)
    measured = {k for k, why in expected.items() if why}
    assert 0 < len(measured) < len(expected)  # some of each: the test can fail both ways
    assert {why for why in expected.values()} >= {"front", "top_k", None}
    assert [f"{c.step}/{c.idx}" for c in rows if (c.step, c.idx) in measured] == \
        [f"{c.step}/{c.idx}" for c in rows if not c.reused and c.latency_source is LatencySource.MEASURED]
    assert evaluator.measured == [c.arch for c in rows if (c.step, c.idx) in measured]
    for c in rows:
        if c.reused:
            continue
        assert c.extra.get("latency_measured_because") == expected[c.step, c.idx]
        assert c.latency_predicted_ms == pytest.approx(FakePredictor().predict(c.arch).latency_ms)
        if (c.step, c.idx) in measured:  # measured: the truth, the prediction beside it, the predictor's live error
            assert c.latency_ms != c.latency_predicted_ms
            assert c.latency_prediction_error == pytest.approx((c.latency_predicted_ms - c.latency_ms) / c.latency_ms)
            assert c.latency_prediction_error == pytest.approx(FakePredictor.error(c.arch))
        else:
            assert c.latency_ms == c.latency_predicted_ms and c.latency_prediction_error is None


def test_an_unpredictable_child_is_measured_in_hybrid_and_failed_in_predict(tmp_path):
    arch = SPACE.decode([1] * len(SPACE.num_choices))
    hybrid = FakeLatencyEvaluator("hybrid", unknown={arch})
    hybrid.modes.bind(None)
    hybrid.submit(arch)
    child = hybrid.next_result()
    assert child.ok and child.latency_source is LatencySource.MEASURED and child.latency_predicted_ms is None
    assert child.extra["latency_measured_because"] == "unpredictable"
    predict = FakeLatencyEvaluator("predict", unknown={arch})
    predict.submit(arch)
    child = predict.next_result()
    assert child.status is Status.FAILED and child.error.startswith("latency: 1 layer(s) of this network are not")
    assert predict.measured == []


@pytest.mark.parametrize("stop_after", [1, 6, 13])
def test_a_resumed_hybrid_run_is_identical_to_an_uninterrupted_one(tmp_path, stop_after):
    reference = FakeLatencyEvaluator("hybrid", top_k=2)
    run(tmp_path / "reference", reference, budget=24)
    interrupted = FakeLatencyEvaluator("hybrid", top_k=2, stop_after=stop_after)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", interrupted, budget=24)
    resumed = FakeLatencyEvaluator("hybrid", top_k=2)
    run(tmp_path / "run", resumed, budget=24)
    assert [fields(c) for c in children(tmp_path / "run")] == [fields(c) for c in children(tmp_path / "reference")]
    for mine, theirs in zip(states(tmp_path / "run"), states(tmp_path / "reference")):
        assert all((mine[k] == theirs[k]).all() for k in theirs)
    # what was measured before the interruption is not measured again, and nothing else is measured
    assert sorted(interrupted.measured[:len(interrupted.evaluations)] + resumed.measured) == sorted(reference.measured)


def test_export_events_and_step_stats_say_measured_or_predicted(tmp_path):
    run_dir = tmp_path / "run"
    run(run_dir, FakeLatencyEvaluator("hybrid", top_k=2), budget=16, loggers=[EventLog()])
    rows = {(c.step, c.idx): c for c in children(run_dir)}
    export_runs([run_dir], tmp_path / "pareto")
    with open(tmp_path / "pareto" / "children.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 16
    for row in table:
        c = rows[int(row["step"]), int(row["idx"])]
        assert row["latency_source"] == str(c.latency_source)
        assert float(row["latency_predicted_ms"]) == pytest.approx(c.latency_predicted_ms)
        assert (row["latency_prediction_error"] == "") == (c.latency_prediction_error is None)
    front = json.loads((tmp_path / "pareto" / "front.json").read_text())
    assert front and all(p["latency_source"] in ("measured", "predicted") and p["latency_predicted_ms"] for p in front)
    summary = (tmp_path / "pareto" / "summary.md").read_text()
    assert "| latency (ms) | latency | predicted (ms) |" in summary
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    child_events = [e for e in events if e["event"] == "child"]
    errors = [e["latency_prediction_error"] for e in child_events if "latency_prediction_error" in e]
    assert errors and len(errors) == sum(c.latency_prediction_error is not None for c in rows.values())
    assert all(e["latency_source"] in ("measured", "predicted") for e in child_events)
    with RunStore(run_dir, readonly=True) as store:
        stats = store.steps()
    assert all(0 <= s["latency/measured_share"] <= 1 for s in stats)
    assert any("latency/prediction_error_mean" in s for s in stats)  # TensorBoard gets every step stat as a scalar


# ------------------------------------------------------------------------------------------------ the real evaluator
def write_table(service, archs, deploy, *, space_archs=()) -> str:
    """A layer table for ``service``'s device holding the layers of ``archs`` (0.05 ms + 0.01 ms per layer index:
    a table's rows, not timings) so that predictions need no timing at all; returns its key."""
    from latency.table import identity_key, table_identity
    from search_spaces.layers import network_layers

    identity = table_identity(service, **deploy)
    key = identity_key(identity)
    service.cache.put_table(key, identity, {})
    for arch in archs:
        for i, spec in enumerate(network_layers(arch, **deploy)):
            service.cache.put_layer(key, spec.key, {}, {"status": "ok", "latency_ms": 0.05 + 0.01 * i})
    return key


def local(tmp_path, mode: str, latency: dict | None = None, **modes) -> LocalEvaluator:
    latency = latency or {"_target_": "latency.build_service", "runner": "host", "warmup_runs": 1, "num_runs": 3,
                          "workers": 1, "cache_path": str(tmp_path / "latency.sqlite")}
    return LocalEvaluator(trainer=TRAINER, dataset=DATASET, deploy=DEPLOY, seed=3, threads=1,
                          latency={**latency, "mode": mode, **modes})


def test_a_missing_table_is_one_problem_naming_the_build_command(tmp_path):
    for mode in ("predict", "hybrid"):
        ev = local(tmp_path, mode)
        problems = [p for p in ev.check() if p.startswith("latency")]
        ev.close()
        assert len(problems) == 1, problems
        assert problems[0].startswith(f"latency.mode={mode}: no latency table for host:")
        assert problems[0].endswith("build it with: python -m latency table build --runner host --warmup 1 --runs 3 "
                                    "--anchor none --space mnasnet --resolution 32 --channels 1 --classes 10 "
                                    f"--cache {tmp_path / 'latency.sqlite'}")


def refused_predict_search(tmp_path, run_dir):
    env = {**os.environ, "MNAS_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "nas.search", "+experiment=smoke", f"run_dir={run_dir}",
                           "latency.mode=predict", "logger=[events]"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_a_search_in_predict_mode_without_a_table_exits_2_and_writes_nothing(tmp_path):
    result = refused_predict_search(tmp_path, tmp_path / "runs" / "a" / "r")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: latency.mode=predict: no latency table for host:")
    assert lines[0].endswith("build it with: python -m latency table build --runner host --warmup 2 --runs 5 "
                             "--anchor none --space mnasnet --resolution 32 --channels 1 --classes 10")
    # not even the directories Hydra made for the run (nor an empty search.log in them)
    assert not (tmp_path / "runs").exists()


def test_a_refused_search_keeps_the_directory_that_was_there(tmp_path):
    (tmp_path / "r").mkdir()
    result = refused_predict_search(tmp_path, tmp_path / "r")
    assert result.returncode == 2, result.stderr[-2000:]
    assert (tmp_path / "r").is_dir() and not any((tmp_path / "r").iterdir())


@needs_fmnist
def test_predict_mode_trains_and_converts_nothing(tmp_path):
    ev = local(tmp_path, "predict")
    try:
        write_table(ev.service or _service(ev), [SMALL, OTHER], DEPLOY)
        assert ev.check() == []
        ev.start(tmp_path)
        results = list(ev.evaluate([SMALL, OTHER]))
        assert ev.service._pool is None  # no conversion worker was ever started
        assert ev.service.cache.counts()["conversions"] == 0
    finally:
        ev.close()
    for r in results:
        assert r.ok and 0 <= r.top1 <= 1 and r.latency_source is LatencySource.PREDICTED
        assert r.latency_ms == r.latency_predicted_ms > 0 and r.latency["extra"]["table"]
    assert not (tmp_path / "latency").exists() or not any((tmp_path / "latency").rglob("*.tflite"))


def _service(ev: LocalEvaluator):
    from nas.evaluator import check_latency

    ev.service, problems = check_latency(ev.latency_config)
    assert problems == []
    return ev.service


@needs_fmnist
@pytest.mark.slow
def test_hybrid_measures_for_real_only_what_matters(tmp_path):
    ev = local(tmp_path, "hybrid", hybrid_top_k=1)
    try:
        write_table(_service(ev), [SMALL, OTHER], DEPLOY)
        assert ev.check() == []
        ev.start(tmp_path)

        class View:  # a search whose front already holds a perfect instant model, and two better rewards
            enters_front = staticmethod(lambda accuracy, latency_ms: False)
            reward = staticmethod(lambda **kw: 0.0)
            rank = staticmethod(lambda reward: 2)

        ev.bind(View())
        (predicted,) = ev.evaluate([SMALL])
        assert ev.service._pool is None and predicted.latency_source is LatencySource.PREDICTED
        View.rank = staticmethod(lambda reward: 0)  # now it would be the best reward so far: measured for real
        (measured,) = ev.evaluate([OTHER])
    finally:
        ev.close()
    assert measured.latency_source is LatencySource.MEASURED and measured.latency["runs"] == 3
    assert measured.extra["latency_measured_because"] == "top_k"
    assert measured.latency_prediction_error == pytest.approx(
        (measured.latency_predicted_ms - measured.latency_ms) / measured.latency_ms)


@needs_fmnist
def test_predict_mode_on_a_phone_through_the_adb_double(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tests" / "latency"))
    try:
        from latency_fake_adb import attach
    finally:
        sys.path.pop(0)
    phone = attach(tmp_path, monkeypatch)
    binary = phone["binary"]
    adb = {"_target_": "latency.build_service", "runner": "adb", "benchmark_binary": str(binary), "cpu_mask": "f0",
           "warmup_runs": 1, "num_runs": 3, "workers": 1, "cache_path": str(tmp_path / "latency.sqlite")}
    missing = local(tmp_path, "predict", adb)
    problems = missing.check()
    missing.close()
    assert problems == ["latency.mode=predict: " + problems[0].split(": ", 1)[1]] and "adb:Pixel 2" in problems[0]
    assert "python -m latency table build --runner adb --binary " in problems[0] and "--cpu-mask f0" in problems[0]
    ev = local(tmp_path, "predict", adb)
    try:
        write_table(_service(ev), [SMALL], DEPLOY)
        assert ev.check() == []
        ev.start(tmp_path)
        (child,) = ev.evaluate([SMALL])
    finally:
        ev.close()
    assert child.ok and child.latency_source is LatencySource.PREDICTED and child.latency["device"] == "adb:Pixel 2"
    log = [json.loads(line) for line in (tmp_path / "adb.log").read_text().splitlines()]
    assert not [c for c in log if "push" in c]  # nothing was sent to the phone, let alone timed
    assert not [c for c in log if any("benchmark_model --graph" in part for part in c)]


def test_hybrid_keeps_the_prediction_when_a_measurement_fails_for_the_device_not_the_model():
    from nas.evaluator import LatencyModes
    from nas.record import ChildResult, LatencySource

    modes = LatencyModes("hybrid", hybrid_top_k=2)
    predicted = {"status": "ok", "latency_ms": 3.0, "extra": {"source": "predicted"}}
    dropped = {"status": "failed", "error": "timing failed: device offline", "extra": {"transient": True}}
    child = modes.finish(ChildResult(arch="a", top1=0.7), predicted, dropped, "front")
    assert child.ok and child.latency_ms == 3.0 and child.latency_source is LatencySource.PREDICTED
    assert child.extra["latency_measurement_failed"] == "timing failed: device offline"
    mismatch = {"status": "failed", "error": "conversion mismatch: 0.3 > 0.01", "extra": {}}
    child = modes.finish(ChildResult(arch="b", top1=0.7), predicted, mismatch, "front")
    assert not child.ok and child.error == "latency: conversion mismatch: 0.3 > 0.01"  # the model's own failure
