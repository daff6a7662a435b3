"""The cache verifies what it reads: damaged files are converted again, a copied cache reads its own files, exports
never ship a damaged file, rows written before digests existed are migrated, a corrupted database is refused."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from latency import LatencyService, build_service
from latency.cache import LatencyCache, LatencyCacheError, file_digest
from latency.convert import make_interpreter

SMALL = "ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16"
SHAPE = dict(resolution=32, num_classes=10)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("verify") / "cache"


@pytest.fixture(scope="module")
def service(cache_dir):
    service = build_service("host", workers=1, warmup_runs=1, num_runs=3, cache_path=cache_dir / "latency.sqlite")
    yield service
    service.close()


def _row(cache_path: Path, key: str) -> dict:
    con = sqlite3.connect(cache_path)
    try:
        return json.loads(con.execute("SELECT record FROM conversions WHERE key = ?", (key,)).fetchone()[0])
    finally:
        con.close()


def test_conversion_records_relative_paths_and_digests(service, cache_dir):
    record = service.convert(SMALL, **SHAPE)
    assert record["status"] == "ok" and Path(record["tflite_path"]).is_absolute()
    stored = _row(cache_dir / "latency.sqlite", record["key"])
    assert stored["tflite_path"] == f"models/{record['key']}/model_float32.tflite"
    assert stored["onnx_path"] == f"models/{record['key']}/model.onnx"
    assert stored["artifacts"]["tflite_path"] == file_digest(record["tflite_path"])
    again = service.convert(SMALL, **SHAPE)
    assert again["cached"] and again["tflite_path"] == record["tflite_path"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_damaged_tflite_is_rebuilt(service, damage):
    record = service.convert(SMALL, **SHAPE)
    path = Path(record["tflite_path"])
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(b ^ 0x5A for b in data))  # same size, other bytes
    else:
        path.unlink()
    rebuilt = service.convert(SMALL, **SHAPE)
    assert rebuilt["status"] == "ok" and not rebuilt["cached"]
    assert {"truncate": "bytes", "garbage": "content changed", "missing": "missing"}[damage] in rebuilt["repaired"]
    assert file_digest(path) == rebuilt["artifacts"]["tflite_path"]
    make_interpreter(path)  # loads again
    result = service.measure(SMALL, **SHAPE)
    assert result.ok, result.error
    # the repair is news once: it was stored with the conversion and stamped on every later measurement of it
    later = service.convert(SMALL, **SHAPE)
    assert later["cached"] and "repaired" not in later
    assert "conversion_repaired" not in result.extra


def test_time_rechecks_the_file_it_is_handed(service):
    record = service.convert(SMALL, resolution=24, num_classes=10)
    Path(record["tflite_path"]).write_bytes(b"TFL3 but not really")
    result = service.time(record)  # the handed record's file is damaged: converted again, then timed
    assert result.ok, result.error
    assert "bytes" in result.extra["conversion_repaired"]
    assert result.extra["timing"]["mode"] == "quiet"


def test_copied_cache_reads_its_own_files(service, cache_dir, tmp_path):
    record = service.convert(SMALL, **SHAPE)
    copy = tmp_path / "copy"
    shutil.copytree(cache_dir, copy, ignore=shutil.ignore_patterns("work", "locks"))
    original = Path(record["tflite_path"])
    saved = original.read_bytes()
    original.write_bytes(b"")  # the original's file is damaged; the copy must not notice (nor read it)
    try:
        with build_service("host", workers=1, warmup_runs=1, num_runs=3,
                           cache_path=copy / "latency.sqlite") as other:
            again = other.convert(SMALL, **SHAPE)
            assert again["cached"], again.get("repaired")
            assert Path(again["tflite_path"]).resolve().is_relative_to(copy.resolve())
    finally:
        original.write_bytes(saved)


def test_export_never_ships_a_damaged_file(service, tmp_path):
    record = service.convert(SMALL, **SHAPE)
    Path(record["tflite_path"]).write_bytes(Path(record["tflite_path"]).read_bytes()[:100])
    out = service.export(SMALL, tmp_path / "exp", **SHAPE, name="child")
    shipped = Path(out["tflite"])
    assert file_digest(shipped)["sha256"] == out["tflite_sha256"]
    assert tuple(make_interpreter(shipped).get_output_details()[0]["shape"])[-1] == 10
    assert not list((tmp_path / "exp").glob(".*tmp"))


def test_legacy_rows_are_migrated_in_place(service, cache_dir, tmp_path):
    """A row as the previous version wrote it (absolute paths, no digests): kept if its files load, else rebuilt."""
    record = service.convert(SMALL, resolution=40, num_classes=10)
    key = record["key"]
    db = cache_dir / "latency.sqlite"
    legacy = {k: v for k, v in record.items() if k not in ("artifacts", "key", "cached")}
    legacy["tflite_path"] = str(Path(record["tflite_path"]).resolve())
    legacy["onnx_path"] = str(Path(record["onnx_path"]).resolve())

    def write_legacy() -> None:
        con = sqlite3.connect(db)
        con.execute("UPDATE conversions SET record = ? WHERE key = ?", (json.dumps(legacy), key))
        con.commit()
        con.close()

    write_legacy()
    kept = service.convert(SMALL, resolution=40, num_classes=10)
    assert kept["cached"]
    migrated = _row(db, key)
    assert migrated["tflite_path"].startswith("models/") and migrated["artifacts"]["tflite_path"]["size"] > 0

    write_legacy()
    Path(record["tflite_path"]).write_bytes(b"\x00" * 64)  # no digest to compare with: it must fail to load
    rebuilt = service.convert(SMALL, resolution=40, num_classes=10)
    assert not rebuilt["cached"] and "does not load" in rebuilt["repaired"]


def test_corrupted_sqlite_is_refused_and_untouched(tmp_path, service, cache_dir):
    path = tmp_path / "latency.sqlite"
    src, dst = sqlite3.connect(cache_dir / "latency.sqlite"), sqlite3.connect(path)
    src.backup(dst)  # a real cache with rows in it, as one file
    src.close()
    dst.close()
    data = bytearray(path.read_bytes())
    assert len(data) >= 3 * 4096
    data[2 * 4096: 3 * 4096] = bytes((7 * i) % 256 for i in range(4096))  # one b-tree page overwritten
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(LatencyCacheError, match="corrupted"):
        LatencyService("host", cache_path=path)
    assert path.read_bytes() == before


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "latency.sqlite"
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(LatencyCacheError, match="newer"):
        LatencyCache(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 99
    con.close()
