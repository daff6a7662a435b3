"""evaluator=ray on a real two-node loopback cluster (tests/ray/conftest.py): the same results as the local
evaluator, children spread over both nodes, a dead actor and a dead node cost retries (never a lost or repeated
child), two phones timing at once with each child on one phone, a dropped phone moving its work, a dead phone actor
replaced on its own phone, an actor that cannot start stopping the search in one line, and the Ray processes of a
search never outliving it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mnas_common.paths import config_dir
from nas.components import build
from nas.evaluator import EvaluatorStopped
from nas.run import run_search
from nas.store import RunStore
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SMOKE = ["+experiment=smoke", "logger=[events]", "pareto.enabled=false", "budget=6", "batch_size=3"]
FAKE_ADB = ROOT / "tests" / "latency" / "latency_fake_adb.py"


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose("search", overrides=[*SMOKE, *overrides])


def on_cluster(cluster, *more: str) -> list[str]:
    return ["evaluator=ray", f"evaluator.address={cluster.address}", *more]


def committed(run_dir: Path):
    with RunStore(run_dir, readonly=True) as store:
        return store.children(committed_only=True)


def rows(run_dir: Path) -> list[tuple]:
    return [(c.step, c.idx, c.arch, str(c.status), c.top1, c.latency_ms, c.reward) for c in committed(run_dir)]


def controller_states(run_dir: Path) -> list:
    with RunStore(run_dir, readonly=True) as store:
        return [store.controller_state(s)["policy"] for s in range(store.last_step() + 1)]


def evaluations(run_dir: Path) -> list[str]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e["arch"] for e in events if e["event"] == "child" and e["origin"] == "evaluated"]


def test_a_ray_search_equals_the_local_search(ray_cluster, tmp_path):
    cache = f"latency.cache_path={tmp_path / 'latency.sqlite'}"  # the same measurements answer both runs
    scores = "evaluator.scores=[synflow,naswot]"  # the trainer actors compute them as the local evaluator does
    local = run_search(config(cache, scores), tmp_path / "local")
    remote = run_search(config(cache, scores, *on_cluster(ray_cluster)), tmp_path / "ray")
    assert local["children"] == remote["children"] == 6
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")  # children, accuracies, latencies, rewards
    ray_scores = [(c.arch, c.scores) for c in committed(tmp_path / "ray")]
    assert ray_scores == [(c.arch, c.scores) for c in committed(tmp_path / "local")]
    assert all(set(s) == {"synflow", "naswot"} and None not in s.values() for _, s in ray_scores)
    for mine, theirs in zip(controller_states(tmp_path / "ray"), controller_states(tmp_path / "local"), strict=True):
        assert all((mine[k] == theirs[k]).all() for k in theirs)
    nodes = {c.extra["nodes"]["train"] for c in committed(tmp_path / "ray")}
    assert len(nodes) == 2  # one search, trained on both nodes


def _trainer_pids() -> list[int]:
    """Worker processes of trainer actors that are training now (Ray titles them ``ray::TrainerActor.train``)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(b"ray::TrainerActor.train"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def test_a_killed_trainer_and_then_a_killed_node_lose_and_repeat_nothing(ray_cluster, tmp_path):
    extra = ray_cluster.start_node(num_cpus=2, resources={"node_c": 1})
    ray_cluster.wait_for_nodes(3)
    run_dir = tmp_path / "run"
    cfg = config(*on_cluster(ray_cluster, "evaluator.trainers.actors=3", "evaluator.max_attempts=4"), "budget=12",
                 "measure_latency=false", "reward=macs", "dataset.images_per_class=60")
    killed: dict = {}

    def saboteur() -> None:
        events = run_dir / "events.jsonl"
        deadline = time.time() + 600
        while time.time() < deadline and "node" not in killed:
            done = events.read_text().count('"event": "child"') if events.exists() else 0
            if done >= 2 and "worker" not in killed:
                pids = _trainer_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)  # a trainer's worker process dies mid-child
                    killed["worker"] = pids[0]
            elif done >= 5 and "worker" in killed:
                ray_cluster.stop(extra, grace_s=0.1)  # then a whole node with its actors
                killed["node"] = done
            time.sleep(0.1)

    thread = threading.Thread(target=saboteur, daemon=True)
    thread.start()
    summary = run_search(cfg, run_dir)
    thread.join(timeout=10)
    assert "worker" in killed and "node" in killed
    kids = committed(run_dir)
    assert summary["children"] == len(kids) == 12
    assert len({(c.step, c.idx) for c in kids}) == 12  # recorded once each
    assert all(str(c.status) == "ok" for c in kids)  # what ran on the dead actors was retried elsewhere
    finished = evaluations(run_dir)
    assert len(finished) == len(set(finished))  # no finished child evaluated twice


