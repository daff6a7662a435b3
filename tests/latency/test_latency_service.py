"""Service semantics: measure_many order/dedupe, export, tolerance failures, cache corruption, Hydra configs."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
import pytest

from latency import LatencyResult, LatencyService, build_service
from latency.cache import LatencyCacheError

SMALL = "ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16"
OTHER = "ds_r1_k5_s1_c8-ir_r1_k3_s2_e6_c16"
CONFIGS = Path(__file__).parents[2] / "configs"


def test_measure_many_keeps_order_and_measures_duplicates_once(host_service):
    archs = [OTHER, SMALL, OTHER]
    results = host_service.measure_many(archs, resolution=32, channels=1, num_classes=10)
    assert [r.arch for r in results] == archs
    assert all(r.status == "ok" for r in results), [r.error for r in results]
    assert results[0] is results[2] or results[0].to_dict() == results[2].to_dict()
    assert results[0].resolution == 32 and results[0].channels == 1
    assert host_service.cache.counts()["measurements"] >= 2


def test_export_writes_onnx_and_tflite(host_service, tmp_path):
    out = host_service.export(SMALL, tmp_path / "exp", resolution=32, num_classes=10, name="child0")
    assert Path(out["onnx"]).name == "child0.onnx" and Path(out["tflite"]).name == "child0.tflite"
    from latency.convert import make_interpreter

    interp = make_interpreter(out["tflite"])
    assert tuple(interp.get_input_details()[0]["shape"]) == (1, 32, 32, 3)  # NHWC
    assert tuple(interp.get_output_details()[0]["shape"])[-1] == 10


def test_conversion_beyond_tolerance_is_a_failed_result(latency_root):
    """... and a conversion worker keeps its temp files (TensorFlow's autograph modules) in a directory of its own
    under the work directory, removed when it ends: none are left in the system's temp directory."""
    system_tmp = Path(tempfile.gettempdir())
    before = set(system_tmp.glob("__autograph_generated_file*"))
    with build_service("host", workers=1, num_runs=2, tolerance_abs=1e-12, tolerance_rel=1e-12,
                       cache_path=latency_root / "strict" / "latency.sqlite") as service:
        result = service.measure(SMALL, resolution=32, num_classes=10)
        worker_tmp = Path(service._run_in_worker(tempfile.gettempdir))
        assert worker_tmp.parent == service.work_dir and worker_tmp.name.startswith("tmp-")
        assert list(worker_tmp.glob("__autograph_generated_file*"))
    assert not worker_tmp.exists() and not list(service.work_dir.glob("tmp-*"))
    assert set(system_tmp.glob("__autograph_generated_file*")) <= before
    assert result.status == "failed" and "conversion mismatch" in result.error
    assert not result.extra.get("transient")  # the architecture's own: a search reuses it
    assert result.max_abs_err is not None and result.max_abs_err > 1e-12 and result.latency_ms is None
    assert "\n" not in result.error


def test_failures_of_the_moment_are_marked_transient(host_service, monkeypatch):
    """A conversion that crashed (not cached) or a timing that failed says nothing about the architecture: the
    result says so (``extra["transient"]``), so a search evaluates the architecture again when it is resampled."""
    base = {"arch": SMALL, "resolution": 32, "channels": 3, "num_classes": 10, "key": "0" * 64}
    crashed = host_service.time({**base, "status": "failed", "error": "conversion failed: killed", "transient": True})
    assert crashed.status == "failed" and crashed.extra == {"transient": True}
    mismatch = host_service.time({**base, "status": "failed", "error": "conversion mismatch: 0.3 > 0.01"})
    assert mismatch.status == "failed" and not mismatch.extra.get("transient")

    conversion = host_service.convert(SMALL, resolution=32, num_classes=10)
    assert conversion["status"] == "ok" and "transient" not in conversion
    monkeypatch.setattr(host_service.cache, "get_measurement", lambda key: None)

    def broken(fn, *args, **kwargs):
        raise RuntimeError("a process in the process pool was terminated abruptly")

    monkeypatch.setattr(host_service, "_run_in_worker", broken)
    timed = host_service.time(conversion)
    assert timed.status == "failed" and "terminated abruptly" in timed.error and timed.extra == {"transient": True}
    monkeypatch.undo()
    # a model the interpreter cannot load is the model's own failure, not the moment's
    from latency.cache import file_digest

    garbage = Path(conversion["tflite_path"]).parent.parent / "garbage" / "model.tflite"
    garbage.parent.mkdir(exist_ok=True)
    garbage.write_bytes(b"not a flatbuffer" * 64)
    unloadable = host_service.time({**conversion, "key": "f" * 64, "tflite_path": str(garbage),
                                    "artifacts": {**conversion["artifacts"], "tflite_path": file_digest(garbage)}})
    assert unloadable.status == "failed" and not unloadable.extra.get("transient"), unloadable.error
    monkeypatch.setattr(host_service.cache, "get_measurement", lambda key: None)
    monkeypatch.setattr(host_service, "_run_in_worker", broken)
    # a worker pool that breaks during a whole measurement (convert, then time): a failure of the moment too
    measured = host_service.measure(OTHER, resolution=24, num_classes=10)
    assert measured.status == "failed" and "terminated abruptly" in measured.error
    assert measured.extra == {"transient": True}


def test_bad_arguments_raise(host_service):
    with pytest.raises(ValueError):
        host_service.measure(SMALL, resolution=0)
    with pytest.raises(ValueError, match="runner"):
        build_service("phone")
    with pytest.raises(ValueError, match="unknown latency field"):
        build_service("host", serial="x")
    with pytest.raises(ValueError, match=r"num_run \(did you mean num_runs\?\)"):  # the suggestion was missing
        build_service("host", num_run=3)


def test_corrupted_cache_is_reported_not_overwritten(tmp_path):
    path = tmp_path / "latency.sqlite"
    garbage = b"this is not sqlite" * 100
    path.write_bytes(garbage)
    with pytest.raises(LatencyCacheError, match="corrupted"):
        LatencyService("host", cache_path=path)
    assert path.read_bytes() == garbage


def test_a_refused_cache_leaves_no_connection_open(tmp_path, monkeypatch):
    """A corrupted file's connection was left to garbage collection; every refusal now closes it."""
    from latency.cache import LatencyCache

    opened = []
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: opened.append(connect(*a, **kw)) or opened[-1])
    corrupted, foreign = tmp_path / "corrupted.sqlite", tmp_path / "foreign.sqlite"
    corrupted.write_bytes(b"this is not sqlite" * 100)
    with connect(foreign) as other:
        other.execute("CREATE TABLE children (x)")
    other.close()
    for path, reason in ((corrupted, "corrupted"), (foreign, "not a latency cache")):
        with pytest.raises(LatencyCacheError, match=reason):
            LatencyCache(path)
    assert len(opened) == 2
    for conn in opened:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")


