"""Latency service: benchmark_model parsing, real adb 'no devices', and one real host conversion + timing."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from latency import LatencyResult, build_service, parse_adb_devices, parse_benchmark_output

SMALL = "ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16"

NEW_FORMAT = """INFO: Replacing 40 out of 40 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions.
INFO: count=10 first=9000 curr=8000 min=7900 max=9000 avg=8100 std=300 p5=7900 median=8050 p95=9000
INFO: count=50 first=8000 curr=7800 min=7700 max=9100 avg=7900.5 std=120 p5=7700 median=7850 p95=8200
INFO: Inference timings in us: Init: 3000, First inference: 9000, Warmup (avg): 8100, Inference (avg): 7900.5
"""


def test_parse_new_format_uses_measured_line_median():
    out = parse_benchmark_output(NEW_FORMAT)
    assert out["runs"] == 50
    assert out["latency_ms"] == pytest.approx(7.85)
    assert out["mean_ms"] == pytest.approx(7.9005)
    assert out["p95_ms"] == pytest.approx(8.2)
    assert out["extra"]["delegate"]["partitions"] == 1


def test_parse_scientific_and_all_equal():
    text = "count=1 curr=2.95034e+06\ncount=3 curr=2.95034e+06\n"
    out = parse_benchmark_output(text)
    assert out["runs"] == 3 and out["latency_ms"] == pytest.approx(2950.34)
    with pytest.raises(ValueError):
        parse_benchmark_output("garbage only\n")


def test_parse_adb_devices():
    text = "List of devices attached\nABC123\tdevice product:x model:Pixel_2 device:walleye\nZZ\toffline\n\n"
    devices = parse_adb_devices(text)
    assert [d["serial"] for d in devices][:1] == ["ABC123"]


@pytest.mark.skipif(shutil.which("adb") is None, reason="Debian adb client not installed")
def test_real_adb_reports_no_devices(tmp_path):
    env = dict(os.environ, ADB_SERVER_SOCKET="tcp:localhost:15937", HOME=str(tmp_path))
    try:
        out = subprocess.run(["adb", "devices"], capture_output=True, text=True, timeout=60, env=env)
        assert "List of devices attached" in out.stdout
        assert [d for d in parse_adb_devices(out.stdout) if d.get("state") == "device"] == []
    finally:
        subprocess.run(["adb", "kill-server"], capture_output=True, timeout=30, env=env)


def test_host_measure_real_conversion_and_cache(host_service):
    result = host_service.measure(SMALL, resolution=32, channels=3, num_classes=10)
    assert result.status == "ok", result.error
    assert result.latency_ms > 0 and result.runs == 5 and len(result.samples_ms) == 5
    assert result.max_abs_err is not None and result.max_abs_err < 1e-3
    assert os.path.exists(result.tflite_path) and not result.cached
    again = host_service.measure(SMALL, resolution=32, channels=3, num_classes=10)
    assert again.cached and again.latency_ms == result.latency_ms
    assert LatencyResult.from_dict(again.to_dict()).latency_ms == again.latency_ms


def test_bad_arch_raises_value_error(host_service):
    with pytest.raises(ValueError):
        host_service.measure("not_an_arch_xx", resolution=32)


def test_rounds_pick_the_least_disturbed_round():
    from latency.runners import summarize_rounds

    quiet, slow, fast_but_disturbed = [5.0, 5.1, 5.2], [7.0, 7.2, 6.9], [4.0, 4.1, 4.2]
    out = summarize_rounds([slow, quiet, fast_but_disturbed], [False, False, True])
    assert out["latency_ms"] == pytest.approx(5.1) and out["extra"]["round_chosen"] == 1
    assert out["runs"] == 9 and out["min_ms"] == 4.0  # the spread covers every run
    assert summarize_rounds([slow, fast_but_disturbed], [True, True])["latency_ms"] == pytest.approx(4.1)


def test_anchored_rounds_take_the_median_of_the_undisturbed():
    from latency.runners import summarize_rounds

    # Rounds already corrected by the drift anchor: the disturbed round 2 does not count, the rest give their median.
    rounds = [[5.0, 5.2, 5.1], [5.1, 5.0, 5.2], [3.0, 3.0, 3.0]]
    out = summarize_rounds(rounds, [False, False, True], anchored=True)
    assert out["latency_ms"] == pytest.approx(5.1) and out["extra"]["rounds_used"] == [0, 1]
    assert out["extra"]["round_medians_ms"] == pytest.approx([5.1, 5.1, 3.0])
    assert out["runs"] == 9 and out["min_ms"] == 3.0  # the spread covers every run
    three = summarize_rounds([[4.0], [5.0], [9.0]], [False] * 3, anchored=True)
    assert three["latency_ms"] == 5.0  # the median of three, not the lowest


def test_an_output_holding_nan_or_inf_never_matches():
    import numpy as np

    from latency.convert import output_error

    ref = np.array([[1.0, -2.0, 3.0]], dtype=np.float32)
    assert output_error(ref + np.float32(0.5), ref) == pytest.approx(0.5)
    for bad in (np.nan, np.inf):
        got = ref.copy()
        got[0, 1] = bad
        assert output_error(got, ref) == float("inf")  # was 0.0 for a NaN: max(0.0, nan) is 0.0
        assert output_error(ref, got) == float("inf")  # PyTorch's own output unusable: no match either


def test_a_nan_output_is_a_failed_conversion_the_cache_can_count(tmp_path, monkeypatch):
    """Its error is stored as null, not JSON's non-standard Infinity, which SQLite's JSON functions refuse: every
    later ``cache info`` failed with 'malformed JSON' (a row stored so by an earlier version is counted too)."""
    import json
    import math

    import latency.convert as convert
    from latency.cache import LatencyCache

    monkeypatch.setattr(convert, "export_onnx", lambda model, path, size, channels: path)
    monkeypatch.setattr(convert, "onnx_to_tflite", lambda onnx_path, out_dir, fast: out_dir / "model_float32.tflite")
    monkeypatch.setattr(convert, "compare_outputs", lambda model, tflite, images: (math.inf, math.inf))
    record = convert.convert_module(None, size=8, channels=3, out_dir=tmp_path / "m", atol=1e-3, rtol=1e-3,
                                    fast=True, check_images=1, start=0.0)
    assert record["status"] == "failed" and "NaN or infinity" in record["error"]
    assert record["max_abs_err"] is None and record["max_rel_err"] is None
    cache = LatencyCache(tmp_path / "latency.sqlite")
    cache.put_conversion("k1", {**record, "arch": "a", "resolution": 8, "channels": 3, "num_classes": 10})
    legacy = {**record, "arch": "b", "resolution": 8, "channels": 3, "num_classes": 10, "max_abs_err": math.inf}
    cache.put_conversion("k2", legacy)
    assert "Infinity" in json.dumps(legacy)
    assert cache.conversion_counts() == {"ok": 0, "evicted": 0, "failed": 2}
    cache.close()