def _fake_phones(tmp_path: Path, serials: str, delay_s: float = 0.0) -> tuple[Path, Path, Path]:
    """An ``adb`` for the device actors: the double from tests/latency with its environment baked in (actors do not
    see this test's environment)."""
    (tmp_path / "phone").mkdir(exist_ok=True)
    serials_file, times = tmp_path / "serials", tmp_path / "times.jsonl"
    serials_file.write_text(serials)
    adb = tmp_path / "adb"
    adb.write_text(f"#!/bin/sh\nexport FAKE_ADB_ROOT={tmp_path / 'phone'} FAKE_ADB_SERIALS_FILE={serials_file} "
                   f"FAKE_ADB_TIMES={times} FAKE_ADB_DELAY_S={delay_s}\n"
                   f'exec "{sys.executable}" "{FAKE_ADB}" "$@"\n')
    adb.chmod(0o755)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake benchmark_model")
    return adb, serials_file, times


def phone_config(cluster, tmp_path: Path, adb: Path, *more: str):
    return config(*on_cluster(cluster, "evaluator.converters.actors=2"), "latency=adb", f"latency.adb={adb}",
                  f"latency.benchmark_binary={tmp_path / 'benchmark_model'}", "latency.warmup_runs=1",
                  "latency.num_runs=3", "latency.retries=0", f"latency.cache_path={tmp_path / 'latency.sqlite'}",
                  *more)


def test_two_phones_time_at_once_and_each_child_on_one_phone(ray_cluster, tmp_path):
    adb, _, times = _fake_phones(tmp_path, "FAKEA,FAKEB", delay_s=2.0)
    summary = run_search(phone_config(ray_cluster, tmp_path, adb, "evaluator.devices.serials=[FAKEA,FAKEB]"),
                         tmp_path / "run")
    failed = [(c.arch, c.error) for c in committed(tmp_path / "run") if str(c.status) != "ok"]
    assert summary["children"] == 6 and not failed
    runs = [json.loads(line) for line in times.read_text().splitlines()]
    graphs = [r["graph"] for r in runs]
    assert len(graphs) == len(set(graphs)) == 6  # each child timed once, on one phone
    assert {r["serial"] for r in runs} == {"FAKEA", "FAKEB"}
    overlap = any(a["serial"] != b["serial"] and a["start"] < b["end"] and b["start"] < a["end"]
                  for a in runs for b in runs)
    assert overlap  # the two phones timed at the same time
    assert {c.latency["device"].rsplit(":", 1)[1] for c in committed(tmp_path / "run")} == {"FAKEA", "FAKEB"}