def test_cache_survives_restart_and_key_includes_settings(host_service, latency_root):
    first = host_service.measure(SMALL, resolution=32, num_classes=10)
    with build_service("host", warmup_runs=2, num_runs=5, workers=1,
                       cache_path=latency_root / "latency.sqlite") as again:
        assert again.measure(SMALL, resolution=32, num_classes=10).cached
    with build_service("host", warmup_runs=2, num_runs=6, workers=1,
                       cache_path=latency_root / "latency.sqlite") as other:
        r = other.measure(SMALL, resolution=32, num_classes=10)
        assert not r.cached and r.runs == 6 and r.extra["conversion_cached"]  # re-timed, not re-converted
    assert first.ok
    con = sqlite3.connect(latency_root / "latency.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_default_cache_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path / "c"))
    with LatencyService("host") as service:
        assert str(service.cache_path).startswith(str(tmp_path / "c"))


def test_result_round_trip_is_json():
    import json

    r = LatencyResult(arch=SMALL, latency_ms=1.5, samples_ms=[1.0, 2.0], extra={"a": 1})
    assert LatencyResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


@pytest.mark.parametrize("name", ["host", "adb"])
def test_hydra_configs_instantiate(name, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONFIGS / "latency"), version_base=None):
        cfg = compose(config_name=name)
    service = instantiate(cfg, cache_path=tmp_path / "latency.sqlite", work_dir=tmp_path / "work")
    try:
        assert isinstance(service, LatencyService) and service.runner_config["runner"] == name
    finally:
        service.close()


class _Model:
    def __init__(self, name, ms, fails=False):
        self.name, self.ms, self.fails = name, ms, fails


