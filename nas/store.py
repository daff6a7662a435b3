"""The run store: one SQLite file per run directory holding every child and the controller state.

The contract (what is persisted when, who may write, what a reader may assume):

- **One writer.** A search holds an exclusive ``flock`` on ``<run_dir>/run.lock`` for as long as its store is open
  for writing; a second search on the same run directory is refused before it writes anything, with the holder's
  pid. The lock dies with its process, so a holder killed by ``kill -9`` never blocks the next run. Workers never
  write: they return results to the driver (Optuna's advice for SQLite).
- **Children first, then the step.** An evaluated child is committed the moment it finishes (``committed_step``
  NULL), so ``kill -9`` loses at most the children being evaluated. A controller step is one transaction: its
  rewards become final, its children are marked with the step, and the controller state after the update is stored
  with its SHA-256. Step commits are synced to disk (``synchronous=FULL``); a child's own row is not (WAL with
  ``synchronous=NORMAL``: safe against a killed process, and after a power cut the store is intact but may have
  lost the children of the step in progress, which are then evaluated again). That halves the driver's cost per
  child (``scripts/bench_search.py``). On resume the driver loads the last committed controller state, samples the interrupted step
  again (the controller's RNG is part of its state, so it is the same batch) and takes its stored children instead of
  evaluating them again.
- **Committed rows are immutable.** Triggers refuse any UPDATE or DELETE of a committed child and of a step, so no
  code path, and no second process that slipped past the lock, can rewrite a result the search already learnt from.
- **Readers** (``nas.pareto``, TensorBoard, a notebook) open the file read-only at any time (WAL mode) and see
  committed steps only when they ask for ``committed_only``. In a run directory they cannot write (another user's
  finished run) they read a private copy of the store, see :meth:`RunStore._private_copy`.
- **Verified on read.** Before a search writes anything it checks the file (SQLite ``quick_check``), the schema
  version, every stored child's JSON and the controller state it resumes from (its hash, then ``torch.load``). A
  damaged store is reported in one line and never modified.

The columns of ``children`` come from :class:`nas.record.ChildResult`; a store written by an older version gets the
missing columns when it is opened for writing (schema migration in place, nothing rewritten). The migration is
committed at the search's first write, after every check above: a store refused before it is written (another
search, a smaller budget, damage) keeps its old schema, see :meth:`RunStore._migrate`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mnas_common.errors import first_line

from nas.record import ChildResult, columns

SCHEMA_VERSION = 3  # 2: children.seed; 3: columns from the record (latency_source), steps.state_sha256, triggers
STORE_NAME = "run.sqlite"
LOCK_NAME = "run.lock"

_COLUMNS = columns()
_PLACEMENT = [f.name for f in dataclasses.fields(ChildResult) if f.metadata.get("placement")]
_JSON_COLUMNS = {"tokens"}
_BOOL_COLUMNS = {"reused"}
# what SQLite says when it cannot create a WAL store's -shm (or -wal) next to the store: the directory is not writable
_NEEDS_A_WRITABLE_DIRECTORY = ("readonly database", "unable to open database file")


def _schema() -> list[str]:
    cols = ",\n    ".join(f"{name} {sql}" for name, sql in _COLUMNS.items())
    return [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS children (
    {cols},
    result TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (step, idx)
)""",
        "CREATE INDEX IF NOT EXISTS children_arch ON children (arch)",
        """CREATE TABLE IF NOT EXISTS steps (
    step INTEGER PRIMARY KEY,
    stats TEXT NOT NULL,
    controller_state BLOB NOT NULL,
    state_sha256 TEXT,
    created_at REAL NOT NULL
)""",
        """CREATE TABLE IF NOT EXISTS references_ (
    name TEXT PRIMARY KEY,
    arch TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at REAL NOT NULL
)""",
    ]


def _refuse(name: str, event: str, table: str, when: str, message: str) -> str:
    return (f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE {event} ON {table} {when} "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END")


_TRIGGERS = [
    _refuse("children_committed_are_final", "UPDATE", "children", "WHEN OLD.committed_step IS NOT NULL",
            "a committed child cannot be changed"),
    _refuse("children_committed_stay", "DELETE", "children", "WHEN OLD.committed_step IS NOT NULL",
            "a committed child cannot be deleted"),
    _refuse("steps_are_final", "UPDATE", "steps", "", "a committed step cannot be changed"),
    _refuse("steps_stay", "DELETE", "steps", "", "a committed step cannot be deleted"),
]


