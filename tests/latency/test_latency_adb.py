"""The adb runner end to end against a device double named ``adb`` on PATH that really times with LiteRT."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latency import AdbRunner, DeviceError, build_service
from latency_fake_adb import install as install_fake_adb

SMALL = "ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16"


@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    """Fake adb first on PATH for this module (set before the service spawns its workers)."""
    root = tmp_path_factory.mktemp("phone")
    bin_dir = install_fake_adb(root / "bin").parent
    binary = root / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake android_aarch64 benchmark_model\n")
    saved = {k: os.environ.get(k) for k in ("PATH", "FAKE_ADB_ROOT", "FAKE_ADB_SERIALS", "FAKE_ADB_LOG")}
    os.environ.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_ADB_ROOT=str(root / "device"),
                      FAKE_ADB_SERIALS="FAKE0001", FAKE_ADB_LOG=str(root / "adb.log"))
    (root / "device").mkdir()
    yield {"root": root, "binary": binary, "log": root / "adb.log", "device": root / "device"}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def adb_service(phone):
    service = build_service("adb", benchmark_binary=str(phone["binary"]), cpu_mask="f0", warmup_runs=2, num_runs=7,
                            workers=1, retries=2, cache_path=phone["root"] / "cache" / "latency.sqlite")
    yield service
    service.close()


def _log(phone) -> list[list[str]]:
    if not phone["log"].exists():  # no adb call yet
        return []
    return [json.loads(line) for line in phone["log"].read_text().splitlines()]


def test_adb_measure_end_to_end(phone, adb_service):
    assert shutil.which("adb").startswith(str(phone["root"]))
    result = adb_service.measure(SMALL, resolution=32, num_classes=10)
    assert result.status == "ok", result.error
    assert result.runner == "adb" and result.device == "adb:Pixel 2:FAKE0001"
    assert result.runs == 7 and result.latency_ms > 0 and result.std_ms >= 0 and result.p95_ms >= result.min_ms
    assert result.extra["timing"]["mode"] == "device"  # a phone is not the host: no quiet gate
    assert result.extra["inference_timings_us"]["Inference (avg)"] == pytest.approx(result.mean_ms * 1000, rel=1e-3)
    calls = _log(phone)
    shells = [c[-1] for c in calls if "shell" in c]
    bench = [s for s in shells if "benchmark_model" in s and "--graph" in s]
    assert len(bench) == 1 and bench[0].startswith("taskset f0 /data/local/tmp/benchmark_model")
    assert "--num_threads=1" in bench[0] and "--num_runs=7" in bench[0] and "--warmup_runs=2" in bench[0]
    assert not list((phone["device"] / "data/local/tmp").glob("mnas_*"))  # the model is removed afterwards
    assert adb_service.measure(SMALL, resolution=32, num_classes=10).cached


def test_binary_pushed_once_and_dropping_device_is_retried(phone, adb_service):
    (phone["device"] / "drops").write_text("1")  # the next benchmark run fails with 'device offline'
    result = adb_service.measure(SMALL, resolution=40, num_classes=10)
    assert result.status == "ok", result.error
    calls = _log(phone)
    assert sum(1 for c in calls if "push" in c and c[-1].endswith("/benchmark_model")) == 1
    assert any(c[-1] == "wait-for-device" for c in calls)


def test_shell_injection_is_quoted(phone, adb_service, tmp_path):
    src = Path(adb_service.export(SMALL, tmp_path / "x", resolution=32, num_classes=10)["tflite"])
    evil = tmp_path / "a b;touch PWNED" / "m $(touch PWNED).tflite"
    evil.parent.mkdir()
    shutil.copyfile(src, evil)
    runner = AdbRunner(benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=2, retries=0)
    timing = runner.time(evil)
    assert timing["runs"] == 2
    assert not list(phone["root"].rglob("PWNED")) and not Path("PWNED").exists()


def test_missing_binary_and_unknown_serial_are_failed_results(phone, tmp_path):
    with build_service("adb", benchmark_binary=str(tmp_path / "nope"), workers=1, retries=0,
                       cache_path=phone["root"] / "cache" / "latency.sqlite") as service:
        result = service.measure(SMALL, resolution=32, num_classes=10)
    assert result.status == "failed" and "benchmark_model binary not found" in result.error
    assert result.extra.get("transient")  # the set-up's failure, not the model's
    with pytest.raises(DeviceError, match="no Android device"):
        env_serials = os.environ["FAKE_ADB_SERIALS"]
        os.environ["FAKE_ADB_SERIALS"] = ""
        try:
            AdbRunner(benchmark_binary=str(phone["binary"])).resolve_serial()
        finally:
            os.environ["FAKE_ADB_SERIALS"] = env_serials


def test_cli_devices_lists_fake_phone(phone):
    out = subprocess.run([sys.executable, "-m", "latency", "devices", "--json"], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["devices"]
    assert [r["runner"] for r in rows] == ["host", "adb"] and rows[1]["serial"] == "FAKE0001"
    out = subprocess.run([sys.executable, "-m", "latency", "devices", "--ray-resources"], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert json.loads(out.stdout) == {"phone_FAKE0001": 1}  # for ray start --resources on the phones' node


def test_two_phones_need_a_serial_and_each_is_its_own_device(phone, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_SERIALS", "PHONE_A,PHONE_B")
    # the search's option and the latency command line's flag (was: latency.serial alone, in both)
    with pytest.raises(DeviceError, match=r"2 devices attached .*latency\.serial \(python -m latency --serial\)"):
        AdbRunner(benchmark_binary=str(phone["binary"])).resolve_serial()
    a = AdbRunner(benchmark_binary=str(phone["binary"]), serial="PHONE_B")
    assert a.device_id == "adb:Pixel 2:PHONE_B" and a.lock_name == "adb-PHONE_B"  # one lock (one queue) per phone
    with build_service("adb", serial="PHONE_B", benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=3,
                       workers=1, cache_path=tmp_path / "latency.sqlite") as service:
        result = service.measure(SMALL, resolution=32, num_classes=10)
    assert result.status == "ok", result.error
    assert result.device == "adb:Pixel 2:PHONE_B" and result.runs == 3
    assert any(argv[:2] == ["-s", "PHONE_B"] and "push" in argv for argv in _log(phone))


def test_cli_measure_json_and_bad_arch(phone, tmp_path):
    # the binary from the environment, as configs/latency/adb.yaml takes it
    env = dict(os.environ, MNAS_CACHE_DIR=str(tmp_path / "cache"), TFLITE_BENCHMARK_MODEL=str(phone["binary"]))
    cmd = [sys.executable, "-m", "latency", "measure", SMALL, "--runner", "adb", "--cpu-mask", "f0", "--resolution", "32", "--classes", "10", "--warmup", "1", "--runs", "4", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("latency_ms", "std_ms", "runs", "max_abs_err", "tflite_path", "cached"):
        assert key in result, key
    assert result["runs"] == 4 and result["latency_ms"] > 0 and result["cached"] is False
    assert result["max_abs_err"] < 1e-3 and Path(result["tflite_path"]).is_file()

    bad = subprocess.run([sys.executable, "-m", "latency", "measure", "ir_r1_k4_s1_e6_c16", "--json"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[2])
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "k4" in bad.stderr


def test_cli_measure_with_no_phone_prints_what_it_knows_not_none(phone, tmp_path):
    env = dict(os.environ, MNAS_CACHE_DIR=str(tmp_path / "cache"), TFLITE_BENCHMARK_MODEL=str(phone["binary"]),
               FAKE_ADB_SERIALS="")
    out = subprocess.run([sys.executable, "-m", "latency", "measure", SMALL, "--runner", "adb", "--resolution", "32",
                          "--classes", "10"], capture_output=True, text=True, timeout=240, env=env,
                         cwd=Path(__file__).parents[2])
    assert out.returncode == 1, out.stderr
    # was "device: None (adb)", "conversion: max abs error None, ..." and "tflite: None"
    assert "None" not in out.stdout and "device:      none (adb)" in out.stdout, out.stdout
    assert out.stdout.splitlines()[-1].startswith("status:      failed: no Android device attached")
    assert out.stdout.splitlines()[-1].endswith("latency=host (python -m latency --runner host)")  # was: latency=host


def test_a_phone_gone_for_good_fails_the_session_at_once_naming_it(phone, tmp_path, monkeypatch):
    """adb wait-for-device blocks until the phone is back: it used to run with the whole timeout_s and let its
    TimeoutExpired escape the retries, and every other model of the session then waited out retries of its own."""
    serials = tmp_path / "serials"
    serials.write_text("FAKE0001")
    monkeypatch.setenv("FAKE_ADB_SERIALS_FILE", str(serials))
    monkeypatch.setenv("FAKE_ADB_WAIT_BLOCKS", "1")
    archs = [SMALL, "ds_r1_k5_s1_c8-ir_r1_k3_s2_e3_c16", "ds_r1_k3_s1_c8-ir_r1_k5_s2_e3_c16"]
    with build_service("adb", serial="FAKE0001", benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=3,
                       workers=1, retries=1, timeout_s=2, cache_path=tmp_path / "latency.sqlite") as service:
        conversions = [service.convert(arch, resolution=24, num_classes=10) for arch in archs]
        assert [c["status"] for c in conversions] == ["ok"] * 3
        assert service.device_id
        serials.write_text("")  # unplugged
        started = len(_log(phone)) if phone["log"].exists() else 0
        results = service.time_many(conversions)  # one timing session
    assert [r.status for r in results] == ["failed"] * 3
    assert "failed after 2 attempts" in results[0].error, results[0].error
    assert all("FAKE0001 is not attached" in r.error for r in results[1:]), [r.error for r in results]
    assert all(r.extra.get("transient") for r in results)  # the phone's failure: timed again when it is back
    waits = [c for c in _log(phone)[started:] if "wait-for-device" in c]
    assert len(waits) == 1  # one model's one retry waited; the others were failed at once


def test_a_model_the_phone_cannot_run_is_the_models_failure_not_the_moments(phone, tmp_path):
    """benchmark_model fails on the model, its retries spent, while the phone answers: a search may reuse that
    failure (a failed timing of a phone that dropped is transient: see the test above)."""
    from latency.cache import file_digest

    with build_service("adb", serial="FAKE0001", benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=3,
                       workers=1, retries=0, cache_path=tmp_path / "latency.sqlite") as service:
        conversion = service.convert(SMALL, resolution=24, num_classes=10)
        garbage = tmp_path / "garbage" / "model.tflite"
        garbage.parent.mkdir()
        garbage.write_bytes(b"not a flatbuffer" * 64)
        result = service.time({**conversion, "key": "e" * 64, "tflite_path": str(garbage),
                               "artifacts": {**conversion["artifacts"], "tflite_path": file_digest(garbage)}})
    assert result.status == "failed" and not result.extra.get("transient"), (result.error, result.extra)


def test_a_cleanup_on_the_phone_that_fails_does_not_discard_the_timing(phone, tmp_path, monkeypatch):
    """The model's removal after a timing ran with the whole timeout_s and raised: a phone that hung there lost a
    timing that had succeeded (and replaced a failed run's own error, which the retries' check now decides)."""
    monkeypatch.setenv("FAKE_ADB_HANG", "rm -f")  # until the runner's timeout gives up on it
    with build_service("adb", serial="FAKE0001", benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=3,
                       workers=1, retries=0, timeout_s=10, cache_path=tmp_path / "latency.sqlite") as service:
        result = service.measure(SMALL, resolution=24, num_classes=10)
    assert result.status == "ok" and result.runs == 3, result.error


@pytest.mark.parametrize("field, value, says", [
    ("retries", -1, "latency.retries must be a non-negative integer, got -1"),
    ("retries", True, "latency.retries must be a non-negative integer, got True"),
    ("timeout_s", -5, "latency.timeout_s must be a positive number, got -5"),
    ("timeout_s", 0, "latency.timeout_s must be a positive number, got 0"),
    ("timeout_s", float("inf"), "latency.timeout_s must be a positive number, got inf"),
])
def test_negative_retries_or_timeout_are_refused_in_one_line(field, value, says):
    """retries=-1 never called the push (the binary never reached the phone, and a misleading chmod error followed);
    a timeout <= 0 failed every adb command. The host runner has neither field: a config giving it one is refused."""
    with pytest.raises(ValueError) as err:
        AdbRunner(**{field: value})
    assert str(err.value) == says
    with pytest.raises(ValueError) as err:  # a config's dry run (latency.retries=-1 in Hydra) checks it before any run
        build_service("adb", check_only=True, **{field: value})
    assert str(err.value) == says
    with pytest.raises(ValueError, match=f"unknown latency field.s. for runner 'host': {field}"):
        build_service("host", check_only=True, **{field: 1})


ON, OFF = "set-fixed-performance-mode-enabled true", "set-fixed-performance-mode-enabled false"


def _fixed_performance_calls(phone, since: int = 0) -> list[str]:
    return [" ".join(c[-2:]) for c in _log(phone)[since:] if "set-fixed-performance-mode-enabled" in c]


def test_fixed_performance_and_cooldown_are_in_the_key_only_when_set(phone):
    """A timing taken without fixed performance mode (or without the cooldown) answered a request with it: neither
    was part of the settings. Set, each is; with the defaults the settings (so every cache key) are as before."""
    default = AdbRunner(benchmark_binary=str(phone["binary"])).settings
    assert sorted(default) == ["binary", "binary_size", "cpu_mask", "num_runs", "runner", "threads", "use_xnnpack",
                               "warmup_runs"]
    fixed = AdbRunner(benchmark_binary=str(phone["binary"]), fixed_performance=True).settings
    cool = AdbRunner(benchmark_binary=str(phone["binary"]), cooldown_s=1).settings
    assert fixed == {**default, "fixed_performance": True} and cool == {**default, "cooldown_s": 1.0}
    assert AdbRunner(benchmark_binary=str(phone["binary"]), cooldown_s=1.0).settings == cool


def test_fixed_performance_is_switched_off_when_the_service_closes(phone, adb_service):
    """Switched on before the first timing and never off: the phone kept its fixed clocks after the search. The
    timing runs in the service's worker, which switches it off as it ends (the service's close)."""
    assert adb_service.measure(SMALL, resolution=32, num_classes=10).status == "ok"  # without fixed performance
    started = len(_log(phone))
    with build_service("adb", benchmark_binary=str(phone["binary"]), cpu_mask="f0", warmup_runs=2, num_runs=7,
                       workers=1, retries=2, fixed_performance=True, cache_path=adb_service.cache_path) as service:
        result = service.measure(SMALL, resolution=32, num_classes=10)
        assert result.status == "ok", result.error
        assert not result.cached  # timed again: the cached timing was taken without it
        assert _fixed_performance_calls(phone, started) == ["set-fixed-performance-mode-enabled true"]
    on, *off = _fixed_performance_calls(phone, started)
    # the worker switches it off as it ends; one still alive after the close's grace is killed, and the service
    # switches it off again for it (a loaded machine)
    assert on == "set-fixed-performance-mode-enabled true" and off and set(off) == {
        "set-fixed-performance-mode-enabled false"}


@pytest.mark.parametrize("fixed_performance", [True, False])
def test_runner_close_switches_fixed_performance_off_only_if_it_switched_it_on(phone, adb_service, tmp_path,
                                                                               fixed_performance):
    tflite = adb_service.export(SMALL, tmp_path / "x", resolution=32, num_classes=10)["tflite"]
    started = len(_log(phone))
    runner = AdbRunner(benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=2, retries=0,
                       fixed_performance=fixed_performance)
    assert runner.time(tflite)["runs"] == 2
    runner.close()
    runner.close()  # once is enough
    on, off = "set-fixed-performance-mode-enabled true", "set-fixed-performance-mode-enabled false"
    assert _fixed_performance_calls(phone, started) == ([on, off] if fixed_performance else [])
    assert runner.time(tflite)["runs"] == 2  # a closed runner sets up again
    runner.close()
    assert _fixed_performance_calls(phone, started) == ([on, off] * 2 if fixed_performance else [])


def test_a_phone_without_fixed_performance_mode_is_one_line_not_timings_under_its_key(phone, adb_service, tmp_path,
                                                                                    monkeypatch):
    """Android 10 and older have no fixed performance mode: the refused command was ignored, and the timings were
    stored under the fixed_performance key though taken without it."""
    tflite = adb_service.export(SMALL, tmp_path / "x", resolution=32, num_classes=10)["tflite"]
    monkeypatch.setenv("FAKE_ADB_SDK", "29")
    runner = AdbRunner(benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=2, retries=0,
                       fixed_performance=True)
    with pytest.raises(DeviceError) as err:
        runner.time(tflite)
    assert str(err.value) == ("phone FAKE0001 refused fixed performance mode (cmd power set-fixed-performance-mode-"
                              "enabled true: Unknown command: set-fixed-performance-mode-enabled); it needs Android "
                              "11 or later: set latency.fixed_performance=false")
    assert AdbRunner(benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=2).time(tflite)["runs"] == 2


def test_a_search_ending_leaves_fixed_performance_on_for_another_still_timing_with_it(phone, adb_service, tmp_path):
    """Two searches share a phone (its lock orders their timings): the first to end switched fixed performance
    mode off, even in the middle of the other's timing. The last runner using the mode switches it off."""
    tflite = adb_service.export(SMALL, tmp_path / "x", resolution=32, num_classes=10)["tflite"]
    first, second = (AdbRunner(benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=2, retries=0,
                               fixed_performance=True) for _ in range(2))
    assert first.time(tflite)["runs"] == 2 and second.time(tflite)["runs"] == 2
    started = len(_log(phone))
    second.close()  # the other search ends: this one still times with the mode
    assert _fixed_performance_calls(phone, started) == []
    assert first.time(tflite)["runs"] == 2
    first.close()
    assert _fixed_performance_calls(phone, started) == [OFF]
    assert second.time(tflite)["runs"] == 2  # a closed runner joins again; now the only user
    second.close()
    assert _fixed_performance_calls(phone, started) == [OFF, ON, OFF]


