"""The latency cache's size cap: least recently used converted models go first, their timings stay."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from latency import build_service
from latency.__main__ import main
from latency.cache import LatencyCache, LatencyCacheError

MB = 1_000_000
SMALL = "ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16"
SHAPE = {"resolution": 32, "channels": 3, "num_classes": 10}


def _model(cache: LatencyCache, key: str, mb: float, used_s_ago: float) -> None:
    """A converted model of ``mb`` MB under ``models/<key>``, with its conversion row, last used ``used_s_ago``."""
    folder = cache.root / "models" / key
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"o" * int(mb * MB / 2))
    (folder / "model_float32.tflite").write_bytes(b"t" * int(mb * MB / 2))
    cache.put_conversion(key, {"arch": f"arch-{key}", "resolution": 224, "channels": 3, "num_classes": 1000,
                               "status": "ok", "onnx_path": str(folder / "model.onnx"),
                               "tflite_path": str(folder / "model_float32.tflite")})
    stamp = time.time() - used_s_ago
    os.utime(folder, (stamp, stamp))


@pytest.fixture
def cache(tmp_path):
    cache = LatencyCache(tmp_path / "latency.sqlite")
    yield cache
    cache.close()


def test_trim_removes_least_recently_used_first_and_keeps_recent_and_protected(cache):
    _model(cache, "old", 4, used_s_ago=3000)
    _model(cache, "anchor", 4, used_s_ago=2500)
    _model(cache, "middle", 4, used_s_ago=2000)
    _model(cache, "newer", 4, used_s_ago=1000)
    _model(cache, "in-use", 4, used_s_ago=10)
    cache.put_measurement("m-old", "old", {"arch": "arch-old", "latency_ms": 7.0}, "host:x", {"threads": 1})
    assert cache.models_usage() == {"models": 5, "bytes": 20 * MB}

    out = cache.trim_models(9 * MB, keep_recent_s=600, protect={"anchor"})

    # old and middle go (anchor is protected, in-use was used 10 s ago); then 12 MB <= 9 MB is still false, but
    # newer is the only one left that may go: it goes too, and the cap is reached as far as it can be
    assert out == {"removed": 3, "freed_bytes": 12 * MB, "kept_models": 2, "kept_bytes": 8 * MB}
    assert sorted(p.name for p in (cache.root / "models").iterdir()) == ["anchor", "in-use"]
    assert cache.lookup_conversion("old") == (None, None)  # a miss, not damage: converted again, no "repaired"
    assert cache.lookup_conversion("anchor")[0]["status"] == "ok"
    assert cache.conversion_counts() == {"ok": 2, "evicted": 3, "failed": 0}
    assert cache.get_measurement("m-old")["latency_ms"] == 7.0  # timings are never evicted


def test_trim_stops_as_soon_as_the_cap_is_met(cache):
    for i, key in enumerate(("a", "b", "c")):
        _model(cache, key, 2, used_s_ago=3000 - i)
    assert cache.trim_models(5 * MB, keep_recent_s=0)["removed"] == 1
    assert sorted(p.name for p in (cache.root / "models").iterdir()) == ["b", "c"]
    assert cache.trim_models(5 * MB, keep_recent_s=0)["removed"] == 0


def test_a_second_trimmer_does_not_wait(cache):
    _model(cache, "a", 2, used_s_ago=3000)
    (cache.root / "locks").mkdir(exist_ok=True)
    with open(cache.root / "locks" / "trim.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert cache.trim_models(0, keep_recent_s=0) is None
    assert cache.trim_models(0, keep_recent_s=0)["removed"] == 1


def test_cache_info_and_prune_commands(cache, capsys):
    for i, key in enumerate(("a", "b", "c")):
        _model(cache, key, 2, used_s_ago=3000 - 1000 * i)
    path = str(cache.path)
    assert main(["cache", "info", "--cache", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["models"] == 3 and info["models_gb"] == pytest.approx(0.006)
    assert info["conversions"] == {"ok": 3, "evicted": 0, "failed": 0}

    assert main(["cache", "prune", "--cache", path, "--max-gb", "0.003", "--keep-recent-min", "0"]) == 0
    assert "removed 2 converted models (0.00 GB); 1 kept" in capsys.readouterr().out
    assert [p.name for p in (cache.root / "models").iterdir()] == ["c"]  # the most recently used stays
    assert main(["cache", "info", "--cache", path]) == 0
    assert "1 ok, 2 evicted by the size cap, 0 failed" in capsys.readouterr().out
    # a cap beyond any disk is no cap: int(1e300 * 1e9) was an OverflowError traceback
    assert main(["cache", "prune", "--cache", path, "--max-gb", "1e300", "--keep-recent-min", "0"]) == 0
    assert "removed 0 converted models" in capsys.readouterr().out


def test_prune_keeps_the_drift_anchors_conversion(cache, capsys):
    """As the automatic trim does: every host timing times the anchor (pruned, it was converted again)."""
    for i, key in enumerate(("a", "b", "c")):
        _model(cache, key, 2, used_s_ago=3000 - 1000 * i)
    cache.put_anchor("anchor-key", "arch-a", "host:x", {"anchor": "arch-a"}, {"ref_ms": 4.0})
    assert main(["cache", "prune", "--cache", str(cache.path), "--max-gb", "0", "--keep-recent-min", "0"]) == 0
    assert "removed 2 converted models" in capsys.readouterr().out
    assert [p.name for p in (cache.root / "models").iterdir()] == ["a"]


@pytest.mark.parametrize("argv, message", [
    (["cache", "prune", "--max-gb", "-1"], "--max-gb must be a number >= 0, got -1.0"),
    (["cache", "prune", "--max-gb", "1", "--keep-recent-min", "-5"], "--keep-recent-min must be a number >= 0"),
    (["cache", "info", "--cache", "MISSING"], "no latency cache at"),
    # read-only table commands created an empty cache at a mistyped --cache and named a build command for it
    (["predict", "mnasnet_b1", "--cache", "MISSING"], "no latency cache at"),
    (["table", "export", "--format", "csv", "--out", "t.csv", "--cache", "MISSING"], "no latency cache at"),
])
def test_cache_commands_refuse_bad_input_in_one_line(cache, tmp_path, capsys, argv, message):
    argv = [str(tmp_path / "none.sqlite") if a == "MISSING" else a for a in argv]
    if "--cache" not in argv:
        argv += ["--cache", str(cache.path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "none.sqlite").exists()  # nothing created where nothing was


def _foreign_database(tmp_path, kind: str):
    """Another program's SQLite file (user_version 0, as a new or schema-1 cache has): a table of its own, or a
    search's run store with a child in it."""
    if kind == "run store":
        from nas.record import ChildResult
        from nas.store import RunStore

        with RunStore(tmp_path / "run") as store:
            store.add_child(ChildResult(arch="ds_r1_k3_s1_c16", top1=0.5, latency_ms=3.0, params=10, macs=20, step=0,
                                        idx=0, tokens=[0, 2]))
        return tmp_path / "run" / "run.sqlite"
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.close()
    return path


