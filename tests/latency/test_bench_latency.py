"""scripts/bench_latency.py without timing anything: --retime's figures worked by hand, --residual's comparison on a
synthetic table, and the refusals of the sections that read a stored table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_latency")


def test_repeat_figures_compare_each_timing_with_its_stored_latency(bench):
    stored = [10.0, 20.0, 40.0, 5.0]
    timed = [10.3, 19.1, 40.0, 5.2]  # moved +3%, -4.5%, 0%, +4%
    predicted = [10.0, 20.8, 43.6, 5.0]
    out = bench.repeat_figures(stored, timed, predicted, spreads=[0.01, 0.049, 0.05, 0.2])
    assert out["models"] == 4
    assert out["mean_move"] == pytest.approx((0.03 + 0.045 + 0.0 + 0.04) / 4)
    assert out["within_5"] == 1.0 and out["within_2"] == 0.25
    assert out["bias"] == pytest.approx((0.03 - 0.045 + 0.0 + 0.04) / 4)
    assert out["rms"] == pytest.approx(((0.03**2 + 0.045**2 + 0.04**2) / 4) ** 0.5)
    assert out["std_below_5"] == 0.5 and out["spread_max"] == 0.2  # 0.05 itself is not below 5%
    # against the stored truth: 0%, +4%, +9%, 0%; against the new: -2.9%, +8.9%, +9%, -3.8%
    assert out["predictor_stored"]["within_5"] == 0.75 and out["predictor_stored"]["within_10"] == 1.0
    assert out["predictor_timed_again"]["within_5"] == 0.5
    assert out["predictor_timed_again"]["max_rel"] == pytest.approx(43.6 / 40 - 1)
    mean = out["predictor_mean_of_both"]
    assert mean["bias_rel"] == pytest.approx(sum(p / ((s + t) / 2) - 1 for p, s, t in zip(predicted, stored, timed)) / 4)
    assert mean["kendall_tau"] == 1.0  # same order in all three


@pytest.mark.parametrize("argv, message", [
    (["--retime", "48"], "--retime needs --cache"),
    (["--retime", "1", "--cache", "CACHE"], "--retime must be at least 2"),
    (["--retime", "48", "--cache", "MISSING"], "no such file"),
    (["--residual"], "--residual needs --cache"),
    (["--residual", "--cache", "MISSING"], "no such file"),
    (["--residual", "--cache", "CACHE"], "no latency table for .* build it with: python -m latency table build"),
    (["--figures", "--only-modes", "--cache", "MISSING"], "no such file"),
    (["--modes", "--only-modes", "--cache", "MISSING"], "no such file"),
])
def test_table_sections_refuse_what_they_cannot_use(bench, tmp_path, monkeypatch, argv, message):
    (tmp_path / "latency.sqlite").write_bytes(b"")
    paths = {"CACHE": str(tmp_path / "latency.sqlite"), "MISSING": str(tmp_path / "none.sqlite")}
    monkeypatch.setattr(sys, "argv", ["bench_latency.py", *[paths.get(a, a) for a in argv]])
    with pytest.raises(SystemExit, match=message):
        bench.main()
    assert not (tmp_path / "none.sqlite").exists()  # nothing created where nothing was


@pytest.mark.parametrize("keep", [False, True])
def test_scratch_folders_are_removed_at_exit_unless_kept(tmp_path, keep):
    """A section's temporary folder (a retime copy holds gigabytes of conversions) is gone once the script exits."""
    import os
    import subprocess

    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('b', {str(ROOT / 'scripts' / 'bench_latency.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            f"p = m._scratch('bench_retime_', {keep})\n"
            "(p / 'models').mkdir(); (p / 'models' / 'a.tflite').write_bytes(b'x')\n"
            "print(p)\n"
            "raise SystemExit('error: a section failed')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 1 and "a section failed" in done.stderr
    made = Path(done.stdout.strip().splitlines()[-1])
    assert made.parent == tmp_path
    assert made.exists() == keep


def test_residual_comparison_matches_the_predictor_it_describes(bench):
    """The held-out figures of the comparison are the stated errors of the two predictors built on the same sets."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_latency_predictor import SHAPE, _predictor, _world

    from latency.predictor import arch_shape, features
    from search_spaces.layers import network_layers

    layers, rows = _world(160 + 40, effect=True, seed=3)

    def stored(models):
        feats = []
        for m in models:
            specs = network_layers(m["arch"], **SHAPE)
            feats.append(features(specs, [layers[s.key] for s in specs]))
        return feats, [arch_shape(m["arch"]) for m in models], [m["latency_ms"] for m in models]

    out = bench.residual_comparison(stored(rows[:160]), stored(rows[160:]), draws=2, sizes=(60, 150))
    assert set(out) == {"cv_calibration", "held_out", "subsets"}
    assert list(out["subsets"]) == ["60"]  # 150 + 100 tested is more than the 200 models pooled
    for residual, name in ((False, "ridge"), (True, "residual")):
        stated = _predictor(layers, rows[:160], rows[160:], residual=residual).stated_error
        for key in ("within_5", "within_10", "rmse_rel", "kendall_tau"):
            assert out["held_out"][name][key] == pytest.approx(stated[key])
    # the synthetic latencies carry an effect the ridge cannot see: the residual wins in cross-validation too
    assert out["cv_calibration"]["residual"]["rmse_rel"] < out["cv_calibration"]["ridge"]["rmse_rel"]


def test_floor_figures_tell_a_slower_cpu_from_a_held_thread(bench):
    steady = [(4.0, 4.0, 0)] * 49
    sessions = [
        steady + [(4.0, 4.0, 0)],  # spread 0
        steady + [(8.0, 8.0, 0)],  # one run twice as slow, on the CPU too: the CPU ran slower
        steady + [(8.0, 4.1, 1)],  # twice as slow in wall time only, with a collection: held, not slower
    ]
    out = bench.floor_figures(sessions)
    assert out["sessions"] == 3 and out["slow_runs"] == 2
    assert out["slow_runs_cpu"] == 1 and out["slow_runs_gc"] == 1
    assert out["slow_wall_cpu_x"] == [[pytest.approx(2.0, abs=0.01), pytest.approx(2.0, abs=0.01)],
                                      [pytest.approx(2.0, abs=0.01), pytest.approx(1.02, abs=0.01)]]
    one_slow = (sum((x - 4.08) ** 2 for x in [4.0] * 49 + [8.0]) / 50) ** 0.5 / 4.0  # std over the median
    assert out["spread_max"] == pytest.approx(one_slow) and one_slow > 0.05
    assert out["std_below_5"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("argv, message", [(["--floor", "1"], "--floor must be at least 2"),
                                           (["--floor", "3", "--floor-arch", "nonsense"], "--floor-arch")])
def test_floor_refuses_what_it_cannot_time(bench, monkeypatch, argv, message):
    monkeypatch.setattr(sys, "argv", ["bench_latency.py", *argv])
    with pytest.raises(SystemExit, match=message):
        bench.main()


def _no_sections(bench, monkeypatch) -> None:
    """Every section refuses to run: a check that must stop the command line before any section did not."""
    def ran(args):
        raise AssertionError("a section ran with a bad value")

    for name in ("bench_conversion", "predictor_figures", "stored_figures", "mode_searches", "run_figures",
                 "anchor_schemes", "retime_validation", "residual_figures", "spread_floor"):
        monkeypatch.setattr(bench, name, ran)


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--runs", "0"], "--runs must be >= 1, got 0"),
    (["--resolution", "0"], "--resolution must be >= 1, got 0"),
    (["--anchor", "--resolution", "-224"], "--resolution must be >= 1, got -224"),
    (["--predictor", "--validate", "0"], "--validate must be >= 1"),
    (["--run", "RUN", "--alone", "0"], "--alone must be >= 1"),
    (["--modes", "--only-modes", "--cache", "CACHE", "--budget", "0"], "--budget must be >= 1"),
    (["--modes", "--only-modes", "--cache", "CACHE", "--batch", "-2"], "--batch must be >= 1, got -2"),
    (["--modes", "--only-modes", "--cache", "CACHE", "--top-k", "0"], "--top-k must be >= 1"),
])
def test_bad_numbers_are_one_error_line_before_any_section(bench, tmp_path, monkeypatch, capsys, argv, message):
    """Not a traceback after minutes of conversions: one ``error:`` line, exit 2, as a bad flag."""
    _no_sections(bench, monkeypatch)
    (tmp_path / "latency.sqlite").write_bytes(b"")
    paths = {"CACHE": str(tmp_path / "latency.sqlite"), "RUN": str(tmp_path)}
    monkeypatch.setattr(sys, "argv", ["bench_latency.py", *[paths.get(a, a) for a in argv]])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err


def _built_cache(path: Path) -> Path:
    """A latency cache as a table build leaves it: a drift-anchor reference, a conversion and a timing."""
    from latency.cache import LatencyCache

    cache = LatencyCache(path)
    cache.put_anchor("anchor-key", "mnasnet_b1", "host", {"anchor": "mnasnet_b1"}, {"ref_ms": 4.0})
    cache.put_conversion("conv", {"arch": "mnasnet_a1", "resolution": 224, "channels": 3, "num_classes": 1000,
                                  "status": "failed", "error": "x"})
    cache.put_measurement("meas", "conv", {"arch": "mnasnet_a1", "latency_ms": 5.0}, "host", {})
    cache.close()
    return path


class _FakeStore:
    """The run store of a finished fake search: one measured child, one reference."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def children(self, **kwargs):
        from types import SimpleNamespace

        return [SimpleNamespace(arch="a", reused=False, measured=True, latency_source="measured", top1=0.8,
                                latency_ms=5.0, latency_prediction_error=None)]

    def references(self):
        return {"mnasnet_a1": {"arch": "mnasnet_a1", "latency_ms": 4.0}}


@pytest.fixture
def fake_modes(bench, tmp_path, monkeypatch):
    """``--modes`` with its searches, predictor and alone timings faked; ``events`` says what ran, in order."""
    from types import SimpleNamespace

    import latency.predictor
    import nas.run
    import nas.store
    from latency.cache import LatencyCache

    events: list = []

    def run_search(cfg, run_dir, overrides=None):
        cache = LatencyCache(cfg.latency.cache_path)
        events.append(("search", cfg.latency.mode, str(cfg.latency.cache_path), cache.counts(), len(cache.anchors())))
        # the search converts and times its children: they stay in the cache it was given
        cache.put_measurement(f"child-{cfg.latency.mode}", "conv", {"arch": "mnasnet_a1", "latency_ms": 5.0}, "host", {})
        cache.close()

    def load_predictor(host, **kwargs):
        events.append(("table", str(kwargs["cache_path"]), kwargs["resolution"]))
        return SimpleNamespace(predict=lambda arch: SimpleNamespace(latency_ms=5.0))

    monkeypatch.setattr(nas.run, "run_search", run_search)
    monkeypatch.setattr(nas.store, "RunStore", _FakeStore)
    monkeypatch.setattr(latency.predictor, "load_predictor", load_predictor)
    monkeypatch.setattr(bench, "references_alone", lambda *a, **k: events.append(("alone", str(a[2]))) or {})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(bench, "_scratch", lambda prefix, keep: scratch)
    cache = _built_cache(tmp_path / "table" / "latency.sqlite")
    monkeypatch.setattr(sys, "argv", ["bench_latency.py", "--modes", "--only-modes", "--cache", str(cache),
                                      "--budget", "2", "--batch", "2"])
    return events, cache


def test_modes_give_each_search_a_fresh_copy_of_the_table_cache(bench, fake_modes):
    """Same seed, same first batch: a shared copy let predict and hybrid find the measure run's timings."""
    events, table = fake_modes
    bench.main()
    searches = [e for e in events if e[0] == "search"]
    assert [e[1] for e in searches] == ["measure", "predict", "hybrid"]
    assert len({e[2] for e in searches}) == 3 and str(table) not in {e[2] for e in searches}
    for _, mode, _, counts, anchors in searches:  # nothing cached from the table build nor from another search
        assert counts == {"conversions": 0, "measurements": 0}, mode
        assert anchors == 1, mode  # the table's drift-anchor scale stays
    from latency.cache import LatencyCache

    original = LatencyCache(table)
    assert original.counts() == {"conversions": 1, "measurements": 1}  # the table cache itself untouched
    original.close()
    measure_cache = searches[0][2]
    assert events[0] == ("table", measure_cache, 224)  # the table checked before the first search
    assert events[-1] == ("alone", measure_cache)  # references alone on the measure search's cache


def test_modes_find_a_missing_table_before_the_measure_search(bench, fake_modes, monkeypatch):
    import latency.predictor
    from latency.predictor import LatencyTableMissing

    events, _ = fake_modes

    def missing(host, **kwargs):
        raise LatencyTableMissing("no latency table for host at 224 px; build it with: python -m latency table build")

    monkeypatch.setattr(latency.predictor, "load_predictor", missing)
    with pytest.raises(SystemExit, match="^error: no latency table .* build it with"):
        bench.main()
    assert not [e for e in events if e[0] == "search"]


def test_a_search_config_error_is_one_line(bench, fake_modes, monkeypatch):
    import nas.run
    from nas.components import ConfigError

    def refused(cfg, run_dir, overrides=None):
        raise ConfigError(["budget 2 is too small", "another problem"])

    monkeypatch.setattr(nas.run, "run_search", refused)
    with pytest.raises(SystemExit, match="^error: --modes, the measure search: budget 2 is too small; another problem$"):
        bench.main()


def test_json_holds_the_conversion_figures(bench, tmp_path, monkeypatch, capsys):
    """The default sections' figures are the JSON line's (it printed ``{}``)."""
    import json
    from types import SimpleNamespace

    import torchvision

    import latency
    import latency.calibration
    import latency.convert
    import latency.runners

    fast = {"mobilenet_v2": 6.0, "mnasnet_a1": 3.0, "mnasnet_b1": 3.0}  # cold worker first, then warm

    class Service:
        def measure(self, name, resolution):
            return SimpleNamespace(ok=True, error=None, convert_seconds=fast[name], tflite_path=name)

        def close(self):
            pass

    timings = {"mobilenet_v2": iter([2.0, 2.0]), "mnasnet_a1": iter([1.0, 3.0]), "mnasnet_b1": iter([4.0] * 4),
               "tv.tflite": iter([5.0, 5.0])}

    class Runner:
        def __init__(self, **kwargs):
            pass

        def time(self, path):
            return {"latency_ms": next(timings[str(path)])}

    monkeypatch.setattr(bench, "default_onnx2tf_seconds", lambda onnx, work: 9.0)
    monkeypatch.setattr(bench, "_scratch", lambda prefix, keep: tmp_path)
    monkeypatch.setattr(latency, "build_service", lambda *a, **k: Service())
    monkeypatch.setattr(latency.convert, "build_eval_model", lambda *a: None)
    monkeypatch.setattr(latency.convert, "export_onnx", lambda model, path, r, c: path)
    monkeypatch.setattr(latency.convert, "onnx_to_tflite", lambda onnx, work, fast: "tv.tflite")
    monkeypatch.setattr(latency.runners, "HostRunner", Runner)
    monkeypatch.setattr(latency.calibration, "write_calibration_file", lambda folder: None)
    monkeypatch.setattr(torchvision.models, "mnasnet1_0", lambda weights=None: SimpleNamespace(eval=lambda: None))
    monkeypatch.chdir(tmp_path)  # the section changes into its folder
    monkeypatch.setattr(sys, "argv", ["bench_latency.py", "--repeats", "2", "--runs", "5", "--json"])
    bench.main()
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    conv = out["conversion"]
    assert conv["default_seconds"] == {n: 9.0 for n in fast} and conv["fast_seconds"] == fast
    assert conv["warm_speedup"] == pytest.approx(3.0)  # warm children only
    assert conv["repeat_cv"] == {"mobilenet_v2": 0.0, "mnasnet_a1": pytest.approx(0.5), "mnasnet_b1": 0.0}
    assert conv["b1_ms"] == 4.0 and conv["torchvision_mnasnet1_0_ms"] == 5.0
    assert conv["b1_torchvision_ratio"] == pytest.approx(0.8)
    assert (conv["resolution"], conv["runs"], conv["repeats"]) == (224, 5, 2)


def test_json_is_not_printed_after_a_failure(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_latency.py", "--json", "--modes", "--only-modes", "--cache",
                                      str(tmp_path / "none.sqlite")])
    with pytest.raises(SystemExit, match="no such file"):
        bench.main()
    assert capsys.readouterr().out == ""  # not "{}", as if the sections had run and found nothing


def _run(tmp_path: Path, cache: Path, anchor: str | None = "mnasnet_b1") -> Path:
    """A finished host-latency search's run folder timed in ``cache``, with one reference."""
    from nas.store import RunStore

    run = tmp_path / "run"
    with RunStore(run) as store:
        store.set_meta("config", {"latency": {"_target_": "latency.build_service", "runner": "host",
                                              "anchor": anchor, "cache_path": str(cache)},
                                  "deploy": {"resolution": 224}})
        store.add_reference("mnasnet_a1", "mnasnet_a1", {"arch": "mnasnet_a1", "latency_ms": 4.0, "status": "ok"})
    return run


@pytest.mark.parametrize("cache_state, message", [
    ("missing", "its latency cache .* does not exist"),
    ("no anchor", "its latency cache .* holds no drift-anchor reference, though the run timed with anchor mnasnet_b1"),
])
def test_run_refuses_a_cache_without_its_anchor_scale(bench, tmp_path, monkeypatch, cache_state, message):
    """The references timed alone need the run cache's drift-anchor reference; a missing cache was created empty."""
    import latency
    from latency.cache import LatencyCache

    cache = tmp_path / "cache" / "latency.sqlite"
    if cache_state == "no anchor":
        LatencyCache(cache).close()
    run = _run(tmp_path, cache)

    def timed(*args, **kwargs):
        raise AssertionError("a reference was timed on another scale")

    monkeypatch.setattr(latency, "build_service", timed)
    monkeypatch.setattr(sys, "argv", ["bench_latency.py", "--run", str(run)])
    with pytest.raises(SystemExit, match=f"^error: --run {run}: {message}"):
        bench.main()
    assert cache.exists() == (cache_state != "missing")  # never created


@pytest.mark.parametrize("anchor", ["mnasnet_b1", None])
def test_run_times_references_alone_on_its_cache(bench, tmp_path, monkeypatch, anchor):
    """A cache with its anchor reference (or a run without an anchor) passes: the references are timed alone."""
    cache = _built_cache(tmp_path / "cache" / "latency.sqlite") if anchor else tmp_path / "cache" / "latency.sqlite"
    if not anchor:
        from latency.cache import LatencyCache

        LatencyCache(cache).close()
    run = _run(tmp_path, cache, anchor)
    seen = []
    monkeypatch.setattr(bench, "references_alone", lambda refs, host, cache, tmp, **k: seen.append(cache) or {})
    monkeypatch.setattr(sys, "argv", ["bench_latency.py", "--run", str(run)])
    bench.main()
    assert seen == [cache]


def test_share_anchors_never_creates_the_source(bench, tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        bench._share_anchors(tmp_path / "none.sqlite", tmp_path / "quiet" / "latency.sqlite")
    assert not (tmp_path / "none.sqlite").exists() and not (tmp_path / "quiet").exists()