def test_a_dropped_phone_moves_its_timings_and_with_none_left_the_search_stops(ray_cluster, tmp_path):
    adb, serials, times = _fake_phones(tmp_path, "FAKEA,FAKEB", delay_s=1.0)
    cfg = phone_config(ray_cluster, tmp_path, adb, "evaluator.devices.serials=[FAKEA,FAKEB]", "budget=9")
    run_dir = tmp_path / "run"

    def unplug() -> None:
        deadline = time.time() + 600
        while time.time() < deadline:
            timed = times.read_text().count("\n") if times.exists() else 0
            if timed >= 2 and "FAKEA" in serials.read_text():
                serials.write_text("FAKEB")  # FAKEA falls off USB
            if timed >= 5:
                serials.write_text("")  # and then FAKEB
                return
            time.sleep(0.05)

    thread = threading.Thread(target=unplug, daemon=True)
    thread.start()
    with pytest.raises(EvaluatorStopped, match="every timing device dropped"):
        run_search(cfg, run_dir)
    thread.join(timeout=10)
    stored = committed(run_dir)
    assert 0 < len(stored) < 9 and all(str(c.status) == "ok" for c in stored)  # nothing recorded as failed
    serials.write_text("FAKEA,FAKEB")  # plugged back: the same command resumes
    summary = run_search(cfg, run_dir)
    assert summary["children"] == 9 and len({(c.step, c.idx) for c in committed(run_dir)}) == 9


def test_a_dead_phone_actor_is_replaced_on_its_own_phone(ray_cluster, tmp_path):
    """The replacement of a dead device actor owns the dead one's phone (it once asked for a phone no longer free)."""
    import ray

    from mnas_common.config import to_plain
    from nas.ray_evaluator import RayEvaluator

    adb, _, _ = _fake_phones(tmp_path, "FAKEA,FAKEB")
    cfg = phone_config(ray_cluster, tmp_path, adb)
    evaluator = RayEvaluator(trainer=None, dataset=None, deploy={}, latency=to_plain(cfg.latency),
                             devices={"serials": ["FAKEA", "FAKEB"]})
    build("latency", {**evaluator.latency, "workers": 1}).close()  # its cache created first, as check() does
    pool = evaluator._device_pool({**evaluator.latency, "work_dir": None})
    try:
        dead = pool.actors[0]
        phone = ray.get(dead.device_id.remote(), timeout=120)
        pool.replace(dead)  # killed, as its worker or node would be
        assert len(pool.actors) == 2 and dead not in pool.actors
        assert ray.get(pool.actors[-1].device_id.remote(), timeout=120) == phone
        assert sorted(id.rsplit(":", 1)[1] for id in ray.get([a.device_id.remote() for a in pool.actors])) == [
            "FAKEA", "FAKEB"]
    finally:
        for actor in pool.actors:
            ray.kill(actor)


def test_actors_that_cannot_start_stop_the_search_in_one_line(ray_cluster):
    """An actor that raises in its constructor (a node without the TFLite converter) is one line naming the cause."""
    import ray

    from nas.ray_evaluator import CONVERT, RayEvaluator, _Pool

    class Converter:
        def __init__(self):
            raise ImportError("No module named 'ai_edge_litert'")

        def where(self):
            return {}

    evaluator = RayEvaluator(trainer=None, dataset=None, deploy={}, latency=None)
    pool = evaluator._pools[CONVERT] = _Pool(CONVERT, ray.remote(num_cpus=0, max_restarts=0)(Converter).remote, 2)
    try:
        with pytest.raises(EvaluatorStopped) as stopped:
            evaluator._await(CONVERT, lambda a: a.where.remote(), "converter", timeout_s=120)
    finally:
        for actor in pool.actors:
            ray.kill(actor)
    assert str(stopped.value) == "the converter actors cannot start: ImportError: No module named 'ai_edge_litert'"


def test_the_nodes_that_do_not_see_the_dataset_are_found_on_each_node(ray_cluster, tmp_path):
    """dataset_transfer=path puts the dataset in the object store only for nodes that do not see the driver's path."""
    import ray

    from nas.ray_evaluator import nodes_without

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    (tmp_path / "meta.json").write_text("{}")
    assert len(nodes) == 2 and nodes_without(tmp_path, nodes) == []
    assert sorted(nodes_without(tmp_path / "elsewhere", nodes)) == sorted(n["NodeID"] for n in nodes)


