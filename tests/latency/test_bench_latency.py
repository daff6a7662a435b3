"""scripts/bench_latency.py without timing anything: --retime's figures worked by hand, --residual's comparison on a
synthetic table, and the refusals of the sections that read a stored table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_latency", ROOT / "scripts" / "bench_latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