def test_every_timing_runs_in_fixed_performance_mode_also_after_the_phone_rebooted(phone, adb_service, tmp_path,
                                                                                  monkeypatch):
    """The mode is set again in each benchmark's own shell call: a phone that rebooted between two timings, or
    dropped and came back rebooted between a timing's retries, has lost it. Before, it was set in an adb call of its
    own before each timing (one round trip more per model), and not again between the retries."""
    tflite = adb_service.export(SMALL, tmp_path / "x", resolution=32, num_classes=10)["tflite"]
    monkeypatch.setenv("FAKE_ADB_TIMES", str(tmp_path / "times.jsonl"))
    runner = AdbRunner(benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=2, retries=1,
                       fixed_performance=True)
    assert runner.time(tflite)["runs"] == 2
    started = len(_log(phone))
    (phone["device"] / "fixed-performance-FAKE0001").unlink()  # the phone rebooted between two timings
    assert runner.time(tflite)["runs"] == 2
    (phone["device"] / "drops").write_text("1")  # the next run drops the phone, which comes back rebooted
    assert runner.time(tflite)["runs"] == 2
    runs = [json.loads(line) for line in (tmp_path / "times.jsonl").read_text().splitlines()]
    assert [(r["status"], r["fixed_performance"]) for r in runs] == [(0, True), (0, True), (1, False), (0, True)]
    assert _fixed_performance_calls(phone, started) == []  # no adb call of its own after the first
    runner.close()
    assert not (phone["device"] / "fixed-performance-FAKE0001").exists()