class _PhasedRunner:
    """A host runner double on a fake clock: ``run`` takes ``ms`` per run, times two during the calls in ``slow``."""

    def __init__(self, slow=()):
        self.now, self.calls, self.slow = 0.0, [], set(slow)

    def round_runs(self, attempt):
        return 3

    def round_warmup(self, first):
        return 0

    def run(self, model, runs, warmup):
        speed = 2.0 if len(self.calls) in self.slow else 1.0
        self.calls.append(model.name)
        if model.fails:
            raise RuntimeError("invoke failed")
        self.now += model.ms * speed * runs / 1000
        return [model.ms * speed] * runs


def test_anchor_is_timed_around_every_network_and_every_group_of_small_layers():
    """The drift anchor brackets each network (its runs take over ANCHOR_EVERY_S) and each group of small layers that
    together do; a slow phase covering a network and the anchor's times around it is taken out exactly."""
    from latency.service import ANCHOR_EVERY_S, _time_round

    anchor = _Model("anchor", 7.0)
    nets = {f"net{i}": _Model(f"net{i}", ms) for i, ms in enumerate([50.0, 60.0, 80.0, 90.0])}
    assert 3 * 50.0 / 1000 >= ANCHOR_EVERY_S
    runner = _PhasedRunner(slow=range(2, 7))  # anchor, net1, anchor, net2, anchor: half speed
    timed, errors = _time_round(runner, nets, anchor, 7.0, 0, clock=lambda: runner.now)
    assert not errors
    assert runner.calls == ["anchor", "net0", "anchor", "net1", "anchor", "net2", "anchor", "net3", "anchor"]
    assert timed["net1"] == ([60.0] * 3, 0.5) and timed["net2"] == ([80.0] * 3, 0.5)
    assert timed["net3"][0] == pytest.approx([90.0 * 7.0 / 10.5] * 3)  # half the bracket was slow: half corrected

    layers = {f"l{i}": _Model(f"l{i}", 10.0, fails=i == 5) for i in range(10)}
    runner = _PhasedRunner()
    timed, errors = _time_round(runner, layers, anchor, 7.0, 0, clock=lambda: runner.now)
    assert list(errors) == ["l5"] and "invoke failed" in str(errors["l5"])
    assert runner.calls.count("anchor") == 4  # before l0, after l3, after l8 (l5 failed, no time), after l9
    assert [runner.calls.index(f"l{i}") for i in (4, 9)] == [6, 12]
    assert all(timed[f"l{i}"] == ([10.0] * 3, 1.0) for i in range(10) if i != 5)


def test_a_network_whose_anchor_times_disagree_is_timed_again():
    """A phase change inside a bracket (the anchor slow before a network, not after it) leaves no one factor that fits
    the network's runs: with ``agree`` the network is timed again between two agreeing anchor times; a bracket that
    never agrees is kept from its best attempt after ANCHOR_RETRIES retries."""
    from latency.service import ANCHOR_RETRIES, _time_round

    anchor = _Model("anchor", 7.0)
    nets = {"net0": _Model("net0", 50.0), "net1": _Model("net1", 80.0)}
    runner = _PhasedRunner(slow=range(2, 3))  # anchor, net0, [anchor slow], net1, anchor ...
    retimed = []
    timed, errors = _time_round(runner, nets, anchor, 7.0, 0, clock=lambda: runner.now, agree=0.04, retimed=retimed)
    assert not errors
    # net0's bracket (7 before, 14 after) disagrees: net0 again, then the anchor (14 -> 7: still apart), net0 again
    # and the anchor (7, 7: agree); net1's bracket starts from the latest anchor time
    assert runner.calls == ["anchor", "net0", "anchor", "net0", "anchor", "net0", "anchor", "net1", "anchor"]
    assert timed["net0"] == ([50.0] * 3, 1.0) and timed["net1"] == ([80.0] * 3, 1.0)
    assert retimed == [1.0, 0.0]

    runner = _PhasedRunner(slow=range(2, 100, 4))  # every other anchor time slow: no bracket ever agrees
    timed, _ = _time_round(runner, {"net0": nets["net0"]}, anchor, 7.0, 0, clock=lambda: runner.now, agree=0.04)
    assert runner.calls.count("net0") == 1 + ANCHOR_RETRIES and timed["net0"][1] == pytest.approx(7.0 / 10.5)
    # without agree (as before): one bracket, one factor, whatever it is
    runner = _PhasedRunner(slow=range(2, 3))
    timed, _ = _time_round(runner, nets, anchor, 7.0, 0, clock=lambda: runner.now)
    assert runner.calls == ["anchor", "net0", "anchor", "net1", "anchor"]
    assert timed["net0"][1] == pytest.approx(7.0 / 10.5)


