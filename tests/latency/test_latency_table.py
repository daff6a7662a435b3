"""Layer tables and the predictor end to end on a micro space (16 px): build (resumable after kill -9), predict,
validate, export/import, the missing-table error; the same commands on a phone through the adb double."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latency import build_service
from latency.cache import LatencyCache
from latency.predictor import LatencyTableMissing, Predictor, error_figures, kendall_tau, load_predictor
from latency.table import build_table, load_space

ROOT = Path(__file__).parents[2]
SMALL = "ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16"  # in the micro space
EXTRA = "ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c24"  # outside it: two more layers (ir 8->24, head from 24)
SHAPE = {"resolution": 16, "channels": 3, "num_classes": 10}
ANCHOR = SMALL  # the drift anchor (converted at 224 px): a tiny one keeps the tests quick
RUNS = {"warmup_runs": 1, "num_runs": 5, "anchor": ANCHOR}
MICRO = """\
blocks:
  - {channels: 8, layers: 1, stride: 1}
  - {channels: 16, layers: 2, stride: 2}
conv_ops: [ds, mbconv3]
kernel_sizes: [3]
se_ratios: [0.0, 0.25]
skip_ops: [identity]
filter_multipliers: [1.0]
layer_deltas: [0]
"""


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("space") / "micro.yaml"
    path.write_text(MICRO)
    return str(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory, micro):
    """One host table of the micro space with 10 calibration models, shared by the tests below."""
    cache = tmp_path_factory.mktemp("table") / "latency.sqlite"
    with build_service("host", workers=2, cache_path=cache, **RUNS) as service:
        summary = build_table(service, space_name=micro, **SHAPE, archs=(EXTRA,), calibration=10, batch=4,
                              progress=False)
    return {"cache": cache, "summary": summary}


def _cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latency", *args], capture_output=True, text=True, cwd=cwd,
                          env=env or os.environ.copy(), timeout=timeout)


def test_build_times_every_layer_of_the_space_once(built, micro):
    summary = built["summary"]
    space_layers = load_space(micro).layers(**SHAPE)
    assert len(space_layers) == 14  # stem, 4 + 4 first layers, 4 repeats, head (see MICRO)
    assert summary["layers"] == 16  # + the two layers of EXTRA
    assert summary["timed_now"] == 16 and not summary["failed"] and summary["calibration"] == 10
    con = sqlite3.connect(built["cache"])
    rows = con.execute("SELECT layer, status, latency_ms, result FROM table_layers").fetchall()
    assert len(rows) == 16 and all(r[1] == "ok" and r[2] > 0 for r in rows)
    assert all(json.loads(r[3])["extra"]["timing"]["mode"] == "quiet" for r in rows)
    assert {r[0] for r in rows} >= {s.key for s in space_layers}
    with build_service("host", workers=1, cache_path=built["cache"], **RUNS) as service:
        again = build_table(service, space_name=micro, **SHAPE, archs=(EXTRA,), calibration=10, progress=False)
    assert again["timed_now"] == 0 and again["calibration"] == 10  # nothing is done twice
    assert all(json.loads(r[3])["extra"]["timing"]["anchor"]["arch"] == ANCHOR for r in rows)


def test_a_relative_cache_path_builds_into_that_cache(micro, tmp_path, monkeypatch):
    """The conversion workers run in the work directory: a relative --cache once sent every layer and model there,
    and the table came out with no layers and no error."""
    monkeypatch.chdir(tmp_path)
    with build_service("host", workers=1, cache_path="rel/latency.sqlite", **RUNS) as service:
        assert service.cache_path == tmp_path / "rel" / "latency.sqlite"
        assert service.work_dir.is_absolute() and service.models_dir.is_absolute()
        summary = build_table(service, space_name=micro, **SHAPE, archs=(EXTRA,), calibration=2, batch=8,
                              progress=False)
    assert summary["timed_now"] == summary["layers"] == 16 and not summary["failed"] and summary["calibration"] == 2
    con = sqlite3.connect(tmp_path / "rel" / "latency.sqlite")
    assert con.execute("SELECT COUNT(*) FROM table_layers WHERE status = 'ok'").fetchone() == (16,)
    assert con.execute("SELECT COUNT(*) FROM table_models").fetchone() == (2,)
    assert not list((tmp_path / "rel").rglob("rel"))  # nothing nested under the work directory


def test_an_interrupted_sitting_still_counts_in_the_build_time(built, micro, monkeypatch):
    import latency.table as table

    def seconds() -> float:
        meta = json.loads(sqlite3.connect(built["cache"]).execute(
            "SELECT meta FROM latency_tables WHERE table_key = ?", (built["summary"]["table_key"],)).fetchone()[0])
        return meta["spaces"]["micro"]["build_seconds"]

    before = seconds()

    def interrupted(*args, **kwargs):
        time.sleep(0.3)
        raise KeyboardInterrupt

    monkeypatch.setattr(table, "measure_models", interrupted)
    with build_service("host", workers=1, cache_path=built["cache"], **RUNS) as service:
        with pytest.raises(KeyboardInterrupt):
            build_table(service, space_name=micro, **SHAPE, archs=(EXTRA,), calibration=10, progress=False)
    assert seconds() >= before + 0.3


def test_a_second_build_of_the_same_table_is_refused_while_the_first_runs(built, micro):
    """Two builds of one table would time the same layers twice and remove each other's conversions in progress."""
    import fcntl

    from latency.service import LockBusy

    key = built["summary"]["table_key"]
    lock = built["cache"].parent / "locks" / "table" / f"{key}.lock"
    before = sqlite3.connect(built["cache"]).execute("SELECT COUNT(*) FROM table_layers").fetchone()[0]
    with open(lock, "a") as held:  # the first build, still running
        fcntl.flock(held, fcntl.LOCK_EX)
        with build_service("host", workers=1, cache_path=built["cache"], **RUNS) as service:
            with pytest.raises(LockBusy, match=f"another build of table {key} .* runs on this cache now"):
                build_table(service, space_name=micro, **SHAPE, archs=(EXTRA,), calibration=10, progress=False)
        out = _cli("table", "build", "--cache", str(built["cache"]), "--space", micro, "--resolution", "16",
                   "--classes", "10", "--arch", EXTRA, "--warmup", "1", "--runs", "5", "--anchor", ANCHOR)
    assert out.returncode == 2 and out.stderr.startswith("error: another build of table")
    assert len(out.stderr.strip().splitlines()) == 1
    assert sqlite3.connect(built["cache"]).execute("SELECT COUNT(*) FROM table_layers").fetchone()[0] == before


