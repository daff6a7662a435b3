"""The run store: one SQLite file per run directory holding every child and the controller state.

Why SQLite and why this layout:
- Every evaluated child is committed the moment it finishes (``children`` row, ``committed_step`` NULL), so a
  ``kill -9`` loses at most the child being evaluated.
- A controller step is committed in one transaction: the step's rewards are final, the children are marked with
  the step, and the controller state after the update is stored (``steps`` row). On resume the driver loads the
  last committed controller state, re-samples the next batch (the controller's RNG is part of its state, so the
  batch is the same one), and takes children that were already evaluated from the store instead of evaluating
  them again.
- Only the search driver writes (one writer, as Optuna advises for SQLite); workers return results to it.

Stored results are never rewritten by a later run: opening a store with a different search configuration is refused.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2  # 2: children.seed
STORE_NAME = "run.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS children (
    step INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    tokens TEXT NOT NULL,
    arch TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    top1 REAL,
    top5 REAL,
    latency_ms REAL,
    latency_std_ms REAL,
    params INTEGER,
    macs INTEGER,
    reward REAL,
    reused INTEGER NOT NULL DEFAULT 0,
    train_seconds REAL,
    latency_seconds REAL,
    log_prob REAL,
    seed INTEGER,
    result TEXT NOT NULL,
    committed_step INTEGER,
    created_at REAL NOT NULL,
    PRIMARY KEY (step, idx)
);
CREATE INDEX IF NOT EXISTS children_arch ON children (arch);
CREATE TABLE IF NOT EXISTS steps (
    step INTEGER PRIMARY KEY,
    stats TEXT NOT NULL,
    controller_state BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS references_ (
    name TEXT PRIMARY KEY,
    arch TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


class StoreError(RuntimeError):
    """A run store that cannot be written or trusted; the message says what to do."""


@dataclass(frozen=True)
class ChildRecord:
    step: int
    idx: int
    tokens: list[int]
    arch: str
    status: str
    error: str | None
    top1: float | None
    top5: float | None
    latency_ms: float | None
    latency_std_ms: float | None
    params: int | None
    macs: int | None
    reward: float | None
    reused: bool
    train_seconds: float | None
    latency_seconds: float | None
    log_prob: float | None
    result: dict
    committed_step: int | None
    seed: int | None = None  # the child's training seed (absent in stores written before schema 2)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _dumps_state(state: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _loads_state(blob: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(blob), weights_only=True)


class RunStore:
    """SQLite file ``<run_dir>/run.sqlite``. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        if self.path.is_dir() or self.path.suffix != ".sqlite":
            self.path = self.path / STORE_NAME
        if readonly and not self.path.exists():
            raise StoreError(f"no run store at {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        try:
            self.conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA foreign_keys=ON")
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
            self._check_integrity()
            if not readonly:
                self.conn.executescript(_SCHEMA)
                self._check_version()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"run store {self.path} is unreadable ({exc}); it was not modified") from None

    # ------------------------------------------------------------------ housekeeping
    def _check_integrity(self) -> None:
        row = self.conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise StoreError(f"run store {self.path} is corrupted (quick_check: {row and row[0]}); it was not modified")

    def _check_version(self) -> None:
        version = self.get_meta("schema_version")
        if version == 1:  # schema 2 added the training seed of each child
            columns = {row[1] for row in self.conn.execute("PRAGMA table_info(children)")}
            add_seed = [] if "seed" in columns else [("ALTER TABLE children ADD COLUMN seed INTEGER", ())]
            self._write([*add_seed, ("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                                     (json.dumps(SCHEMA_VERSION),))])
        elif version is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise StoreError(f"run store {self.path} has schema version {version}, this code reads {SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, statements: Iterable[tuple[str, Sequence]]) -> None:
        """Run statements in one transaction; a full disk leaves the store exactly as it was."""
        try:
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
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self._write([("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))])

    # ------------------------------------------------------------------ children
    def add_child(
        self,
        *,
        step: int,
        idx: int,
        tokens: Sequence[int],
        arch: str,
        result: dict,
        log_prob: float | None = None,
        reused: bool = False,
    ) -> None:
        """Commit one evaluated child of a step that is not yet committed (its reward comes with the step)."""
        row = (
            step,
            idx,
            json.dumps(list(tokens)),
            arch,
            result["status"],
            result.get("error"),
            result.get("top1"),
            result.get("top5"),
            result.get("latency_ms"),
            result.get("latency_std_ms"),
            result.get("params"),
            result.get("macs"),
            int(reused),
            result.get("train_seconds"),
            result.get("latency_seconds"),
            log_prob,
            result.get("seed"),
            json.dumps(result),
            time.time(),
        )
        self._write(
            [
                (
                    "INSERT OR REPLACE INTO children (step, idx, tokens, arch, status, error, top1, top5, latency_ms, "
                    "latency_std_ms, params, macs, reused, train_seconds, latency_seconds, log_prob, seed, result, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
            ]
        )

    def pending_children(self, step: int) -> dict[int, ChildRecord]:
        """Children of ``step`` evaluated before an interruption, by index."""
        return {c.idx: c for c in self.children(where="step = ? AND committed_step IS NULL", args=(step,))}

    def find_result(self, arch: str) -> dict | None:
        """The stored evaluation of ``arch`` (identical architectures are evaluated once per run)."""
        row = self.conn.execute(
            "SELECT result FROM children WHERE arch = ? AND reused = 0 ORDER BY step, idx LIMIT 1", (arch,)
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def commit_step(self, step: int, rewards: Sequence[float], stats: dict, controller_state: Any) -> None:
        """Atomically: the step's rewards, its children marked committed, the controller state after the update."""
        blob = _dumps_state(controller_state)
        statements: list[tuple[str, Sequence]] = [
            ("UPDATE children SET reward = ?, committed_step = ? WHERE step = ? AND idx = ?", (r, step, step, i))
            for i, r in enumerate(rewards)
        ]
        statements.append(
            (
                "INSERT INTO steps (step, stats, controller_state, created_at) VALUES (?, ?, ?, ?)",
                (step, json.dumps(stats), blob, time.time()),
            )
        )
        self._write(statements)

    def last_step(self) -> int:
        """The last committed step, -1 when none."""
        row = self.conn.execute("SELECT MAX(step) FROM steps").fetchone()
        return -1 if row[0] is None else int(row[0])

    def controller_state(self, step: int) -> Any:
        row = self.conn.execute("SELECT controller_state FROM steps WHERE step = ?", (step,)).fetchone()
        if row is None:
            raise StoreError(f"run store {self.path} has no controller state for step {step}")
        return _loads_state(row[0])

    def steps(self) -> list[dict]:
        rows = self.conn.execute("SELECT step, stats, created_at FROM steps ORDER BY step").fetchall()
        return [{"step": s, "created_at": t, **json.loads(stats)} for s, stats, t in rows]

    def children(self, *, committed_only: bool = False, where: str = "", args: Sequence = ()) -> list[ChildRecord]:
        clauses = [c for c in (where, "committed_step IS NOT NULL" if committed_only else "") if c]
        sql = "SELECT * FROM children" + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY step, idx"
        cursor = self.conn.execute(sql, tuple(args))
        names = [d[0] for d in cursor.description]
        out = []
        for values in cursor.fetchall():
            row = dict(zip(names, values))
            row["tokens"] = json.loads(row["tokens"])
            row["result"] = json.loads(row["result"])
            row["reused"] = bool(row["reused"])
            row.pop("created_at")
            out.append(ChildRecord(**row))
        return out

    def num_committed_children(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM children WHERE committed_step IS NOT NULL").fetchone()[0]

    # ------------------------------------------------------------------ reference architectures
    def add_reference(self, name: str, arch: str, result: dict) -> None:
        self._write(
            [
                (
                    "INSERT OR REPLACE INTO references_ (name, arch, result, created_at) VALUES (?, ?, ?, ?)",
                    (name, arch, json.dumps(result), time.time()),
                )
            ]
        )

    def references(self) -> dict[str, dict]:
        rows = self.conn.execute("SELECT name, arch, result FROM references_ ORDER BY name").fetchall()
        return {name: {"arch": arch, **json.loads(result)} for name, arch, result in rows}