def test_drift_anchor_scales_every_round_and_its_reference_is_fixed_once(latency_root, monkeypatch):
    """A tiny anchor (the service converts it at 224 px like any model) timed around the model in every round: each
    result records the reference and one factor per round, and latency_ms is the median of the corrected rounds.
    The reference is fixed once per cache: a second service on the same cache reuses it, a cache of its own is
    keyed apart from timings without an anchor."""
    import latency.service as service_module
    from latency.service import anchor_key

    monkeypatch.setattr(service_module, "ANCHOR_REF_ROUNDS", 3)
    cache = latency_root / "anchor" / "latency.sqlite"
    fields = {"warmup_runs": 2, "num_runs": 6, "workers": 1, "cache_path": cache}
    with build_service("host", anchor=SMALL, **fields) as service:
        result = service.measure(OTHER, resolution=32, num_classes=10)
        assert result.ok, result.error
        anchor = result.extra["timing"]["anchor"]
        assert anchor["arch"] == SMALL and anchor["ref_ms"] > 0
        assert len(anchor["factors"]) == result.extra["timing"]["rounds"] >= 3
        assert service.measurement_settings["anchor"] == SMALL
        used = [result.extra["round_medians_ms"][i] for i in result.extra["rounds_used"]]
        # round_medians_ms are stored rounded to 1e-5 ms: a 0.04 ms model's median can differ by more than rel 1e-4
        assert result.latency_ms == pytest.approx(float(np.median(used)), rel=1e-4, abs=1e-5)
        stored = service.cache.anchor(anchor_key(service.device_id, service.measurement_settings,
                                                 service.model_versions()))
        assert stored["ref_ms"] == anchor["ref_ms"] and len(stored["round_medians_ms"]) == 3
    monkeypatch.setattr(service_module, "_anchor_ref_task", None)  # a second fix would fail: it must not happen
    with build_service("host", anchor=SMALL, **fields) as again:
        other = again.measure(SMALL, resolution=32, num_classes=10)
        assert other.ok and other.extra["timing"]["anchor"]["ref_ms"] == anchor["ref_ms"]
    with build_service("host", **fields) as plain:
        assert "anchor" not in plain.measurement_settings
        assert plain.measure(OTHER, resolution=32, num_classes=10).cached is False  # never answered by the anchored


def test_each_round_fixing_the_anchor_reference_is_long_enough_for_the_load_probe(tmp_path, monkeypatch):
    """Ten runs of a 7 ms anchor took 80 ms, under the load probe's PROBE_MIN_S: only the first round (with its
    warm-up) was ever checked for disturbance, so a reference taken under load set the scale of the whole cache."""
    import time as time_module

    import latency.service as service_module
    from latency.quiet import PROBE_MIN_S, LoadProbe, NullGate

    class Runner:  # a 5 ms anchor
        def prepare(self, path):
            return path

        def round_warmup(self, first):
            return 1 if first else 0

        def run(self, interpreter, runs, warmup):
            time_module.sleep(0.005 * (runs + warmup))
            return [5.0] * runs

    windows = []

    class Probe(LoadProbe):
        def __exit__(self, *exc):
            super().__exit__(*exc)
            windows.append(self.seconds)

    monkeypatch.setattr(service_module, "LoadProbe", Probe)
    monkeypatch.setattr(service_module, "ROUND_GAP_S", 0.0)
    monkeypatch.setitem(service_module._WORKER, "runner", Runner())
    monkeypatch.setitem(service_module._WORKER, "gate", NullGate())
    fixed = service_module._anchor_ref_task("anchor.tflite", str(tmp_path / "lock"), False, 3)
    assert fixed["ref_ms"] == 5.0 and len(windows) == 3 + fixed["disturbed_rounds"]
    assert min(windows) >= PROBE_MIN_S


def test_the_logs_of_ended_workers_are_kept_for_the_newest_few(tmp_path):
    """Each conversion worker writes its stderr to work/worker-<pid>.log; none was ever removed."""
    from latency.service import KEEP_WORKER_LOGS, _remove_ended_worker_tmp

    gone = [f"worker-{99_999_990 + i}.log" for i in range(KEEP_WORKER_LOGS + 5)]  # beyond any pid_max: ended
    for age, name in enumerate(gone):
        path = tmp_path / name
        path.write_text("TensorFlow said things")
        os.utime(path, (1_000_000 - age, 1_000_000 - age))  # the first is the newest
    (tmp_path / f"worker-{os.getpid()}.log").write_text("alive")
    (tmp_path / "worker-notes.log").write_text("not a worker's")
    _remove_ended_worker_tmp(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*gone[:KEEP_WORKER_LOGS], f"worker-{os.getpid()}.log", "worker-notes.log"])


