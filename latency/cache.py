"""SQLite cache of conversions and measurements, shared by runs and by processes.

Keys are hashes of everything that changes the answer: a conversion is keyed by (architecture string, resolution,
channels, classes, converter versions, conversion mode); a measurement by the conversion key plus the device
identity and the runner settings (runtime version included: timings differ between LiteRT releases). Writers use
short ``BEGIN IMMEDIATE`` transactions in WAL mode, so several search processes can share one cache. A corrupted
file is reported, never trusted or overwritten.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversions (
    key TEXT PRIMARY KEY, arch TEXT NOT NULL, resolution INTEGER, channels INTEGER, num_classes INTEGER,
    status TEXT NOT NULL, record TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS measurements (
    key TEXT PRIMARY KEY, conversion_key TEXT NOT NULL, arch TEXT NOT NULL, device TEXT NOT NULL,
    settings TEXT NOT NULL, result TEXT NOT NULL, created_at REAL NOT NULL
);
"""


class LatencyCacheError(RuntimeError):
    pass


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class LatencyCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()  # one connection, used by the service's threads: one statement at a time
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None, check_same_thread=False)
            row = self.conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {row and row[0]}")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise LatencyCacheError(
                f"latency cache {self.path} is corrupted or not a cache ({exc}); move it away to start a new one"
            ) from None

    def _read(self, sql: str, args: tuple = ()) -> tuple | None:
        with self._lock:
            return self.conn.execute(sql, args).fetchone()

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            self._write_locked(sql, args)

    def _write_locked(self, sql: str, args: tuple) -> None:
        for attempt in range(5):
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute(sql, args)
                self.conn.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if "locked" not in str(exc) or attempt == 4:
                    raise LatencyCacheError(f"cannot write latency cache {self.path}: {exc}") from None
                time.sleep(0.2 * (attempt + 1))

    def get_conversion(self, key: str) -> dict | None:
        row = self._read("SELECT record FROM conversions WHERE key = ?", (key,))
        if row is None:
            return None
        record = json.loads(row[0])
        if record.get("status") == "ok" and not Path(record.get("tflite_path") or "").is_file():
            return None  # the model file was removed: convert again
        return record

    def put_conversion(self, key: str, record: dict) -> None:
        self._write(
            "INSERT OR REPLACE INTO conversions (key, arch, resolution, channels, num_classes, status, record, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, record["arch"], record["resolution"], record["channels"], record["num_classes"], record["status"],
             json.dumps(record), time.time()),
        )

    def get_measurement(self, key: str) -> dict | None:
        row = self._read("SELECT result FROM measurements WHERE key = ?", (key,))
        return None if row is None else json.loads(row[0])

    def put_measurement(self, key: str, conversion_key: str, result: dict, device: str, settings: dict) -> None:
        self._write(
            "INSERT OR REPLACE INTO measurements (key, conversion_key, arch, device, settings, result, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, conversion_key, result["arch"], device, json.dumps(settings, sort_keys=True), json.dumps(result),
             time.time()),
        )

    def counts(self) -> dict:
        return {
            "conversions": self._read("SELECT COUNT(*) FROM conversions")[0],
            "measurements": self._read("SELECT COUNT(*) FROM measurements")[0],
        }

    def close(self) -> None:
        with self._lock:
            self.conn.close()