def test_predict_carries_source_and_stated_error(built, micro):
    predictor = load_predictor({"runner": "host", **RUNS}, **SHAPE, cache_path=built["cache"], space=micro)
    assert predictor.calibration is not None and predictor.calibration_n == 10
    result = predictor.predict(SMALL)
    assert result.ok and result.latency_ms > 0
    assert result.extra["source"] == "predicted" and result.extra["stated_error"]["n"] == 0  # not validated yet
    assert result.extra["layer_sum_ms"] > 0
    outside = predictor.predict("ds_r1_k5_s1_c8-ir_r1_k3_s2_e3_c16")  # a kernel the table has not timed
    assert outside.status == "failed" and "--arch" in outside.error and "not in latency table" in outside.error


def test_missing_table_is_one_clear_error(built, micro):
    with pytest.raises(LatencyTableMissing, match="python -m latency table build --runner host --warmup 2"):
        load_predictor({"runner": "host", "warmup_runs": 2}, **SHAPE, cache_path=built["cache"], space=micro)
    out = _cli("predict", SMALL, "--resolution", "24", "--classes", "10", "--cache", str(built["cache"]), "--json")
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no latency table")
    assert "python -m latency table build --runner host --space mnasnet --resolution 24" in lines[0]
    bad = _cli("table", "build", "--space", "no_such_space", "--cache", str(built["cache"]))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown search space" in bad.stderr