def test_the_anchor_reference_is_keyed_by_the_converter_versions_and_an_older_key_is_taken_over_once(tmp_path):
    """Another onnx2tf or TensorFlow converts the anchor into another model: its reference was still the one fixed
    with the old converter. A cache's reference stored under the key of before (no versions) is its timings' scale:
    the current versions take it over, a later version fixes its own."""
    from latency.cache import LatencyCache, cache_key
    from latency.service import ANCHOR_INPUT, anchor_key, stored_anchor

    cache = LatencyCache(tmp_path / "latency.sqlite")
    settings = {"anchor": "mnasnet_b1", "runner": "host"}
    older = cache_key(anchor="mnasnet_b1", input=ANCHOR_INPUT, device="host:x", settings=settings)
    cache.put_anchor(older, "mnasnet_b1", "host:x", settings, {"ref_ms": 7.0})
    now, later = {"onnx2tf": "1.28.0"}, {"onnx2tf": "1.29.0"}
    assert anchor_key("host:x", settings, now) != anchor_key("host:x", settings, later)
    assert stored_anchor(cache, "host:x", settings, now, adopt=False)["ref_ms"] == 7.0  # read: nothing moves
    assert cache.anchor(older) is not None
    assert stored_anchor(cache, "host:x", settings, now)["ref_ms"] == 7.0
    assert cache.anchor(older) is None and cache.anchor(anchor_key("host:x", settings, now))["ref_ms"] == 7.0
    assert stored_anchor(cache, "host:x", settings, later) is None  # a later converter fixes its own
    cache.close()


def test_bad_anchor_is_one_clear_error():
    with pytest.raises(ValueError, match="latency.anchor: .*not_an_arch") as info:
        build_service("host", anchor="not_an_arch")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="host runner only"):
        build_service("adb", anchor="mnasnet_b1", serial="x")
    assert build_service("host", anchor="none").anchor is None


def test_searches_with_caches_of_their_own_take_turns_on_the_device_they_share(tmp_path, monkeypatch):
    """The device lock and the host gate lived next to each cache: two searches with separate caches timed on the
    same CPU (or phone) at the same moment, each in the other's training."""
    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path / "home"))
    one, two = (LatencyService("host", cache_path=tmp_path / name / "latency.sqlite") for name in ("a", "b"))
    try:
        assert one._device_lock_path == two._device_lock_path
        assert Path(one._device_lock_path).parent == tmp_path / "home" / "locks"
        assert one.gate.work_path == two.gate.work_path
        assert one.locks_dir != two.locks_dir  # conversions in progress are each cache's own
    finally:
        one.close()
        two.close()


def test_the_workers_see_no_gpu_even_where_the_search_was_given_one(tmp_path, monkeypatch):
    """TensorFlow in a worker takes a visible GPU's whole memory from the training: the workers hid GPUs only where
    CUDA_VISIBLE_DEVICES was unset, not under a user's CUDA_VISIBLE_DEVICES=0 (nor where Ray 2.60 leaves a node's GPUs
    visible to an actor given none)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with build_service("host", workers=1, cache_path=tmp_path / "latency.sqlite") as service:
        assert service._run_in_worker(os.getenv, "CUDA_VISIBLE_DEVICES") == ""
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"  # the search's own process keeps its GPU


def test_a_timing_call_is_given_the_cooldowns_it_pauses_for(tmp_path, monkeypatch):
    """task_timeout_s covered a whole batch, cooldown_s pauses included: a phone table built with a 40 s cooldown
    (24 layers a batch: 960 s > 900 s) had every batch killed, its timings lost."""
    from types import SimpleNamespace

    service = build_service("adb", serial="X", cooldown_s=40, task_timeout_s=900, workers=1,
                            cache_path=tmp_path / "latency.sqlite")
    waited = []
    pool = SimpleNamespace(submit=lambda fn, *args: SimpleNamespace(result=lambda timeout: waited.append(timeout)))
    monkeypatch.setattr(service, "_workers", lambda: pool)
    try:
        service._run_in_worker(len, [], timings=24)
        service._run_in_worker(len, [])  # a conversion: no cooldown
    finally:
        service.close()
    assert waited == [900 + 24 * 40, 900]