def test_a_search_without_fixed_performance_times_without_it_while_another_search_uses_it(phone, adb_service,
                                                                                          tmp_path, monkeypatch):
    """A search without the mode shared the phone with one that had switched it on: its timings, stored without
    the fixed_performance key, were taken in fixed performance mode. Its runs switch the mode off for themselves
    while another runner uses it (the other search's runs set it again); with no user, it is not touched."""
    tflite = adb_service.export(SMALL, tmp_path / "x", resolution=32, num_classes=10)["tflite"]
    monkeypatch.setenv("FAKE_ADB_TIMES", str(tmp_path / "times.jsonl"))
    fixed, plain = (AdbRunner(benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=2, retries=0,
                              fixed_performance=on) for on in (True, False))
    started = len(_log(phone))
    for runner in (plain, fixed, plain, fixed):
        assert runner.time(tflite)["runs"] == 2
    fixed.close()
    assert plain.time(tflite)["runs"] == 2
    runs = [json.loads(line)["fixed_performance"] for line in (tmp_path / "times.jsonl").read_text().splitlines()]
    assert runs == [False, True, False, True, False]
    bench = [c[-1].partition("/data/local/tmp/benchmark_model")[0].strip() for c in _log(phone)[started:]
             if "--graph" in c[-1]]
    on, off = f"cmd power {ON} &&", f"cmd power {OFF} &&"
    assert bench == ["", on, off, on, ""]  # plain, fixed, plain, fixed, plain alone
    assert _fixed_performance_calls(phone, started) == [ON, OFF]  # fixed's first setting and its close