def test_a_replacement_no_node_can_place_stops_the_search_instead_of_hanging(ray_cluster):
    """A dead trainer's replacement that no node can place (here: it asks for a resource nobody has, as when the
    only GPU node died) was handed children that waited for ever."""
    import ray

    from nas.ray_evaluator import TRAIN, RayEvaluator, _Job, _Pool
    from nas.record import ChildResult

    class Trainer:
        def where(self):
            return {}

        def train(self, *args):
            return {}

    evaluator = RayEvaluator(trainer=None, dataset=None, deploy={}, latency=None, actor_start_s=3)
    pool = evaluator._pools[TRAIN] = _Pool(TRAIN, ray.remote(num_cpus=0, max_restarts=0)(Trainer).remote, 1)
    try:
        evaluator._await(TRAIN, lambda a: a.where.remote(), "trainer", timeout_s=120)
        pool.make = lambda _: ray.remote(num_cpus=0, resources={"nowhere": 1}, max_restarts=0)(Trainer).remote()
        dead = pool.actors[0]
        ray.kill(dead, no_restart=True)
        deadline = time.monotonic() + 120  # ray.kill is asynchronous: a call sent before the actor is gone may
        while time.monotonic() < deadline:  # still be answered (CI saw the killed actor train the child)
            try:
                ray.get(dead.where.remote(), timeout=120)
            except ray.exceptions.RayActorError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the killed actor still answers")
        job = evaluator._jobs["arch"] = _Job(ChildResult(arch="arch", seed=0))
        pool.queue.append(job)
        started = time.monotonic()
        with pytest.raises(EvaluatorStopped, match="^no train actor left: a trainer actor died and its replacement "
                                                   "was not placed within 3 s"):
            evaluator.next_result()
        assert time.monotonic() - started < 60
    finally:
        evaluator.close()


def _descendants(pid: int) -> set[int]:
    from nas.ray_reaper import descendants

    return set(descendants(pid))


def _kill_when(proc: subprocess.Popen, run_dir: Path, children: int) -> set[int]:
    """SIGKILL ``proc`` once ``children`` children are in its event log; returns the processes it had below it."""
    seen: set[int] = set()
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        seen |= _descendants(proc.pid)
        events = run_dir / "events.jsonl"
        if events.exists() and events.read_text().count('"event": "child"') >= children:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    seen |= _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return seen


FAST = ["measure_latency=false", "reward=macs"]


def test_kill_9_of_the_driver_resumes_exactly_while_the_cluster_lives_on(ray_cluster, tmp_path):
    reference = run_search(config(*FAST, "budget=9"), tmp_path / "reference")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "nas.search", *SMOKE, *FAST, "budget=9", f"run_dir={run_dir}",
           *on_cluster(ray_cluster)]
    _kill_when(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
               run_dir, 4)
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert reference["children"] == 9 and rows(run_dir) == rows(tmp_path / "reference")


def test_the_ray_processes_of_a_search_die_with_it(ray_cluster, tmp_path):
    # evaluator=ray with no address starts Ray on this machine: after kill -9 of the search, nothing of it is left,
    # and the same command starts a new instance and finishes the run
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "nas.search", *SMOKE, *FAST, "evaluator=ray", f"run_dir={run_dir}", "budget=8"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = _kill_when(proc, run_dir, 2)
    deadline = time.time() + 20
    while time.time() < deadline and [p for p in seen if Path(f"/proc/{p}").exists()]:
        time.sleep(0.2)
    left = [Path(f"/proc/{p}/cmdline").read_bytes()[:60] for p in seen if Path(f"/proc/{p}").exists()]
    assert seen and not left
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len({(c.step, c.idx) for c in committed(run_dir)}) == 8