@pytest.mark.parametrize("kind", ["table", "run store"])
def test_another_programs_database_is_refused_and_not_modified(tmp_path, capsys, kind):
    path = _foreign_database(tmp_path, kind)
    before = path.read_bytes()
    with pytest.raises(LatencyCacheError, match="is an SQLite database but not a latency cache"):
        LatencyCache(path)
    for argv in (["cache", "info"], ["cache", "prune", "--max-gb", "0"], ["table", "list"]):
        assert main([*argv, "--cache", str(path)]) == 2
        err = capsys.readouterr().err
        assert "not a latency cache" in err and "not modified" in err and err.count("\n") == 1, err
    assert path.read_bytes() == before
    assert not path.with_name(path.name + "-wal").exists()


def test_new_and_schema_1_caches_still_open(tmp_path):
    empty = tmp_path / "empty" / "latency.sqlite"
    empty.parent.mkdir()
    empty.write_bytes(b"")  # an empty file is a new cache
    LatencyCache(empty).close()
    old = tmp_path / "old" / "latency.sqlite"
    old.parent.mkdir()
    with sqlite3.connect(old) as conn:  # as schema 1 wrote it: two tables, user_version 0
        conn.execute("CREATE TABLE conversions (key TEXT PRIMARY KEY, arch TEXT NOT NULL, resolution INTEGER, "
                     "channels INTEGER, num_classes INTEGER, status TEXT NOT NULL, record TEXT NOT NULL, "
                     "created_at REAL NOT NULL)")
        conn.execute("CREATE TABLE measurements (key TEXT PRIMARY KEY, conversion_key TEXT NOT NULL, arch TEXT NOT "
                     "NULL, device TEXT NOT NULL, settings TEXT NOT NULL, result TEXT NOT NULL, created_at REAL NOT "
                     "NULL)")
        conn.execute("INSERT INTO measurements VALUES ('m', 'c', 'a', 'd', '{}', '{}', 0)")
    conn.close()
    for path in (empty, old):
        cache = LatencyCache(path)
        assert cache.count("latency_tables") == 0
        cache.close()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        conn.close()
    cache = LatencyCache(old)
    assert cache.count("measurements") == 1
    cache.close()