def test_a_service_ending_leaves_fixed_performance_on_for_another_runner_using_it(phone, adb_service, tmp_path):
    """The same across processes: the service's worker (another process) lets go of the mode as it ends, and
    leaves it on while a runner of this process still uses it."""
    tflite = adb_service.export(SMALL, tmp_path / "x", resolution=32, num_classes=10)["tflite"]
    other = AdbRunner(benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=2, retries=0,
                      fixed_performance=True)
    assert other.time(tflite)["runs"] == 2
    started = len(_log(phone))
    with build_service("adb", benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=2, workers=1,
                       retries=0, fixed_performance=True, cache_path=adb_service.cache_path) as service:
        assert service.measure(SMALL, resolution=44, num_classes=10).status == "ok"
    assert _fixed_performance_calls(phone, started) == [ON]
    other.close()
    assert _fixed_performance_calls(phone, started) == [ON, OFF]


@pytest.mark.parametrize("another_user", [False, True])
def test_a_worker_killed_for_a_hung_timing_leaves_fixed_performance_off(phone, adb_service, monkeypatch, tmp_path,
                                                                        another_user):
    """The service kills a worker whose timing hangs (latency.task_timeout_s); a killed process runs no finalizer,
    so the phone kept its fixed clocks. The service switches the mode off itself, unless another runner (another
    search on the phone) still uses it."""
    other = AdbRunner(benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=2, retries=0,
                      fixed_performance=True)
    if another_user:
        tflite = adb_service.export(SMALL, tmp_path / "x", resolution=32, num_classes=10)["tflite"]
        assert other.time(tflite)["runs"] == 2
    monkeypatch.setenv("FAKE_ADB_HANG", "--graph")  # benchmark_model never answers (the worker inherits it)
    monkeypatch.setenv("FAKE_ADB_UNHANG", str(tmp_path / "unhang"))
    try:
        with build_service("adb", benchmark_binary=str(phone["binary"]), warmup_runs=1, num_runs=2, workers=1,
                           retries=0, fixed_performance=True, cache_path=adb_service.cache_path) as service:
            conversion = service.convert(SMALL, resolution=32, num_classes=10)
            service._run_in_worker(os.getpid)  # the worker has started (a cached conversion needs none)
            started = len(_log(phone))
            service.task_timeout_s = 3.0
            result = service.time(conversion)
            assert result.status == "failed" and "task_timeout_s" in result.error
            # now, not only once the service closes
            assert _fixed_performance_calls(phone, started) == ([ON] if another_user else [ON, OFF])
    finally:
        (tmp_path / "unhang").touch()  # the hung fake adb of the killed worker ends too
    other.close()
    assert _fixed_performance_calls(phone, started) == [ON, OFF]