def test_validate_export_import_round_trip(built, micro, tmp_path):
    common = ["--space", micro, "--resolution", "16", "--classes", "10", "--warmup", "1", "--runs", "5",
              "--anchor", ANCHOR, "--cache", str(built["cache"])]
    out = _cli("table", "validate", "--n", "4", *common, "--json")
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert figures["n"] == 4 and 0 <= figures["within_10"] <= 1 and figures["rmse_ms"] >= 0
    assert {"within_5", "within_10", "rmse_ms", "max_rel", "kendall_tau"} <= set(figures)
    predicted = json.loads(_cli("predict", SMALL, *common, "--json").stdout)
    assert predicted["extra"]["stated_error"]["n"] == 4
    assert predicted["extra"]["stated_error"]["within_10"] == figures["within_10"]

    for fmt in ("csv", "json"):
        exported = tmp_path / f"table.{fmt}"
        out = _cli("table", "export", "--format", fmt, "--out", str(exported), *common[2:])  # whole: no --space
        assert out.returncode == 0, out.stderr
        fresh = tmp_path / f"fresh-{fmt}" / "latency.sqlite"
        out = _cli("table", "import", str(exported), "--cache", str(fresh), "--json")
        assert out.returncode == 0, out.stderr
        counts = json.loads(out.stdout)
        assert counts["layer"] == 16 and counts["calibration"] == 10 and counts["validation"] == 4
        again = json.loads(_cli("predict", SMALL, *common[:-1], str(fresh), "--json").stdout)
        assert again["latency_ms"] == pytest.approx(predicted["latency_ms"], rel=1e-12)
        anchors = [sqlite3.connect(c).execute("SELECT key, ref_ms FROM anchors").fetchall()
                   for c in (built["cache"], fresh)]
        assert anchors[0] and anchors[1] == anchors[0]  # host timings' scale travels with the table
        assert again["extra"]["stated_error"] == predicted["extra"]["stated_error"]
    # into a cache with a drift-anchor reference of its own (timed when this machine ran at another speed): the
    # table's timings move to that cache's scale, the reference stays
    (key, ref_ms), = anchors[0]
    own = tmp_path / "own" / "latency.sqlite"
    receiver = LatencyCache(own)
    stored = sqlite3.connect(built["cache"]).execute("SELECT arch, device, settings, result FROM anchors").fetchone()
    receiver.put_anchor(key, stored[0], stored[1], json.loads(stored[2]), {**json.loads(stored[3]),
                                                                           "ref_ms": 2 * ref_ms})
    receiver.close()
    out = _cli("table", "import", str(tmp_path / "table.json"), "--cache", str(own))
    assert out.returncode == 0 and "timings scaled by 2.0000" in out.stdout, out.stderr
    cache = LatencyCache(own)
    source = LatencyCache(built["cache"])
    table_key = cache.tables()[0]["table_key"]
    assert cache.anchor(key)["ref_ms"] == 2 * ref_ms
    for layer, row in cache.layers(table_key).items():
        assert row["latency_ms"] == pytest.approx(2 * source.layers(table_key)[layer]["latency_ms"], rel=1e-12)
        assert row["result"]["extra"]["anchor_rescaled"] == 2.0
    here = cache.models(table_key, "validation", micro)
    assert [m["latency_ms"] for m in here] == \
        pytest.approx([2 * m["latency_ms"] for m in source.models(table_key, "validation", micro)], rel=1e-12)
    cache.close()
    source.close()
    doubled = json.loads(_cli("predict", SMALL, *common[:-1], str(own), "--json").stdout)
    assert doubled["latency_ms"] == pytest.approx(2 * predicted["latency_ms"], rel=0.02)
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("a,b\n1,2\n")
    out = _cli("table", "import", str(garbage), "--cache", str(tmp_path / "g" / "latency.sqlite"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "garbage.csv" in out.stderr


def _cache_contents(path) -> list:
    conn = sqlite3.connect(path)
    try:
        return [conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("latency_tables", "table_layers", "table_models", "anchors")]
    finally:
        conn.close()


def test_a_refused_import_leaves_the_cache_as_it_was(built, tmp_path):
    """The whole file is checked before anything is written: a bad last row, a drift-anchor reference that is not a
    positive time (it would be kept for good: the first reference wins) or a result that is not an object used to
    leave the table half-replaced, or a cache scaled by a reference of 0 or -1 ms."""
    from latency.table import export_table, import_table

    source = LatencyCache(built["cache"])
    exported = tmp_path / "table.json"
    export_table(source, source.tables()[0]["table_key"], exported, "json")
    source.close()
    good = json.loads(exported.read_text())
    assert good["anchor"]["ref_ms"] > 0 and len(good["rows"]) > 10
    holder = tmp_path / "holder" / "latency.sqlite"  # a cache that holds this table already
    cache = LatencyCache(holder)
    import_table(cache, exported)
    before = _cache_contents(holder)
    empty = tmp_path / "empty" / "latency.sqlite"
    empty_cache = LatencyCache(empty)
    layer = next(i for i, r in enumerate(good["rows"]) if r["record"] == "layer" and r["status"] == "ok")
    variants = {  # each used to be stored, breaking `table list` and `predict` later or skewing every prediction
        "device": lambda d: d.update(device=["a"]),
        "meta": lambda d: d.update(meta=[1]),
        "spaces": lambda d: d.update(meta={"spaces": []}),
        "residual_cv": lambda d: d.update(meta={"residual_cv": {"micro": {"fingerprint": "x"}}}),
        "layer text": lambda d: d["rows"][layer]["result"].update(latency_ms="abc"),
        "layer sign": lambda d: (d["rows"][layer].update(latency_ms=-5.0), d["rows"][layer]["result"].update(
            latency_ms=-5.0)),
        "layer column": lambda d: d["rows"][layer].update(latency_ms=99.0),  # the result says otherwise

        "bogus": lambda d: d["rows"].append({**d["rows"][-1], "key": "bogus"}),
        "ref_ms": lambda d: d["anchor"].update(ref_ms=0),
        "negative": lambda d: d["anchor"].update(ref_ms=-1.0),
        "nan": lambda d: d["anchor"].update(ref_ms=float("nan")),
        "object": lambda d: d["rows"][-1].update(result=[1, 2]),
        "latency_ms": lambda d: d["rows"][-1].update(latency_ms=-3.0),
        "LayerSpec": lambda d: d["rows"][layer].update(spec={"op": "nope"}),
    }
    for word, damage in variants.items():
        data = json.loads(exported.read_text())
        data["meta"] = {"replaced": True}  # what a half-done import would have written first
        damage(data)
        bad = tmp_path / f"bad-{word}.json"
        bad.write_text(json.dumps(data))
        for target in (cache, empty_cache):
            with pytest.raises(ValueError) as err:
                import_table(target, bad)
            assert str(bad) in str(err.value) and "\n" not in str(err.value)
        assert _cache_contents(holder) == before, word
        assert _cache_contents(empty) == [[], [], [], []], word
    cache.close()
    empty_cache.close()


def test_cli_paths_and_an_unusable_validation_are_one_line(built, micro, tmp_path):
    import shutil

    cache = tmp_path / "copy" / "latency.sqlite"  # a copy: the validation below must not add rows to the shared one
    cache.parent.mkdir()
    shutil.copy(built["cache"], cache)
    common = ["--resolution", "16", "--classes", "10", "--warmup", "1", "--runs", "5", "--anchor", ANCHOR]
    listed = _cli("table", "list", "--cache", str(cache.parent), "--json")  # the cache's directory names its file
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 1, listed.stderr
    new = tmp_path / "new-cache"  # a directory to be: it was created as a SQLite file of that name
    exported = _cli("table", "export", "--format", "json", "--out", str(tmp_path / "t.json"), *common,
                    "--cache", str(cache))
    assert exported.returncode == 0, exported.stderr
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    refused = _cli("table", "import", str(tmp_path / "bad.json"), "--cache", str(new))  # it created the cache first
    assert refused.returncode == 2 and "not a" in refused.stderr and not new.exists(), refused.stderr
    imported = _cli("table", "import", str(tmp_path / "t.json"), "--cache", str(new))
    assert imported.returncode == 0 and (new / "latency.sqlite").is_file(), imported.stderr
    missing = tmp_path / "typo" / "cache.sqlite"  # listing created an empty cache (and its folders) where none was
    listed = _cli("table", "list", "--cache", str(missing), "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [] and not missing.parent.exists(), listed.stderr
    out = _cli("table", "export", "--format", "json", "--out", str(tmp_path), *common, "--cache", str(cache))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "is a directory" in out.stderr, out.stderr
    assert not list(tmp_path.parent.glob(".*.tmp"))
    out = _cli("measure", SMALL, *common, "--cache", "/proc/no-such-dir/latency.sqlite")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "/proc/no-such-dir" in out.stderr, out.stderr
    # a space the table was never built for: refused before anything is measured, naming the command that adds it
    # (a KeyError traceback once, then {"n": 0} stored as the table's validation figures)
    other = tmp_path / "micro2.yaml"
    other.write_text(MICRO.replace("channels: 16", "channels: 24"))
    out = _cli("table", "validate", "--n", "1", "--space", str(other), *common, "--cache", str(cache), "--json")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "was built for space(s) micro, not 'micro2'" in out.stderr and "table build" in out.stderr
    assert f"--space {other} " in out.stderr
    held = LatencyCache(cache)
    key = held.tables()[0]["table_key"]
    assert not held.models(key, "validation", "micro2")
    # one whose build ended before its layers were timed: nothing to judge the predictor on, and the command that
    # adds them builds into this cache with these settings
    held.set_table_meta(key, ("spaces", "micro2"), {"build_seconds": 1.0})
    held.close()
    out = _cli("table", "validate", "--n", "1", "--space", str(other), *common, "--cache", str(cache), "--json")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "could be both measured and predicted" in out.stderr
    assert _identity_of(out.stderr.split("add the space's layers with: ", 1)[1].strip()) == key
    assert "micro2" not in json.dumps(LatencyCache(cache).tables()[0]["meta"].get("validation", {}))


def test_an_interrupted_build_resumes(micro, tmp_path):
    cache = tmp_path / "latency.sqlite"
    args = ["table", "build", "--space", micro, "--resolution", "16", "--classes", "10", "--warmup", "1", "--runs",
            "5", "--calibration", "0", "--arch", EXTRA, "--batch", "2", "--anchor", ANCHOR, "--cache", str(cache)]
    proc = subprocess.Popen([sys.executable, "-m", "latency", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def timed() -> int:
        try:
            con = sqlite3.connect(cache)
            # complete rows only: a layer killed between its timing rounds is timed again, by design
            return con.execute("SELECT COUNT(*) FROM table_layers WHERE status = 'ok' AND "
                               "coalesce(json_extract(result, '$.complete'), 1) = 1").fetchone()[0]
        except sqlite3.OperationalError:
            return 0
        finally:
            con.close()

    def build_seconds() -> float:
        try:
            con = sqlite3.connect(cache)
            row = con.execute("SELECT meta FROM latency_tables").fetchone()
            return json.loads(row[0])["spaces"]["micro"]["build_seconds"] if row else 0.0
        except (sqlite3.OperationalError, KeyError):
            return 0.0
        finally:
            con.close()

    deadline = time.monotonic() + 300
    # the sitting's time is committed after each timed batch, so a kill -9 loses at most one batch's worth
    while (timed() < 2 or build_seconds() <= 0) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the build and its workers, mid-way
    proc.wait(60)
    before, killed_sitting = timed(), build_seconds()
    assert 2 <= before < 16 and killed_sitting > 0
    out = _cli(*args, "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["timed_now"] == 16 - before and summary["layers"] == 16 and timed() == 16
    assert summary["build_seconds_total"] == pytest.approx(build_seconds())
    assert summary["build_seconds_total"] >= killed_sitting + summary["seconds"] - 0.01  # both sittings count


def test_error_figures_and_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    f = error_figures([1.04, 2.0, 3.3, 4.0], [1.0, 2.0, 3.0, 4.0])
    assert f["within_5"] == 0.75 and f["within_10"] == 1.0 and f["max_rel"] == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------------ adb
@pytest.fixture
def phone(tmp_path, monkeypatch):
    from latency_fake_adb import attach

    return attach(tmp_path, monkeypatch)


def test_phone_table_build_predict_and_validate_over_adb(phone, micro, tmp_path):
    cache = str(tmp_path / "cache" / "latency.sqlite")
    common = ["--runner", "adb", "--binary", phone["binary"], "--cpu-mask", "f0", "--warmup", "1", "--runs", "3",
              "--space", micro, "--resolution", "16", "--classes", "10", "--cache", cache]
    out = _cli("table", "build", *common, "--calibration", "10", "--arch", EXTRA, "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["device"] == "adb:Pixel 2" and summary["layers"] == 16 and summary["calibration"] == 10
    calls = [json.loads(line) for line in phone["log"].read_text().splitlines()]
    runs = [c[-1] for c in calls if "shell" in c and "--graph=" in c[-1]]
    assert len(runs) == 16 + 10 and all(r.startswith("taskset f0 /data/local/tmp/benchmark_model") for r in runs)
    out = _cli("table", "validate", "--n", "3", *common, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["n"] == 3
    out = _cli("predict", SMALL, *common, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["device"] == "adb:Pixel 2" and result["runner"] == "adb" and result["latency_ms"] > 0
    assert result["extra"]["stated_error"]["n"] == 3
    # A table for a phone model serves that model without the phone attached (another serial, or none).
    offline = dict(os.environ, FAKE_ADB_SERIALS="")
    no_phone = _cli("predict", SMALL, *common, "--json", env=offline)
    assert no_phone.returncode == 2 and "--device" in no_phone.stderr
    named = _cli("predict", SMALL, *common, "--device", "adb:Pixel 2", "--json", env=offline)
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["latency_ms"] == result["latency_ms"]


def test_predictor_from_service_matches_load_predictor(built, micro):
    with build_service("host", workers=1, cache_path=built["cache"], **RUNS) as service:
        a = Predictor.from_service(service, **SHAPE, space=micro).predict(SMALL)
    b = load_predictor({"runner": "host", **RUNS}, **SHAPE, cache_path=built["cache"], space=micro).predict(SMALL)
    assert a.latency_ms == b.latency_ms


def _identity_of(command: str) -> str:
    """The key of the table that ``command`` (a build command named by an error) would build."""
    import shlex

    from latency.__main__ import _parsers, _service
    from latency.table import identity_key, table_identity

    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "latency"], command
    args = _parsers().parse_args(words[3:])
    with _service(args) as service:
        return identity_key(table_identity(service, resolution=args.resolution, channels=args.channels,
                                           num_classes=args.classes))


def _looked_up(config: dict, cache) -> str:
    from latency.table import identity_key, table_identity

    config = dict(config)
    with build_service(config.pop("runner"), workers=1, cache_path=cache, **config) as service:
        return identity_key(table_identity(service, **SHAPE))


@pytest.mark.parametrize("config, lookup", [
    ({"runner": "host", **RUNS, "rounds": 5, "pin_cpu": True, "quiet": False}, {}),
    ({"runner": "host", "warmup_runs": 1, "num_runs": 5}, {"anchor": "mnasnet_b1"}),  # as the CLI and host.yaml
    ({"runner": "host", **RUNS, "anchor": None}, {}),
])
def test_a_missing_tables_build_command_builds_that_table(built, micro, tmp_path, config, lookup):
    """The command an error names builds the very table that was looked up: settings without flags (rounds, pin_cpu,
    quiet) used to be left out, load_predictor looked for an un-anchored host table where the CLI builds an anchored
    one, and a space given as a path was named by its stem, which --space refuses."""
    cache = tmp_path / "with space" / "latency.sqlite"  # a path the command must quote
    with pytest.raises(LatencyTableMissing) as err:
        load_predictor(config, **SHAPE, cache_path=cache, space=micro)
    command = str(err.value).split("build it with: ", 1)[1]
    assert f"--space {micro} " in command and "'" in command
    assert _identity_of(command) == _looked_up({**config, **lookup}, cache)


def test_missing_layers_and_validate_name_a_command_for_this_cache_and_space(built, micro):
    predictor = load_predictor({"runner": "host", **RUNS}, **SHAPE, cache_path=built["cache"], space=micro)
    outside = predictor.predict("ds_r1_k5_s1_c8-ir_r1_k3_s2_e3_c16")
    command = outside.error.split("add them with: ", 1)[1]
    assert f"--space {micro} " in command and f"--cache {built['cache']}" in command
    assert _identity_of(command) == predictor.table_key


def test_a_space_the_table_was_not_calibrated_for_is_refused(built, micro):
    """A misspelt or forgotten --space used to fall back to the plain layer sum in silence (exit 0, a latency
    5-12% off); the table knows its calibrated spaces and says which."""
    with pytest.raises(LatencyTableMissing, match="was built for space.s. micro, not 'nosuch'"):
        load_predictor({"runner": "host", **RUNS}, **SHAPE, cache_path=built["cache"], space="nosuch")


def test_a_table_picked_by_key_must_be_for_the_input_asked(built, micro, tmp_path):
    """--table / latency.table took any table: a 16 px table predicted a 224 px request (and a hybrid search mixed
    those with real 224 px timings) without a word. Export takes the table whole, whatever the input flags."""
    key = built["summary"]["table_key"]
    ok = load_predictor({"runner": "host", **RUNS}, **SHAPE, cache_path=built["cache"], space=micro, table=key[:8])
    assert ok.table_key == key
    other = {**SHAPE, "resolution": 224, "num_classes": 1000}
    with pytest.raises(LatencyTableMissing, match=rf"latency table {key[:12]} was built for 3x16x16, 10 classes, not "
                                                  r"3x224x224, 1000 classes \(--channels"):
        load_predictor({"runner": "host", **RUNS}, **other, cache_path=built["cache"], space=micro, table=key[:8])
    out = _cli("table", "export", "--table", key[:8], "--format", "json", "--out", str(tmp_path / "t.json"),
               "--cache", str(built["cache"]))
    assert out.returncode == 0 and (tmp_path / "t.json").exists(), out.stderr


def test_host_only_flags_with_the_adb_runner_are_one_line():
    out = _cli("measure", SMALL, "--runner", "adb", "--rounds", "5", "--pin-cpu")
    assert out.returncode == 2 and out.stderr == \
        "error: --rounds, --pin-cpu: settings of the host runner, not of --runner adb\n", out.stderr


@pytest.mark.parametrize("argv, says", [
    (["table", "build", "--channels", "0"], "--channels must be a positive integer, got 0"),
    (["table", "build", "--resolution", "0"], "--resolution must be a positive integer, got 0"),
    (["table", "validate", "--n", "2", "--classes", "0"], "--classes must be a positive integer, got 0"),
    (["predict", SMALL, "--resolution", "-3"], "--resolution must be a positive integer, got -3"),
    (["measure", SMALL, "--resolution", "0"], "--resolution must be a positive integer, got 0"),
])
def test_an_input_size_that_is_not_positive_is_one_line_before_any_cache_is_touched(tmp_path, capsys, argv, says):
    """table build --channels 0 built and stored a whole table of 0-channel layers, --resolution 0 failed its 1,514
    layers one by one, predict and validate named a build command for a 0x0 input."""
    from latency.__main__ import main

    cache = tmp_path / "latency.sqlite"
    assert main([*argv, "--cache", str(cache)]) == 2
    assert capsys.readouterr().err == f"error: {says}\n"
    assert not cache.exists()
    # the library refuses them too, before a service opens (creates) its cache
    with pytest.raises(ValueError, match="^channels must be a positive integer, got 0$"):
        load_predictor(channels=0, cache_path=cache)
    with pytest.raises(ValueError, match="^resolution must be a positive integer, got 0$"):
        build_table(None, resolution=0)  # refused before the service is asked anything
    assert not cache.exists()


def test_a_cache_under_the_home_directory_is_one_cache_to_every_command(tmp_path):
    """``--cache='~/x'`` (quoted, or ``--cache=~/x``: the shell expands neither) was expanded by measure and predict
    but not by table list/import or cache info/prune: import made a folder named ~ in the working directory, list
    said "no latency tables", info and prune "no latency cache"."""
    export = tmp_path / "empty.json"  # an empty table: nothing to build
    export.write_text(json.dumps({"format": "mnasnet-search latency table", "version": 1, "device": "adb:Pixel 2",
                                  "settings": {"runner": "adb"}, "versions": {}, "resolution": 16, "channels": 3,
                                  "num_classes": 10, "meta": {}, "rows": []}))
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "caches.d").mkdir()  # a directory whose name has a suffix: told from a file after ~ is expanded
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    for where, file in (("~/l.sqlite", tmp_path / "l.sqlite"),
                        ("~/caches.d", tmp_path / "caches.d" / "latency.sqlite")):
        imported = _cli("table", "import", str(export), f"--cache={where}", env=env, cwd=work)
        assert imported.returncode == 0 and file.is_file(), imported.stderr
        listed = _cli("table", "list", f"--cache={where}", "--json", env=env, cwd=work)
        assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 1, listed.stderr
        info = _cli("cache", "info", f"--cache={where}", "--json", env=env, cwd=work)
        assert info.returncode == 0 and json.loads(info.stdout)["cache"] == str(file), info.stderr
        pruned = _cli("cache", "prune", f"--cache={where}", "--max-gb", "1", env=env, cwd=work)
        assert pruned.returncode == 0, pruned.stderr
    # the table files too: export --out=~/x wrote a folder named ~ in the working directory, import '~/x' found none
    key = json.loads(listed.stdout)[0]["table_key"]
    exported = _cli("table", "export", "--table", key, "--format", "csv", "--out=~/shared.csv", "--cache=~/l.sqlite",
                    env=env, cwd=work)
    assert exported.returncode == 0 and (tmp_path / "shared.csv").is_file(), exported.stderr
    imported = _cli("table", "import", "~/shared.csv", "--cache=~/again.sqlite", env=env, cwd=work)
    assert imported.returncode == 0 and (tmp_path / "again.sqlite").is_file(), imported.stderr
    assert list(work.iterdir()) == []


def test_adb_only_flags_with_the_host_runner_and_runner_flags_of_cache_commands_are_refused(tmp_path):
    """--serial, --binary and --cpu-mask (even an invalid mask) were dropped without a word on the host, and table
    list/import took every runner flag and used none; the phone's environment variables are no error on the host."""
    bad = "ir_r1_k4_s1_e6_c16"  # an architecture refused before anything is converted or timed
    cache = ["--cache", str(tmp_path / "latency.sqlite")]
    out = _cli("measure", bad, "--runner", "host", "--cpu-mask", "zz", *cache)
    assert out.returncode == 2 and out.stderr == "error: --cpu-mask: settings of the adb runner, not of --runner host\n"
    out = _cli("predict", bad, "--serial", "S", "--binary", "b", "--no-xnnpack", *cache)
    assert out.returncode == 2 and out.stderr.startswith(
        "error: --serial, --binary, --no-xnnpack: settings of the adb runner, not of --runner host"), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    env = dict(os.environ, ANDROID_SERIAL="S", TFLITE_BENCHMARK_MODEL=str(tmp_path / "benchmark_model"))
    out = _cli("measure", bad, *cache, env=env)
    assert out.returncode == 2 and "kernel must be odd" in out.stderr and "adb" not in out.stderr, out.stderr
    for argv in (["table", "list", "--runner", "host"], ["table", "import", str(tmp_path / "t.json"), "--serial", "S"],
                 ["table", "list", "--threads", "2", "--cache", str(tmp_path / "latency.sqlite")]):
        out = _cli(*argv)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "unrecognized arguments" in out.stderr, argv
        assert out.stdout == "", argv


def test_an_import_merges_the_tables_metadata_per_space(built, tmp_path):
    """Importing a table this cache holds already kept the rows of both but replaced the metadata wholesale: the
    build-time records and validation figures of this cache's other spaces were lost."""
    from latency.table import export_table, import_table

    source = LatencyCache(built["cache"])
    key = source.tables()[0]["table_key"]
    exported = tmp_path / "table.json"
    export_table(source, key, exported, "json")
    shipped = source.tables()[0]["meta"]
    source.close()
    cache = LatencyCache(tmp_path / "here" / "latency.sqlite")
    import_table(cache, exported)
    cache.set_table_meta(key, ("spaces", "other"), {"build_seconds": 60.0})
    cache.set_table_meta(key, ("validation", "other"), {"n": 3})
    import_table(cache, exported)
    meta = cache.tables(key)[0]["meta"]
    assert meta["spaces"] == {**shipped["spaces"], "other": {"build_seconds": 60.0}}
    assert meta["validation"]["other"] == {"n": 3}
    cache.close()


@pytest.mark.parametrize("text, says", [
    ("defaults: [{search_space: mnasnet}]\n", "defaults must be a list of space names"),
    ("defaults: mnasnet\n", "defaults must be a list of space names"),
    ("blocks: 3\n", "not of the form of configs/search_space/mnasnet.yaml"),
    ("conv_ops: [ds]\n", "missing 1 required positional argument: 'blocks'"),
])
def test_a_malformed_space_file_is_one_line(tmp_path, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_space(str(path))
    assert says in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_missing_phone_tables_build_command_keeps_fixed_performance_and_cooldown(phone, micro, tmp_path):
    """Both are part of a phone table's identity: the command a 'table missing' error named dropped them, and
    following it built a table under another key."""
    cache = tmp_path / "latency.sqlite"
    config = {"runner": "adb", "benchmark_binary": phone["binary"], **RUNS, "anchor": None,
              "fixed_performance": True, "cooldown_s": 0.5}
    with pytest.raises(LatencyTableMissing) as err:
        load_predictor(config, **SHAPE, cache_path=cache, space=micro)
    command = str(err.value).split("build it with: ", 1)[1]
    assert "--fixed-performance" in command and "--cooldown 0.5" in command
    assert _identity_of(command) == _looked_up(config, cache)


def test_export_takes_no_space(tmp_path):
    """A table is exported whole (every space's calibration): --space was accepted and ignored."""
    out = _cli("table", "export", "--format", "csv", "--out", str(tmp_path / "t.csv"), "--space", "mnasnet")
    assert out.returncode == 2 and "unrecognized arguments: --space mnasnet" in out.stderr, out.stderr


@pytest.mark.parametrize("content, said", [
    ('{"x": 1}', "not a mnasnet-search latency table file"),  # was "(KeyError: 'rows')": what the file is comes first
    ('{"format": "mnasnet-search latency table", "version": 1, "rows": 3}', "its rows must be a list"),
    ('{"format": "mnasnet-search latency table", "version": 1, "rows": []}', "it has no 'device'"),  # was KeyError
    ('{"format": "mnasnet-search latency table", "version": 2, "rows": []}', "format version 2"),
])
def test_a_file_that_is_not_a_table_export_is_named_for_what_it_lacks(tmp_path, content, said):
    from latency.table import read_export

    path = tmp_path / "shared.json"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        read_export(path)
    assert str(path) in str(err.value) and said in str(err.value) and "\n" not in str(err.value), err.value
    assert "KeyError" not in str(err.value)


def test_a_service_failure_in_a_table_command_is_one_error_line(monkeypatch, capsys):
    """A latency worker that died twice (or gave no answer) while table build or validate timed its models raised
    the service's RuntimeError past the command's handler: a traceback."""
    import latency.__main__ as cli

    def died(args):
        raise RuntimeError("latency worker process died twice (out of memory?)")

    monkeypatch.setitem(cli.TABLE_COMMANDS, "build", died)
    assert cli.main(["table", "build"]) == 2
    assert capsys.readouterr().err == "error: latency worker process died twice (out of memory?)\n"


def test_a_searchs_latency_config_loads_its_predictor(tmp_path):
    """README's load_predictor(dict(cfg.latency), ...) passed the search's mode keys (mode, hybrid_top_k, table_space,
    table) on to the runner, which refused them: 'unknown latency field(s) for runner 'host''."""
    from hydra import compose, initialize_config_dir

    from mnas_common.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("search", overrides=["latency.mode=hybrid"])
    with pytest.raises(LatencyTableMissing, match="^no latency table for host:"):
        load_predictor(dict(cfg.latency), resolution=224, channels=3, num_classes=1000,
                       cache_path=tmp_path / "latency.sqlite")


def test_table_list_shows_each_spaces_stated_error(tmp_path):
    """The README sends users to table list for a table's stated error, which only its --json held."""
    cache = LatencyCache(tmp_path / "latency.sqlite")
    identity = {"device": "adb:Pixel 2", "settings": {}, "versions": {}, "resolution": 224, "channels": 3,
                "num_classes": 1000}
    cache.put_table("k" * 64, identity, {"spaces": {"mnasnet": {"build_seconds": 900}}})
    cache.set_table_meta("k" * 64, ("validation", "mnasnet"),
                         {"n": 200, "within_5": 0.9, "within_10": 0.995, "kendall_tau": 0.9551})
    cache.close()
    listed = _cli("table", "list", "--cache", str(tmp_path / "latency.sqlite"))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1] == ("  mnasnet: held-out error over 200 models: 90.0% within +-5%, 99.5% "
                                             "within +-10%, Kendall tau 0.955")