def test_read_only_commands_leave_a_cache_as_it_is(cache, capsys):
    _model(cache, "a", 1, 0)
    cache.close()
    before = cache.path.read_bytes()
    for argv in (["cache", "info"], ["table", "list"]):
        assert main([*argv, "--cache", str(cache.path)]) == 0
    capsys.readouterr()
    assert cache.path.read_bytes() == before


@pytest.mark.parametrize("value", [0, -1, "ten", True])
def test_bad_cache_cap_is_one_clear_error(tmp_path, value):
    with pytest.raises(ValueError, match="latency.cache_max_gb"):
        build_service("host", cache_path=tmp_path / "latency.sqlite", cache_max_gb=value)


def test_a_cache_cap_beyond_any_disk_is_no_cap(tmp_path):
    """int(1e300 * 1e9) was an OverflowError traceback while the search checked its configuration."""
    with build_service("host", workers=1, cache_path=tmp_path / "latency.sqlite", cache_max_gb=1e300) as service:
        assert service.max_model_bytes == 2**62


def test_service_evicts_real_conversions_and_converts_them_again_as_a_miss(tmp_path):
    """A real conversion, evicted under a tiny cap, is converted anew (not reported as damage) and its timing stays."""
    with build_service("host", threads=1, warmup_runs=1, num_runs=3, workers=1, cache_path=tmp_path / "latency.sqlite",
                       cache_max_gb=1e-9) as service:
        first = service.convert(SMALL, **SHAPE)
        assert first["status"] == "ok" and (tmp_path / "models" / first["key"]).is_dir()  # just used: kept
        timed = service.time(first)
        assert timed.ok and not timed.cached
        assert service.trim_models(keep_recent_s=0)["removed"] == 1
        assert not (tmp_path / "models" / first["key"]).exists()
        assert service.time(first).cached  # the timing is still in the cache: nothing converted or timed
        again = service.convert(SMALL, **SHAPE)
        assert again["key"] == first["key"] and not again["cached"] and "repaired" not in again
        # the same network converted again: the same ONNX (onnx2tf's .tflite is not byte for byte the same each time)
        assert again["artifacts"]["onnx_path"] == first["artifacts"]["onnx_path"]
        assert service.convert(SMALL, **SHAPE)["cached"]


def test_measuring_an_evicted_model_with_a_cached_timing_converts_nothing(tmp_path, monkeypatch):
    """measure() converted first and looked for the timing after: a model trimmed away was converted again (up to
    30 s) only for its cached timing to answer."""
    import latency.service as service_module

    with build_service("host", threads=1, warmup_runs=1, num_runs=3, workers=1, cache_path=tmp_path / "latency.sqlite",
                       cache_max_gb=1e-9) as service:
        timed = service.measure(SMALL, **SHAPE)
        assert timed.ok and service.trim_models(keep_recent_s=0)["removed"] == 1
        monkeypatch.setattr(service_module, "_convert_task", None)  # a conversion now would fail: it must not happen
        again = service.measure(SMALL, **SHAPE)
    assert again.ok and again.cached and again.latency_ms == timed.latency_ms


def test_a_model_trimmed_away_while_it_waited_to_be_timed_is_converted_and_timed_again(tmp_path, monkeypatch):
    """Another process sharing the cache could trim a model between its conversion and its timing: the timing then
    failed as the model's own failure (not transient), and the architecture was recorded as failed for good."""
    import shutil

    import latency.service as service_module

    with build_service("host", threads=1, warmup_runs=1, num_runs=3, workers=1,
                       cache_path=tmp_path / "latency.sqlite") as service:
        conversion = service.convert(SMALL, **SHAPE)
        run_in_worker, trimmed = service._run_in_worker, []

        def trim_first(fn, *args, **kwargs):
            if fn is service_module._time_models_task and not trimmed:
                trimmed.append(args[0])
                shutil.rmtree(Path(args[0][0]).parent)  # as the other process's trim would
            return run_in_worker(fn, *args, **kwargs)

        monkeypatch.setattr(service, "_run_in_worker", trim_first)
        result = service.time(conversion)
    assert trimmed and result.ok and not result.cached, result.error


def test_a_cache_that_cannot_be_trimmed_does_not_fail_the_conversion(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise OSError("read-only file system")

    with build_service("host", workers=1, cache_path=tmp_path / "latency.sqlite", cache_max_gb=1e-9) as service:
        monkeypatch.setattr(service.cache, "trim_models", broken)
        record = service.convert(SMALL, **SHAPE)
    assert record["status"] == "ok"
    assert "not trimmed: read-only file system" in caplog.text
