"""The run store: atomic steps, one writer, immutable committed rows, verified reads, migration, full disk."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from nas.record import ChildResult, LatencySource, Status, columns, export_fields
from nas.store import SCHEMA_VERSION, RunStore, StoreError, StoreLocked
from tests.conftest import ROOT


def child(arch: str, top1: float | None, lat: float | None, *, step: int = 0, idx: int = 0, status: str = "ok",
          **fields) -> ChildResult:
    c = ChildResult(arch=arch, top1=top1, latency_ms=lat, params=10, macs=20, step=step, idx=idx, tokens=[idx, 2],
                    **fields)
    return c.fail("train: loss is nan") if status == "failed" else c


def test_children_then_step_commit_atomically(tmp_path):
    with RunStore(tmp_path) as store:
        assert store.last_step() == -1
        store.add_child(child("a", 0.5, 3.0, log_prob=-1.5, scores={"synflow": 2.5}))
        store.add_child(child("b", None, None, idx=1, status="failed"))
        assert set(store.pending_children(0)) == {0, 1}
        assert store.num_committed_children() == 0
        state = {"rng": torch.get_rng_state(), "w": torch.arange(3.0)}
        store.commit_step(0, {0: 0.45, 1: -1.0}, {"reward/mean": -0.275}, state)
        assert store.pending_children(0) == {}
        assert store.last_step() == 0
        loaded = store.controller_state(0)
        assert torch.equal(loaded["rng"], state["rng"]) and torch.equal(loaded["w"], state["w"])
        kids = store.children(committed_only=True)
        assert [(c.arch, c.reward, c.status, c.committed_step) for c in kids] == [
            ("a", 0.45, Status.OK, 0), ("b", -1.0, Status.FAILED, 0)]
        assert kids[1].error == "train: loss is nan" and kids[0].log_prob == -1.5
        assert kids[0].scores == {"synflow": 2.5} and kids[0].tokens == [0, 2]
        assert store.steps()[0]["reward/mean"] == -0.275
    # survives reopening (a real file on disk)
    with RunStore(tmp_path / "run.sqlite", readonly=True) as store:
        assert store.num_committed_children() == 2


def test_the_record_is_the_source_of_columns_and_export_fields():
    assert {"step", "idx", "arch", "status", "top1", "latency_ms", "reward", "latency_source"} <= set(columns())
    assert "tokens" in columns() and "tokens" not in export_fields()
    record = ChildResult(arch="a", status="failed", latency_source="predicted")
    assert record.status is Status.FAILED and record.latency_source is LatencySource.PREDICTED
    assert json.loads(json.dumps(record.to_dict()))["status"] == "failed"
    assert ChildResult.from_dict(record.to_dict()) == record


def test_a_step_is_all_or_nothing(tmp_path):
    with RunStore(tmp_path) as store:
        store.add_child(child("a", 0.5, 3.0))
        store.commit_step(0, {0: 0.1}, {}, {})
        with pytest.raises(StoreError):
            store.commit_step(0, {0: 0.9}, {}, {})  # step 0 committed twice: the second commit fails as a whole
        assert store.children(committed_only=True)[0].reward == 0.1


def test_committed_children_can_never_be_rewritten(tmp_path):
    with RunStore(tmp_path) as store:
        store.add_child(child("a", 0.5, 3.0))
        store.add_child(child("a2", 0.6, 3.0))  # a pending row may be replaced (re-evaluated after a resume)
        store.commit_step(0, {0: 0.1}, {}, {})
        with pytest.raises(StoreError, match="already committed"):
            store.add_child(child("b", 0.9, 1.0))
        # not even with SQL behind the store's back: triggers refuse it
        for sql in ("UPDATE children SET reward = 1, committed_step = NULL", "DELETE FROM children",
                    "UPDATE steps SET stats = '{}'", "DELETE FROM steps"):
            with pytest.raises(sqlite3.IntegrityError, match="committed"):
                store.conn.execute(sql)
        assert [(c.arch, c.reward) for c in store.children(committed_only=True)] == [("a2", 0.1)]


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    with RunStore(tmp_path) as store:
        store.add_child(child("a", 0.5, 3.0))
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
            RunStore(tmp_path)
        with RunStore(tmp_path, readonly=True) as reader:  # readers are never refused
            assert reader.pending_children(0)[0].arch == "a"
    with RunStore(tmp_path):  # released on close
        pass


def test_a_writer_killed_by_kill_9_does_not_block_the_next_one(tmp_path):
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from nas.store import RunStore; "
            f"s = RunStore({str(tmp_path)!r}); print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLocked, match=f"pid {proc.pid}"):
            RunStore(tmp_path)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with RunStore(tmp_path) as store:
        assert store.last_step() == -1


def test_a_search_killed_while_it_creates_its_store_leaves_one_the_next_creates(tmp_path):
    """The new store switched to WAL (writing the file's header) before its schema's transaction: a kill -9 or a
    full disk between the two left a 4,096-byte file without tables, which every later search refused as not a run
    store until it was deleted by hand."""
    code = (f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); from nas.store import RunStore; "
            f"RunStore._write = lambda self, *args, **kwargs: os._exit(9); RunStore({str(tmp_path)!r})")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 9
    with RunStore(tmp_path) as store:
        assert store.last_step() == -1 and store.get_meta("schema_version") == SCHEMA_VERSION
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_corrupted_store_is_reported_and_left_alone(tmp_path):
    path = tmp_path / "run.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="unreadable|corrupted"):
        RunStore(path)
    assert path.read_bytes() == before


def test_empty_and_foreign_files_are_not_run_stores(tmp_path):
    (tmp_path / "run.sqlite").write_bytes(b"")
    with pytest.raises(StoreError, match="not a run store"):
        RunStore(tmp_path, readonly=True)
    other = tmp_path / "other"
    other.mkdir()
    with sqlite3.connect(other / "run.sqlite") as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a run store"):
        RunStore(other)


def test_damaged_controller_state_is_found_before_anything_is_used(tmp_path):
    with RunStore(tmp_path) as store:
        store.add_child(child("a", 0.5, 3.0))
        store.commit_step(0, {0: 0.5}, {}, {"w": torch.arange(1000.0)})
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:  # bytes changed inside the blob: SQLite cannot tell
        conn.execute("DROP TRIGGER steps_are_final")
        blob = bytearray(conn.execute("SELECT controller_state FROM steps").fetchone()[0])
        blob[len(blob) // 2] ^= 0xFF
        conn.execute("UPDATE steps SET controller_state = ?", (bytes(blob),))
    with RunStore(tmp_path) as store:
        with pytest.raises(StoreError, match="controller state of step 0 is damaged"):
            store.controller_state(0)


def test_damaged_child_json_is_reported(tmp_path):
    with RunStore(tmp_path) as store:
        store.add_child(child("a", 0.5, 3.0))
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:
        conn.execute("UPDATE children SET result = '{not json'")
    with RunStore(tmp_path, readonly=True) as store, pytest.raises(StoreError, match="child 0/0 is damaged"):
        store.children()


@pytest.mark.parametrize("table, value, read, message", [
    ("children", "null", "children", "child 0/0 is damaged"),  # valid JSON, not an object
    ("children", "[1]", "children", "child 0/0 is damaged"),
    ("steps", "[1]", "steps", "step statistics are damaged"),
    ("steps", "null", "steps", "step statistics are damaged"),
    ("references_", "{not json", "references", "reference mobilenet_v2 is damaged"),
    ("references_", "[1]", "references", "reference mobilenet_v2 is damaged"),
])
def test_damaged_rows_are_store_errors_naming_the_file(tmp_path, table, value, read, message):
    with RunStore(tmp_path) as store:
        store.add_child(child("a", 0.5, 3.0))
        store.commit_step(0, {0: 0.1}, {"reward/mean": 0.1}, {})
        store.add_reference("mobilenet_v2", "ref", {"status": "ok", "top1": 0.8})
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:
        conn.executescript("DROP TRIGGER children_committed_are_final; DROP TRIGGER steps_are_final")
        conn.execute(f"UPDATE {table} SET {'stats' if table == 'steps' else 'result'} = ?", (value,))
    with RunStore(tmp_path, readonly=True) as store, pytest.raises(StoreError, match=message) as err:
        getattr(store, read)()
    assert str(tmp_path / "run.sqlite") in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("table, column, read, message", [
    ("children", "result", "children", "the children cannot be read"),
    ("steps", "stats", "steps", "step statistics cannot be read"),
    ("references_", "result", "references", "the references cannot be read"),
    ("meta", "value", "get_meta", "meta 'budget' cannot be read"),
])
def test_text_sqlite_cannot_decode_is_a_store_error(tmp_path, table, column, read, message):
    """quick_check passes a store whose stored text is not UTF-8 (one flipped byte): reading it was an
    sqlite3.OperationalError traceback out of nas.search and nas.pareto."""
    with RunStore(tmp_path) as store:
        store.add_child(child("a", 0.5, 3.0))
        store.commit_step(0, {0: 0.1}, {"reward/mean": 0.1}, {})
        store.add_reference("mobilenet_v2", "ref", {"status": "ok", "top1": 0.8})
        store.set_meta("budget", 8)
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:
        conn.executescript("DROP TRIGGER children_committed_are_final; DROP TRIGGER steps_are_final")
        conn.execute(f"UPDATE {table} SET {column} = CAST(X'7B2261223AFF7D' AS TEXT)"
                     + (" WHERE key = 'budget'" if table == "meta" else ""))
    with RunStore(tmp_path, readonly=True) as store, pytest.raises(StoreError, match=message) as err:
        getattr(store, read)(*(["budget"] if read == "get_meta" else []))
    assert str(tmp_path / "run.sqlite") in str(err.value) and "\n" not in str(err.value)


def test_readonly_missing_store(tmp_path):
    with pytest.raises(StoreError, match="no run store"):
        RunStore(tmp_path / "nope" / "run.sqlite", readonly=True)


def test_unwritable_run_directory_is_one_line(tmp_path):
    if os.geteuid() == 0:
        target = tmp_path / "file"
        target.write_text("x")  # even root cannot make a directory under a file
        run_dir = target / "run"
    else:
        run_dir = tmp_path / "ro"
        run_dir.mkdir(mode=0o500)
    with pytest.raises(StoreError, match="cannot write run directory"):
        RunStore(run_dir)


def test_full_disk_rolls_back_and_keeps_committed_results(tmp_path):
    with RunStore(tmp_path) as store:
        store.add_child(child("a", 0.5, 3.0))
        store.commit_step(0, {0: 0.5}, {}, {"w": torch.zeros(1)})
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # SQLite's own "database or disk is full"
        store.add_child(child("b", 0.6, 2.0, step=1))
        with pytest.raises(StoreError, match="disk full .* rolled back"):
            store.commit_step(1, {0: 0.6}, {}, {"w": torch.zeros(200_000)})
        assert store.last_step() == 0
        assert store.pending_children(1)[0].arch == "b"
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE children (step INTEGER NOT NULL, idx INTEGER NOT NULL, tokens TEXT NOT NULL, arch TEXT NOT NULL,
    status TEXT NOT NULL, error TEXT, top1 REAL, top5 REAL, latency_ms REAL, latency_std_ms REAL, params INTEGER,
    macs INTEGER, reward REAL, reused INTEGER NOT NULL DEFAULT 0, train_seconds REAL, latency_seconds REAL,
    log_prob REAL, seed INTEGER, result TEXT NOT NULL, committed_step INTEGER, created_at REAL NOT NULL,
    PRIMARY KEY (step, idx));
CREATE TABLE steps (step INTEGER PRIMARY KEY, stats TEXT NOT NULL, controller_state BLOB NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE references_ (name TEXT PRIMARY KEY, arch TEXT NOT NULL, result TEXT NOT NULL, created_at REAL NOT NULL);
"""


def schema_2_store(run_dir, journal_mode: str = "wal") -> None:
    """A store exactly as schema 2 wrote it (in WAL mode, as every version did): tokens and log_prob only in their
    columns, no state hash, no triggers."""
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    conn = sqlite3.connect(run_dir / "run.sqlite")
    try:
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
        conn.executescript(SCHEMA_2)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        result = {"arch": "a", "status": "ok", "top1": 0.5, "latency_ms": 3.0, "seed": 7, "train": {"x": 1}}
        conn.execute("INSERT INTO children (step, idx, tokens, arch, status, top1, latency_ms, reward, log_prob, seed, "
                     "result, committed_step, created_at) VALUES (0, 0, '[1, 2]', 'a', 'ok', 0.5, 3.0, 0.4, -1.5, 7, ?, "
                     "0, 0)", (json.dumps(result),))
        conn.execute("INSERT INTO steps VALUES (0, '{}', ?, 0)", (buf.getvalue(),))
        conn.commit()
    finally:
        conn.close()  # the last connection: the WAL is checkpointed into the file, which is the whole store


def store_as_it_is(run_dir) -> tuple[bytes, list[str]]:
    """The store's file, byte for byte, and everything in it (schema, rows)."""
    data = (run_dir / "run.sqlite").read_bytes()
    conn = sqlite3.connect(run_dir / "run.sqlite")
    try:
        return data, list(conn.iterdump())
    finally:
        conn.close()


def test_schema_2_stores_are_read_as_they_are_and_migrated_in_place(tmp_path):
    schema_2_store(tmp_path)
    with RunStore(tmp_path, readonly=True) as store:  # readable as it is
        (old,) = store.children(committed_only=True)
        assert (old.tokens, old.log_prob, old.reward, old.seed, old.train) == ([1, 2], -1.5, 0.4, 7, {"x": 1})
    with RunStore(tmp_path) as store:  # opened for writing: migrated in place, nothing lost
        assert store.get_meta("schema_version") == SCHEMA_VERSION
        assert store.children(committed_only=True)[0].tokens == [1, 2]
        assert torch.equal(store.controller_state(0)["w"], torch.ones(2))  # no hash yet: accepted after loading
        store.add_child(child("b", 0.6, 2.0, step=1, latency_source="predicted"))
        assert store.pending_children(1)[0].latency_source is LatencySource.PREDICTED
        with pytest.raises(sqlite3.IntegrityError):  # the old committed row is protected now too
            store.conn.execute("UPDATE children SET reward = 0 WHERE step = 0")


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_an_old_store_opened_for_writing_is_migrated_by_its_first_write_only(tmp_path, journal_mode):
    """The migration was committed on every writable open, before the search's checks: a schema-2 store the search
    then refused (another search, a budget below what it holds, damage) had been migrated, though the refusal said it
    was not modified. Closed unwritten, or killed by kill -9 before its first write, the store is the one it was."""
    schema_2_store(tmp_path, journal_mode)
    before = store_as_it_is(tmp_path)
    with RunStore(tmp_path) as store:  # read as the search reads it before it writes: migrated
        assert store.get_meta("schema_version") == SCHEMA_VERSION
        (old,) = store.children(committed_only=True)
        assert old.tokens == [1, 2] and old.latency_source is None
        assert torch.equal(store.controller_state(0)["w"], torch.ones(2))
    assert store_as_it_is(tmp_path) == before
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from nas.store import RunStore; "
            f"s = RunStore({str(tmp_path)!r}); s.children(); print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert store_as_it_is(tmp_path) == before
    with RunStore(tmp_path) as store:
        store.set_meta("x", 1)  # the first write commits the migration
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        have = {r[1] for r in conn.execute("PRAGMA table_info(children)")}
        assert {"latency_source", "latency_predicted_ms"} <= have
        assert "state_sha256" in {r[1] for r in conn.execute("PRAGMA table_info(steps)")}
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0] == 4
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with RunStore(tmp_path) as store:  # a store this version wrote: nothing to migrate, no write waits
        assert not store.conn.in_transaction