def test_steady_state_keeps_every_trainer_busy_with_no_batch_barrier(ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    summary = run_search(config(*on_cluster(ray_cluster, "evaluator.trainers.actors=3"), *FAST,
                                "controller=evolution", "controller.population_size=4", "controller.tournament_size=2",
                                "steady_state=true", "budget=8", "batch_size=1"), run_dir)
    kids = committed(run_dir)
    assert summary["children"] == len(kids) == 8 and [(c.step, c.idx) for c in kids] == [(i, 0) for i in range(8)]
    events = [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events.index("child") >= 1 + 3  # start, then three children handed out before the first returned
    # after that, each child that returns is replaced at once: submits and children alternate
    assert events.count("submit") == 8


def _full_table(cfg, cache: Path) -> None:
    """A layer table for this machine's host runner holding every layer of the space at the smoke deployment (rows
    of a table, not timings: 0.05 ms + 0.001 ms per layer), so that any child can be predicted."""
    from latency.table import identity_key, table_identity
    from mnas_common.config import to_plain
    from nas.evaluator import LatencyModes

    _, settings = LatencyModes.split(to_plain(cfg.latency))
    service = build("latency", {**settings, "cache_path": str(cache), "workers": 1})
    try:
        deploy = dict(to_plain(cfg.deploy))
        key = identity_key(table_identity(service, **deploy))
        service.cache.put_table(key, table_identity(service, **deploy), {})
        for i, spec in enumerate(build("search_space", cfg.search_space).layers(**deploy)):
            service.cache.put_layer(key, spec.key, {}, {"status": "ok", "latency_ms": 0.05 + 0.001 * i})
    finally:
        service.close()


def test_predict_and_hybrid_modes_on_the_cluster(ray_cluster, tmp_path):
    cache = tmp_path / "latency.sqlite"
    common = [f"latency.cache_path={cache}", *on_cluster(ray_cluster)]
    _full_table(config(*common), cache)
    predicted = run_search(config(*common, "latency.mode=predict"), tmp_path / "predict")
    kids = committed(tmp_path / "predict")
    assert predicted["children"] == len(kids) == 6
    assert all(c.ok and str(c.latency_source) == "predicted" and c.latency_ms == c.latency_predicted_ms for c in kids)
    from latency.cache import LatencyCache

    store = LatencyCache(cache)
    try:
        assert store.counts()["conversions"] == 0  # predict converts no child
    finally:
        store.close()

    hybrid = run_search(config(*common, "latency.mode=hybrid", "latency.hybrid_top_k=1"), tmp_path / "hybrid")
    kids = committed(tmp_path / "hybrid")
    assert hybrid["children"] == len(kids) == 6
    measured = [c for c in kids if str(c.latency_source) == "measured"]
    assert measured and all(c.latency_predicted_ms and c.latency_prediction_error is not None
                            and c.extra.get("latency_measured_because") in ("front", "top_k") for c in measured)
    assert all(c.latency_ms == c.latency_predicted_ms for c in kids if c not in measured)


def test_the_actors_get_absolute_latency_paths(tmp_path, monkeypatch):
    """Ray actors run in directories of their own: a relative cache path or benchmark binary is made absolute on
    the driver, against the directory the search was started in (nothing is started here)."""
    from nas.ray_evaluator import RayEvaluator

    monkeypatch.chdir(tmp_path)
    evaluator = RayEvaluator(trainer=None, dataset=None, deploy={}, latency={
        "runner": "adb", "mode": "measure", "cache_path": "cache/latency.sqlite", "benchmark_binary": "bin/bm"})
    assert evaluator.latency["cache_path"] == str(tmp_path / "cache" / "latency.sqlite")
    assert evaluator.latency["benchmark_binary"] == str(tmp_path / "bin" / "bm")
    assert "mode" not in evaluator.latency and evaluator.latency["runner"] == "adb"