def sqlite_uri(path: str | Path, **params: str) -> str:
    """The SQLite ``file:`` URI of ``path``, every byte of it that is not plain percent-encoded: written raw, a ``#``
    or ``?`` in a run directory's name ends the path early and a ``%XX`` is decoded (so ``exp#1`` and ``exp#2``
    would share the store ``exp``), and a path starting with ``//`` is read as a host name."""
    uri = "file://" + urllib.parse.quote(os.fsencode(os.path.abspath(path)))
    return uri + ("?" + urllib.parse.urlencode(params) if params else "")


class StoreError(RuntimeError):
    """A run store that cannot be written or trusted; the message says what to do."""


class StoreLocked(StoreError):
    """Another process is writing this run."""


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is written (None: no such file)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _dumps_state(state: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _loads_state(blob: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(blob), weights_only=True)


class _WriterLock:
    """Exclusive ``flock`` on ``run.lock``; the file names the holder (pid, host, start time) for the refusal."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 4096, 0).decode(errors="replace").strip()
            os.close(self.fd)
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} on {info['host']}, since {time.strftime('%H:%M:%S', time.localtime(info['since']))}"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise StoreLocked(f"run {path.parent} is being written by another search ({who}); wait for it to finish "
                              "or stop it, or choose another run_dir") from None
        try:
            os.ftruncate(self.fd, 0)
            me = {"pid": os.getpid(), "host": os.uname().nodename, "since": time.time()}
            os.pwrite(self.fd, json.dumps(me).encode(), 0)
        except BaseException:
            # a full disk: without this the descriptor, and so the lock, stayed open for the life of the process
            # and the same process retrying after space was freed was refused as "another search"
            self.release()
            raise

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


class RunStore:
    """SQLite file ``<run_dir>/run.sqlite``. Use as a context manager or call :meth:`close`.

    ``readonly=False`` makes this process the run's only writer (see the module docstring) and creates the store.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        if self.path.is_dir() or self.path.suffix != ".sqlite":
            self.path = self.path / STORE_NAME
        self.readonly = readonly
        self._lock: _WriterLock | None = None
        self._settled = True  # False: an existing store's migration and WAL switch wait for its first write
        self._copy: tempfile.TemporaryDirectory | None = None
        if readonly and not self.path.exists():
            raise StoreError(f"no run store at {self.path}")
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._lock = _WriterLock(self.path.parent / LOCK_NAME)
            except OSError as exc:
                raise StoreError(f"cannot write run directory {self.path.parent}: {exc.strerror or exc}") from None
        try:
            try:
                self._connect(self.path)
            except sqlite3.OperationalError as exc:
                if not readonly or not any(m in str(exc) for m in _NEEDS_A_WRITABLE_DIRECTORY):
                    raise
                self._close_connection()
                self._connect(self._private_copy(exc))
        except sqlite3.OperationalError as exc:
            self.close()
            what = "cannot read" if readonly else "cannot open for writing"
            raise StoreError(f"{what} run store {self.path} ({exc}); it was not modified") from None
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(f"run store {self.path} is unreadable ({exc}); it was not modified") from None
        except StoreError:
            self.close()
            raise

    def _connect(self, db: Path) -> None:
        """Open ``db`` (this store, or the private copy a reader reads) and check it."""
        uri = sqlite_uri(db, mode="ro") if self.readonly else sqlite_uri(db)
        self.conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
        existing = self.path.exists() and self.path.stat().st_size > 0
        row = self.conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise StoreError(f"run store {self.path} is corrupted (quick_check: {row and row[0]}); it was not modified")
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if (existing or self.readonly) and not {"meta", "children", "steps"} <= tables:
            raise StoreError(f"{self.path} is not a run store (empty or another program's file); it was not modified")
        version = self.get_meta("schema_version") if "meta" in tables else None
        if version is not None and (not isinstance(version, int) or version > SCHEMA_VERSION):
            raise StoreError(f"run store {self.path} has schema version {version!r}, this code reads up to "
                             f"{SCHEMA_VERSION}; it was not modified")
        if self.readonly:
            return
        self._migrate(tables, version, existing=existing)
        if not existing:  # an existing store's switch waits for its first write, with its migration (see _migrate)
            # after the schema's commit: the switch writes the file's header, and a kill -9 or a full disk between
            # the two left a file with no tables, refused as "not a run store" by every later search
            self.conn.execute("PRAGMA journal_mode=WAL")

    def _private_copy(self, why: sqlite3.OperationalError) -> Path:
        """The store and its ``-wal`` copied to a private temporary directory that :meth:`close` removes; the path
        of the copy. SQLite reads a WAL store only where it can create its ``-shm`` index next to it, which a reader
        of a run directory it cannot write (another user's finished run) cannot do. The ``-wal`` is copied with it,
        never ignored (as ``immutable=1`` would): a search killed by ``kill -9`` leaves committed children there.
        The copy is the store as it was when it was opened; the original is never touched."""
        try:
            self._copy = tempfile.TemporaryDirectory(prefix="mnas-run-store-")
            copy = Path(self._copy.name) / self.path.name
            files = {self.path: copy, self.path.with_name(self.path.name + "-wal"): copy.with_name(copy.name + "-wal")}
            for _ in range(3):  # a writer that started meanwhile could pair the store with a -wal of another moment
                before = {src: _signature(src) for src in files}
                for src, dst in files.items():
                    if before[src] is None:
                        dst.unlink(missing_ok=True)
                    else:
                        shutil.copyfile(src, dst)
                if {src: _signature(src) for src in files} == before:
                    return copy
            raise OSError(f"{self.path} kept changing while it was copied")
        except OSError as exc:
            where = self.path.parent
            reason = (f"the run directory {where} is not writable by this user, and SQLite needs to create "
                      f"{self.path.name}-shm there to read it" if not os.access(where, os.W_OK) else str(why))
            raise StoreError(f"cannot read run store {self.path}: {reason}; copying it to a temporary directory "
                             f"({tempfile.gettempdir()}) failed too ({exc.strerror or exc}): set TMPDIR to a writable "
                             "directory with room for it, or read it as the owner of the run directory; "
                             "it was not modified") from None

    def _migrate(self, tables: set[str], version: int | None, *, existing: bool) -> None:
        """Create a new store, or bring an older one to this schema: add what is missing, rewrite nothing.

        A new store is created and committed at once (an empty file would be refused as not a run store next time).
        An existing one has only been opened so far: the search checks it after this (``nas.run``: the same search,
        a budget no smaller than it holds, the state it resumes from) and a refused store must be the store it was.
        So its migration is a transaction left open (SQLite's DDL is transactional; this connection reads the new
        columns meanwhile), committed by the first write (:meth:`_write`, just before its own transaction: a write
        that fails then, a full disk, leaves a migrated store, not a connection whose schema went back under it) and
        rolled back when the store is closed unwritten; ``kill -9`` before that leaves the old store, which the next
        search migrates again. Its switch to WAL waits for that write too."""
        statements: list[tuple[str, Sequence]] = []
        if "children" in tables:
            have = {r[1] for r in self.conn.execute("PRAGMA table_info(children)")}
            statements += [(f"ALTER TABLE children ADD COLUMN {name} {sql.replace(' NOT NULL', '')}", ())
                           for name, sql in _COLUMNS.items() if name not in have]
            have_steps = {r[1] for r in self.conn.execute("PRAGMA table_info(steps)")}
            if "state_sha256" not in have_steps:
                statements.append(("ALTER TABLE steps ADD COLUMN state_sha256 TEXT", ()))
        statements += [(sql, ()) for sql in _schema() + _TRIGGERS]
        if version != SCHEMA_VERSION:
            statements.append(("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                               (json.dumps(SCHEMA_VERSION),)))
        if not existing:
            self._write(statements)
            return
        self._settled = False
        self.conn.execute("PRAGMA synchronous=FULL")  # for its commit: it cannot change inside the transaction
        self.conn.execute("BEGIN IMMEDIATE")
        cookie = self.conn.execute("PRAGMA schema_version").fetchone()[0]  # SQLite's: any DDL changes it
        for sql, args in statements:
            self.conn.execute(sql, args)
        if version == SCHEMA_VERSION and self.conn.execute("PRAGMA schema_version").fetchone()[0] == cookie:
            self.conn.execute("ROLLBACK")  # nothing was missing: no write waits

    # ------------------------------------------------------------------ housekeeping
    def _close_connection(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()  # rolls back a migration no write followed (see _migrate): the store stays as it was
            self.conn = None

    def close(self) -> None:
        self._close_connection()
        if self._copy is not None:
            self._copy.cleanup()
            self._copy = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, statements: Iterable[tuple[str, Sequence]], *, sync: bool = True) -> None:
        """Run statements in one transaction; a failure (a full disk) leaves the store exactly as it was.
        ``sync=False`` skips the fsync of this commit (see the module docstring: a child's row)."""
        if self.readonly:
            raise StoreError(f"run store {self.path} is open read-only")
        try:
            if not self._settled:  # an existing store's first write: its migration first (see _migrate)
                if self.conn.in_transaction:
                    self.conn.execute("COMMIT")
                self.conn.execute("PRAGMA journal_mode=WAL")
                self._settled = True
            self.conn.execute(f"PRAGMA synchronous={'FULL' if sync else 'NORMAL'}")
            self.conn.execute("BEGIN IMMEDIATE")
            for sql, args in statements:
                self.conn.execute(sql, args)
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if "full" in str(exc).lower():
                raise StoreError(
                    f"disk full while writing {self.path}: the last write was rolled back and everything committed "
                    "before it is intact; free space and re-run the same command to resume"
                ) from None
            raise StoreError(f"cannot write run store {self.path}: {exc}") from None

    # ------------------------------------------------------------------ meta
    def damaged(self, what: str, why: str | None = None) -> StoreError:
        """The error for a damaged part of this store (``what`` says which, ``why`` how); raising it changes nothing."""
        return StoreError(f"run store {self.path}: {what}" + (f" ({why})" if why else "") + "; it was not modified")

    def _rows(self, what: str, sql: str, args: Sequence = ()) -> list[tuple]:
        """The rows of a query; a page or text SQLite cannot read (``quick_check`` checks the file's structure, not
        that stored text is UTF-8) is this store's one-line damage error, never a traceback."""
        try:
            return self.conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self.damaged(f"{what} cannot be read", first_line(exc, limit=120)) from None

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._rows(f"meta {key!r}", "SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            return default
        row = rows[0]
        try:
            return json.loads(row[0])
        except ValueError:
            raise self.damaged(f"meta {key!r} is damaged", "not JSON") from None

    def set_meta(self, key: str, value: Any) -> None:
        self.set_metas({key: value})

    def set_metas(self, values: dict[str, Any]) -> None:
        """Several meta keys in one transaction."""
        self._write([("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, json.dumps(v)))
                     for k, v in values.items()])

    # ------------------------------------------------------------------ children
    @staticmethod
    def _row(child: ChildResult) -> tuple[list[str], list]:
        if child.step is None or child.idx is None or child.tokens is None:
            raise ValueError("a stored child needs its step, idx and tokens")
        data = child.to_dict()
        names = list(_COLUMNS)
        values = [json.dumps(data[n]) if n in _JSON_COLUMNS else int(data[n]) if n in _BOOL_COLUMNS else data[n]
                  for n in names]
        return names + ["result", "created_at"], values + [json.dumps(data), time.time()]

    def _insert_child(self, child: ChildResult) -> tuple[str, Sequence]:
        names, values = self._row(child)
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in ("step", "idx"))
        # A pending row of an interrupted step may be replaced (it was re-evaluated); a committed one never: the
        # WHERE clause skips it and the trigger would refuse it anyway.
        sql = (f"INSERT INTO children ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
               f"ON CONFLICT (step, idx) DO UPDATE SET {updates} WHERE committed_step IS NULL")
        return sql, values

    def add_child(self, child: ChildResult) -> None:
        """Store one evaluated child of a step that is not committed yet (its reward comes with the step)."""
        if child.committed_step is not None:
            raise ValueError("add_child stores pending children; commit_step commits them")
        self._write([self._insert_child(child)], sync=False)
        if self.conn.execute("SELECT changes()").fetchone()[0] != 1:
            raise StoreError(f"run store {self.path}: step {child.step} child {child.idx} is already committed; "
                             "committed results are never rewritten")

    def commit_step(self, step: int, rewards: dict[int, float], stats: dict, controller_state: Any,
                    children: Sequence[ChildResult] = ()) -> None:
        """Atomically: ``children`` stored (steady-state steps store and commit at once), the step's rewards
        (by child index), its children marked committed, the controller state after the update."""
        blob = _dumps_state(controller_state)
        statements = [self._insert_child(c) for c in children]
        statements += [("UPDATE children SET reward = ?, committed_step = ? WHERE step = ? AND idx = ? "
                        "AND committed_step IS NULL", (r, step, step, i)) for i, r in sorted(rewards.items())]
        # what is still pending of the step now is no child of it: an interrupted step resumed at a smaller size (a
        # smaller budget) left its higher indices behind
        statements.append(("DELETE FROM children WHERE step = ? AND committed_step IS NULL", (step,)))
        statements.append(("INSERT INTO steps (step, stats, controller_state, state_sha256, created_at) "
                           "VALUES (?, ?, ?, ?, ?)",
                           (step, json.dumps(stats), blob, hashlib.sha256(blob).hexdigest(), time.time())))
        self._write(statements)
        found = self.conn.execute("SELECT COUNT(*) FROM children WHERE committed_step = ?", (step,)).fetchone()[0]
        if found != len(rewards):
            raise StoreError(f"run store {self.path}: step {step} committed {found} children, expected {len(rewards)}")

    def pending_children(self, step: int) -> dict[int, ChildResult]:
        """Children of ``step`` evaluated before an interruption, by index."""
        return {c.idx: c for c in self.children(where="step = ? AND committed_step IS NULL", args=(step,))}

    def last_step(self) -> int:
        """The last committed step, -1 when none."""
        row, = self._rows("the steps", "SELECT MAX(step) FROM steps")
        return -1 if row[0] is None else int(row[0])

    def controller_state(self, step: int) -> Any:
        """The controller state committed with ``step``, checked against its hash before it is unpickled."""
        rows = self._rows(f"the controller state of step {step}",
                          "SELECT controller_state, state_sha256 FROM steps WHERE step = ?", (step,))
        row = rows[0] if rows else None
        if row is None:
            raise StoreError(f"run store {self.path} has no controller state for step {step}")
        blob, digest = row
        if digest is not None and hashlib.sha256(blob).hexdigest() != digest:
            raise self.damaged(f"the controller state of step {step} is damaged", "hash mismatch")
        try:
            return _loads_state(blob)
        except Exception as exc:
            raise self.damaged(f"the controller state of step {step} is damaged", exc.__class__.__name__) from None

    def steps(self) -> list[dict]:
        rows = self._rows("step statistics", "SELECT step, stats, created_at FROM steps ORDER BY step")
        try:
            return [{"step": s, "created_at": t, **json.loads(stats)} for s, stats, t in rows]
        except (ValueError, TypeError):
            raise self.damaged("step statistics are damaged", "not a JSON object") from None

    def children(self, *, committed_only: bool = False, where: str = "", args: Sequence = ()) -> list[ChildResult]:
        clauses = [c for c in (where, "committed_step IS NOT NULL" if committed_only else "") if c]
        sql = (f"SELECT result, {', '.join(_PLACEMENT)} FROM children"
               + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY step, idx")
        out = []
        for result, *placement in self._rows("the children", sql, tuple(args)):
            values = dict(zip(_PLACEMENT, placement))
            try:
                data = json.loads(result)
                if not isinstance(data, dict):
                    raise TypeError("not a JSON object")
                child = ChildResult.from_dict(data)
                damaged = child.damaged_fields()
                if damaged:
                    raise TypeError(f"{', '.join(damaged)} of the wrong type")
                # the placement columns are the truth: reward and commit change after the child is stored, and
                # stores older than schema 3 kept tokens and log_prob only in their columns
                values["tokens"] = json.loads(values["tokens"])
            except (ValueError, TypeError) as exc:
                raise self.damaged(f"child {values['step']}/{values['idx']} is damaged",
                                   f"{exc.__class__.__name__}: {first_line(exc, limit=120)}") from None
            values["reused"] = bool(values["reused"])
            out.append(dataclasses.replace(child, **values))
        return out

    def num_committed_children(self) -> int:
        return self._rows("the children", "SELECT COUNT(*) FROM children WHERE committed_step IS NOT NULL")[0][0]

    # ------------------------------------------------------------------ reference architectures
    def add_reference(self, name: str, arch: str, result: dict) -> None:
        self._write([("INSERT OR REPLACE INTO references_ (name, arch, result, created_at) VALUES (?, ?, ?, ?)",
                      (name, arch, json.dumps(result), time.time()))])

    def references(self) -> dict[str, dict]:
        out = {}
        for name, arch, result in self._rows("the references", "SELECT name, arch, result FROM references_ ORDER BY name"):
            try:
                out[name] = {"arch": arch, **json.loads(result)}
            except (ValueError, TypeError) as exc:
                raise self.damaged(f"reference {name} is damaged", exc.__class__.__name__) from None
        return out