def test_lock_file_names_the_holder(tmp_path):
    with RunStore(tmp_path):
        info = json.loads((tmp_path / "run.lock").read_text())
        assert info["pid"] == os.getpid() and info["since"] <= time.time()


@pytest.mark.parametrize("name", ["exp#1", "run?x", "run%41b", "ünï cödé"])
def test_run_directory_names_are_not_read_as_uri_syntax(tmp_path, name):
    # raw in a file: URI, '#' and '?' ended the path (exp#1 and exp#2 shared the store exp) and %41 became 'A'
    run_dir = tmp_path / name
    with RunStore(run_dir) as store:
        store.set_meta("name", name)
    assert sorted(os.listdir(tmp_path)) == [name]
    assert sorted(os.listdir(run_dir)) == ["run.lock", "run.sqlite"]
    with RunStore(run_dir, readonly=True) as store:
        assert store.get_meta("name") == name


def test_a_run_directory_starting_with_two_slashes(tmp_path):
    # POSIX keeps a leading '//', which a raw 'file://...' URI read as a host name
    with RunStore("/" + str(tmp_path)) as store:
        store.set_meta("x", 1)
    assert (tmp_path / "run.sqlite").exists()
    with RunStore("/" + str(tmp_path), readonly=True) as store:
        assert store.get_meta("x") == 1