def test_a_worker_whose_search_was_killed_switches_fixed_performance_off(phone, adb_service, tmp_path):
    """kill -9 of the search: its latency worker ends with it (it watches its parent) by os._exit, which runs no
    finalizer; it switches the phone's fixed performance mode off before it goes."""
    script = tmp_path / "search.py"
    script.write_text(f"""
import os, signal
from latency import build_service
if __name__ == "__main__":  # the workers are spawned: they import this file
    service = build_service("adb", benchmark_binary={str(phone["binary"])!r}, warmup_runs=1, num_runs=2, workers=1,
                            retries=0, fixed_performance=True, cache_path={str(adb_service.cache_path)!r})
    assert service.measure({SMALL!r}, resolution=36, num_classes=10).status == "ok"
    print("timed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")
    started = len(_log(phone))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == -9 and proc.stdout.strip() == "timed", proc.stderr[-2000:]
    deadline = time.monotonic() + 30  # the worker notices within its poll (0.5 s)
    while time.monotonic() < deadline and _fixed_performance_calls(phone, started) != [ON, OFF]:
        time.sleep(0.2)
    assert _fixed_performance_calls(phone, started) == [ON, OFF]


def test_an_adb_command_that_hangs_is_one_line_naming_it(phone, adb_service, tmp_path, monkeypatch):
    """A hung adb server or phone: subprocess's TimeoutExpired escaped devices() and every adb call outside the
    retries (the phone's model name, chmod, ...) as a traceback."""
    runner = AdbRunner(serial="FAKE0001", benchmark_binary=str(phone["binary"]), retries=0, timeout_s=1)
    monkeypatch.setenv("FAKE_ADB_HANG", "getprop")
    with pytest.raises(DeviceError) as err:
        runner.device_id
    assert str(err.value) == "adb shell getprop on FAKE0001 gave no answer within 1 s (latency.timeout_s)"
    tflite = adb_service.export(SMALL, tmp_path / "x", resolution=32, num_classes=10)["tflite"]
    monkeypatch.setenv("FAKE_ADB_HANG", "chmod")
    with pytest.raises(DeviceError, match=r"^adb shell chmod on FAKE0001 gave no answer within 1 s"):
        runner.time(tflite)
    monkeypatch.setenv("FAKE_ADB_HANG", "devices")
    with pytest.raises(DeviceError, match=r"^adb devices gave no answer within 1 s: the adb server may be hung; adb kill-server"):
        runner.devices()


def test_cli_devices_with_a_hung_adb_says_so_in_one_line(phone, monkeypatch, capsys):
    from latency import runners
    from latency.__main__ import main

    monkeypatch.setattr(runners, "QUICK_ADB_S", 1.0)
    monkeypatch.setenv("FAKE_ADB_HANG", "devices")
    assert main(["devices"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.splitlines()[1:] == [
        "no Android device attached (adb devices gave no answer within 1 s: the adb server may be hung; adb "
        "kill-server restarts it)"]
    assert main(["devices", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["adb"].startswith("adb devices gave no answer within 1 s")


def test_cli_fixed_performance_and_cooldown_flags_are_the_phones(capsys):
    """Both are part of a table's identity now: the CLI builds and reads the table a search with them uses."""
    from latency.__main__ import _parsers, _runner_fields, main

    args = _parsers().parse_args(["measure", SMALL, "--runner", "adb", "--fixed-performance", "--cooldown", "0.5"])
    fields = _runner_fields(args)
    assert fields["fixed_performance"] is True and fields["cooldown_s"] == 0.5
    fields = _runner_fields(_parsers().parse_args(["measure", SMALL, "--runner", "adb"]))
    assert fields["fixed_performance"] is False and fields["cooldown_s"] == 0.0
    assert main(["measure", SMALL, "--fixed-performance", "--cooldown", "1"]) == 2
    assert capsys.readouterr().err == ("error: --fixed-performance, --cooldown: settings of the adb runner, not of "
                                       "--runner host\n")


def test_a_phone_that_does_not_say_its_model_is_a_device_error_not_an_unknown_phone(tmp_path):
    """getprop's failure (offline, unauthorized) was read as the model "unknown", kept for the service's life:
    timings were cached as adb:unknown:SERIAL and tables built as adb:unknown, one table for every such phone."""
    adb = tmp_path / "adb"
    adb.write_text("#!/bin/sh\necho 'error: device unauthorized.' >&2\nexit 1\n")
    adb.chmod(0o755)
    runner = AdbRunner(serial="ABC", adb=str(adb))
    for identity in ("device_id", "device_model"):
        with pytest.raises(DeviceError, match=r"^phone ABC did not say its model \(adb shell getprop "
                                              r"ro.product.model: error: device unauthorized.\)$"):
            getattr(runner, identity)
    adb.write_text("#!/bin/sh\necho 'Pixel 2'\n")  # authorized now: asked again, not kept as unknown
    assert runner.device_id == "adb:Pixel 2:ABC" and runner.device_model == "adb:Pixel 2"