def test_a_failed_lock_file_write_releases_the_lock(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "pwrite", full)
        with pytest.raises(StoreError, match="No space left"):
            RunStore(tmp_path)
    with RunStore(tmp_path) as store:  # the same process again, space freed: not refused as "another search"
        store.set_meta("x", 1)


def test_a_reader_of_a_run_directory_it_cannot_write_reads_a_private_copy(tmp_path, monkeypatch):
    # CI runs as root, whom directory permissions do not stop: the first open fails as SQLite fails for another user
    # (it cannot create run.sqlite-shm next to a WAL store); checked by hand as user nobody too
    import shutil
    import tempfile
    import urllib.parse

    from nas.store import sqlite_uri

    killed = tmp_path / "killed"  # a search killed by kill -9: committed rows still in run.sqlite-wal, no -shm
    killed.mkdir()
    with RunStore(tmp_path / "run") as store:
        store.add_child(child("a", 0.5, 3.0))
        store.commit_step(0, {0: 0.1}, {}, {})
        store.add_child(child("b", 0.6, 2.0, step=1))
        for name in ("run.sqlite", "run.sqlite-wal"):
            shutil.copyfile(tmp_path / "run" / name, killed / name)
    assert (killed / "run.sqlite-wal").stat().st_size > 0
    before = {p.name: p.read_bytes() for p in killed.iterdir()}
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    connect, opened = sqlite3.connect, []

    def not_writable(database, *args, **kwargs):
        opened.append(database)
        if database.startswith(sqlite_uri(killed)):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", not_writable)
    with RunStore(killed, readonly=True) as store:
        assert [c.arch for c in store.children(committed_only=True)] == ["a"]
        assert store.pending_children(1)[0].arch == "b"
        copy = urllib.parse.unquote(opened[-1].removeprefix("file://").split("?")[0])
        assert os.path.dirname(os.path.dirname(copy)) == str(tmp_path / "tmp")
    assert os.listdir(tmp_path / "tmp") == []  # the copy is removed on close
    assert {p.name: p.read_bytes() for p in killed.iterdir()} == before  # the original is never touched

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(StoreError, match="copying it to a temporary directory .* failed too .No space left"):
        RunStore(killed, readonly=True)
    assert os.listdir(tmp_path / "tmp") == []


def test_committing_a_step_drops_its_pending_children_beyond_the_size_it_committed(tmp_path):
    """A step interrupted with three children evaluated and resumed with a budget that leaves it two kept the third
    as a pending row for ever."""
    with RunStore(tmp_path) as store:
        for idx in range(3):
            store.add_child(child(f"a{idx}", 0.5, 10.0, idx=idx))
        store.commit_step(0, {0: 0.1, 1: 0.2}, {}, {})
        assert [(c.idx, c.committed_step) for c in store.children()] == [(0, 0), (1, 0)]
        assert store.pending_children(0) == {}
