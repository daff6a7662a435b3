"""SQLite cache of conversions, measurements and per-device layer tables, shared by runs and by processes.

Keys are hashes of everything that changes the answer: a conversion is keyed by (architecture string, resolution,
channels, classes, converter versions, conversion mode); a measurement by the conversion key plus the device
identity and the runner settings (runtime version included: timings differ between LiteRT releases). Writers use
short ``BEGIN IMMEDIATE`` transactions in WAL mode, so several search processes can share one cache. A corrupted
database is reported, never trusted or overwritten.

Converted files are checked on every read. Their size and SHA-256 are recorded when a conversion is written, and
paths are stored relative to the cache directory (the directory holding the SQLite file), so a copied cache reads
its own files. A file that is missing, truncated or changed makes its conversion a miss (the caller converts again
and records why). Rows written before these checks existed (absolute paths, no digests) are migrated in place when
read: the file this cache holds for that conversion is accepted if ONNX and LiteRT load it, and its digests are
recorded; otherwise it is a miss.

Converted models take room (about 27 MB for a MnasNet at 224x224x3: its .onnx and .tflite), so ``trim_models`` keeps
``models/`` under a size cap (``latency.cache_max_gb``), removing the least recently used models' files; their rows
are kept, marked evicted, and such a model is simply converted again if it is ever asked for. Timings are never
evicted.

Layer tables (``latency table build``) live here too: ``latency_tables`` names one table (device, runner settings,
converter versions, input), ``table_layers`` holds one timed layer per row (committed as each is timed, so an
interrupted build resumes), ``table_models`` the whole-model measurements that calibrate and validate the predictor.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 2  # 1 (implicit, user_version 0): absolute paths, no digests; 2: relative paths, digests, tables
ARTIFACT_FIELDS = ("onnx_path", "tflite_path")
CACHE_TABLES = frozenset({"conversions", "measurements", "latency_tables", "table_layers", "anchors", "table_models"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversions (
    key TEXT PRIMARY KEY, arch TEXT NOT NULL, resolution INTEGER, channels INTEGER, num_classes INTEGER,
    status TEXT NOT NULL, record TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS measurements (
    key TEXT PRIMARY KEY, conversion_key TEXT NOT NULL, arch TEXT NOT NULL, device TEXT NOT NULL,
    settings TEXT NOT NULL, result TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS latency_tables (
    table_key TEXT PRIMARY KEY, device TEXT NOT NULL, settings TEXT NOT NULL, versions TEXT NOT NULL,
    resolution INTEGER NOT NULL, channels INTEGER NOT NULL, num_classes INTEGER NOT NULL, meta TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS table_layers (
    table_key TEXT NOT NULL, layer TEXT NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL, latency_ms REAL,
    result TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (table_key, layer)
);
CREATE TABLE IF NOT EXISTS anchors (
    key TEXT PRIMARY KEY, arch TEXT NOT NULL, device TEXT NOT NULL, settings TEXT NOT NULL, ref_ms REAL NOT NULL,
    result TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS table_models (
    table_key TEXT NOT NULL, purpose TEXT NOT NULL, space TEXT NOT NULL, arch TEXT NOT NULL, latency_ms REAL NOT NULL,
    result TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (table_key, purpose, space, arch)
);
"""


class LatencyCacheError(RuntimeError):
    pass


def cap_bytes(gb: float) -> int:
    """A size cap in GB as bytes for :meth:`LatencyCache.trim_models`; a cap beyond any disk (1e300 GB) is no cap,
    not int(inf)'s OverflowError."""
    return int(min(gb * 1e9, 2**62))


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def file_digest(path: str | Path) -> dict:
    """Size and SHA-256 of a file (converted models are a few MB: hashing one takes milliseconds)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def artifact_problem(path: Path, expected: dict) -> str | None:
    """Why ``path`` is not the file recorded as ``expected`` ({size, sha256}), or None when it is."""
    if not path.is_file():
        return f"{path.name} missing"
    size = path.stat().st_size
    if size != expected["size"]:
        return f"{path.name} has {size} bytes, {expected['size']} were written (truncated or replaced)"
    if file_digest(path)["sha256"] != expected["sha256"]:
        return f"{path.name} content changed (SHA-256 differs from the one recorded)"
    return None


def _loads(path: Path) -> str | None:
    """Legacy rows carry no digests: accept a file only if its own library loads it. Returns the problem or None."""
    try:
        if path.suffix == ".onnx":
            import onnx

            onnx.checker.check_model(onnx.load(str(path)))
        else:
            from latency.convert import make_interpreter

            make_interpreter(path)
    except Exception as exc:  # any failure to load is damage
        from mnas_common.errors import first_line

        return f"{path.name} does not load ({first_line(exc, with_type=True, limit=160)})"
    return None


def _model_folders(models: Path) -> list[tuple[Path, int, float]]:
    """``(folder, bytes, last use)`` of every converted model under ``models`` (one folder per conversion key)."""
    out = []
    try:
        entries = list(os.scandir(models))
    except FileNotFoundError:
        return out
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            size = sum(f.stat(follow_symlinks=False).st_size for f in os.scandir(entry.path)
                       if f.is_file(follow_symlinks=False))
            out.append((Path(entry.path), size, entry.stat(follow_symlinks=False).st_mtime))
        except FileNotFoundError:  # removed meanwhile (another process trimmed it, or a conversion restarted)
            continue
    return out


def touch(path: Path) -> None:
    """Mark a converted model's folder as used now (what :meth:`LatencyCache.trim_models` evicts last)."""
    try:
        os.utime(path)
    except OSError:
        pass


class LatencyCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.root = self.path.parent.resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()  # one connection, used by the service's threads: one statement at a time
        self._batch = False  # inside batch(): writes join its transaction
        self.conn = None
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None, check_same_thread=False)
            row = self.conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {row and row[0]}")
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            # Its tables, then its indexes, views and triggers (SQLite's internal ones and the indexes it makes for
            # primary keys are named sqlite_*)
            names = [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' "
                                                     "ESCAPE '\\' ORDER BY type != 'table', name")]
        except sqlite3.DatabaseError as exc:
            if self.conn is not None:  # refused: nothing of it stays open
                self.conn.close()
            raise LatencyCacheError(
                f"latency cache {self.path} is corrupted or not a cache ({exc}); move it away to start a new one"
            ) from None
        if version > SCHEMA_VERSION:
            self.conn.close()
            raise LatencyCacheError(f"latency cache {self.path} has schema {version}, newer than this version "
                                    f"understands ({SCHEMA_VERSION}); upgrade mnasnet-search or use another cache")
        # A new cache is a file with nothing in it; one with anything but the cache's tables is another program's
        # database (a search's run.sqlite passed as --cache: both have user_version 0, as a schema-1 cache has),
        # which creating the schema in it and switching it to WAL would change
        if foreign := [name for name in names if name not in CACHE_TABLES]:
            self.conn.close()
            raise LatencyCacheError(
                f"latency cache {self.path} is an SQLite database but not a latency cache (it holds "
                f"{', '.join(foreign[:4])}{', ...' if len(foreign) > 4 else ''}); it was not modified: move it away "
                "or use another cache path")
        # Creating or migrating the file: processes that open a new cache at the same moment (two device actors of
        # one node) find it locked while one of them switches it to WAL, which SQLite's busy timeout does not cover
        def set_up() -> None:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(_SCHEMA)
            if version < SCHEMA_VERSION:
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

        try:
            self._while_locked(set_up, "open", attempts=40, pause=lambda attempt: 0.05 * (1 + attempt % 10))
        except LatencyCacheError:
            self.conn.close()
            raise

    # ------------------------------------------------------------------ plumbing
    def _read(self, sql: str, args: tuple = ()) -> tuple | None:
        with self._lock:
            return self.conn.execute(sql, args).fetchone()

    def _read_all(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.conn.execute(sql, args).fetchall()

    def _while_locked(self, step, what: str, *, attempts: int = 5, pause=lambda attempt: 0.2 * (attempt + 1)):
        """``step()``, tried again (after a rollback) while another process holds the database's lock, at most
        ``attempts`` times; any other SQLite failure, or the last attempt's, is one :class:`LatencyCacheError`
        line ("cannot <what> latency cache ...")."""
        for attempt in range(attempts):
            try:
                return step()
            except sqlite3.OperationalError as exc:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if "locked" not in str(exc) or attempt == attempts - 1:
                    raise LatencyCacheError(f"cannot {what} latency cache {self.path}: {exc}") from None
                time.sleep(pause(attempt))

    def _write(self, sql: str, args: tuple) -> None:
        self._transaction(lambda conn: conn.execute(sql, args))

    def _transaction(self, work) -> None:
        """``work(conn)`` in one write transaction (SQLite's write lock held from its start: what it reads no other
        writer changes before it commits), retried while another writer holds the lock. Inside :meth:`batch`, part
        of the batch's transaction."""
        with self._lock:
            if self._batch:
                try:
                    work(self.conn)
                except sqlite3.OperationalError as exc:
                    raise LatencyCacheError(f"cannot write latency cache {self.path}: {exc}") from None
                return

            def once() -> None:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    work(self.conn)
                    self.conn.execute("COMMIT")
                except BaseException:  # whatever failed (``work``, Ctrl-C): no transaction is left open
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise

            self._while_locked(once, "write")

    @contextmanager
    def batch(self):
        """Every write of this thread inside the block in one transaction: all of them are stored, or (the block
        raised) none. Other threads' writes through this object wait for it; other processes' for its commit."""
        with self._lock:
            if self._batch:
                raise RuntimeError("latency cache batches do not nest")
            self._while_locked(lambda: self.conn.execute("BEGIN IMMEDIATE"), "write")
            self._batch = True
            try:
                yield
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            finally:
                self._batch = False

    # ------------------------------------------------------------------ paths
    def relative(self, path: str | Path) -> str:
        """A path inside the cache directory as stored: relative to it (POSIX separators)."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def locate(self, stored: str, conversion_key: str) -> Path:
        """Where this cache holds a stored path: relative paths resolve against the cache directory; an absolute
        path from an older row is used if it lies inside this cache, else this cache's own copy of that file
        (``models/<conversion key>/<name>``: a copied cache must never read the original's files)."""
        path = Path(stored)
        if not path.is_absolute():
            return self.root / path
        try:
            path.resolve().relative_to(self.root)
            return path
        except ValueError:
            return self.root / "models" / conversion_key / path.name

    def _with_absolute_paths(self, data: dict, conversion_key: str) -> dict:
        out = dict(data)
        for name in ARTIFACT_FIELDS:
            if out.get(name):
                out[name] = str(self.locate(out[name], conversion_key))
        return out

    def _with_relative_paths(self, data: dict) -> dict:
        out = dict(data)
        for name in ARTIFACT_FIELDS:
            if out.get(name):
                try:
                    out[name] = self.relative(out[name])
                except ValueError:  # a file outside the cache directory is stored as it is
                    pass
        return out

    # ------------------------------------------------------------------ conversions
    def lookup_conversion(self, key: str) -> tuple[dict | None, str | None]:
        """(record with absolute, verified paths, None) on a hit; (None, why) when the row's files are damaged;
        (None, None) when there is no row. A failed conversion (a mismatch) is returned as it is: it has no files."""
        row = self._read("SELECT record FROM conversions WHERE key = ?", (key,))
        if row is None:
            return None, None
        stored = json.loads(row[0])
        if stored.get("evicted_at"):  # its files were removed to keep the cache under its size cap: convert anew
            return None, None
        record = self._with_absolute_paths(stored, key)
        if record.get("status") != "ok":
            return record, None
        digests = stored.get("artifacts")
        problems = []
        for name in ARTIFACT_FIELDS:
            path = Path(record.get(name) or "")
            if digests and name in digests:
                problem = artifact_problem(path, digests[name])
            else:
                problem = _loads(path) if path.is_file() else f"{path.name or name} missing"
            if problem:
                problems.append(problem)
        if problems:
            return None, "; ".join(problems)
        if not digests:  # a legacy row whose files load: migrate it in place (relative paths, digests)
            self.put_conversion(key, record)
        touch(Path(record["tflite_path"]).parent)  # handed out: the size cap removes it last
        return record, None

    def get_conversion(self, key: str) -> dict | None:
        return self.lookup_conversion(key)[0]

    def put_conversion(self, key: str, record: dict) -> None:
        """Store a conversion; files of an ``ok`` one get their size and SHA-256 recorded now."""
        stored = dict(record)
        stored.pop("cached", None)
        if stored.get("status") == "ok":
            stored["artifacts"] = {name: file_digest(stored[name]) for name in ARTIFACT_FIELDS if stored.get(name)}
        stored = self._with_relative_paths(stored)
        self._write(
            "INSERT OR REPLACE INTO conversions (key, arch, resolution, channels, num_classes, status, record, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, stored["arch"], stored["resolution"], stored["channels"], stored["num_classes"], stored["status"],
             json.dumps(stored), time.time()),
        )

    # ------------------------------------------------------------------ size of the converted models
    def models_usage(self) -> dict:
        """``{"models": folders, "bytes": their size}`` of the converted models under ``models/``."""
        folders = _model_folders(self.root / "models")
        return {"models": len(folders), "bytes": sum(size for _, size, _ in folders)}

    def conversion_rows(self) -> list[tuple]:
        """(key, arch, resolution, channels, num_classes) of every conversion row."""
        return self._read_all("SELECT key, arch, resolution, channels, num_classes FROM conversions")

    def conversion_counts(self) -> dict:
        """Conversion rows by state: ``ok`` (not evicted; whether its files are intact is checked when it is looked
        up), ``evicted`` (files removed by the size cap), ``failed``."""
        # LIKE, not json_extract: SQLite's JSON functions refuse a whole query over one row they cannot parse
        rows = self._read_all("SELECT status, record LIKE '%\"evicted_at\"%', COUNT(*) "
                              "FROM conversions GROUP BY 1, 2")
        out = {"ok": 0, "evicted": 0, "failed": 0}
        for status, evicted, n in rows:
            out["evicted" if evicted else ("ok" if status == "ok" else "failed")] += n
        return out

    def count(self, table: str) -> int:
        """Rows of one of the cache's tables (``conversions``, ``measurements``, ``latency_tables``, ``anchors``)."""
        if table not in ("conversions", "measurements", "latency_tables", "anchors"):
            raise ValueError(f"no such cache table: {table}")
        return self._read(f"SELECT COUNT(*) FROM {table}")[0]

    def trim_models(self, max_bytes: int, *, keep_recent_s: float = 600.0, protect: frozenset | set = frozenset()
                    ) -> dict | None:
        """Remove the least recently used converted models until ``models/`` holds at most ``max_bytes``.

        A folder's modification time is its last use (touched whenever ``lookup_conversion`` hands the conversion out,
        and by the service when it times it); folders used in the last ``keep_recent_s`` seconds (a conversion in
        progress, a model waiting for its timing) and conversion keys in ``protect`` (the drift anchor) are kept, so
        the cap is soft. An evicted conversion's row is marked (``evicted_at``) before its files go: a later request
        converts it again, as a miss, and its timings stay cached (they are keyed by the conversion, which converts to
        the same key). Only one process trims a cache at a time; another one asking meanwhile returns None at once.
        Returns ``{"removed", "freed_bytes", "kept_models", "kept_bytes"}``."""
        import fcntl

        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / "trim.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            folders = sorted(_model_folders(self.root / "models"), key=lambda f: f[2])  # least recently used first
            total = sum(size for _, size, _ in folders)
            removed = freed = 0
            now = time.time()
            for path, size, used in folders:
                if total <= max_bytes:
                    break
                if path.name in protect or now - used < keep_recent_s:
                    continue
                self._write("UPDATE conversions SET record = json_set(record, '$.evicted_at', ?) "
                            "WHERE key = ? AND status = 'ok'", (now, path.name))
                shutil.rmtree(path, ignore_errors=True)
                total -= size
                freed += size
                removed += 1
            return {"removed": removed, "freed_bytes": freed, "kept_models": len(folders) - removed,
                    "kept_bytes": total}

    # ------------------------------------------------------------------ measurements
    def get_measurement(self, key: str) -> dict | None:
        row = self._read("SELECT result, conversion_key FROM measurements WHERE key = ?", (key,))
        return None if row is None else self._with_absolute_paths(json.loads(row[0]), row[1])

    def put_measurement(self, key: str, conversion_key: str, result: dict, device: str, settings: dict) -> None:
        self._write(
            "INSERT OR REPLACE INTO measurements (key, conversion_key, arch, device, settings, result, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, conversion_key, result["arch"], device, json.dumps(settings, sort_keys=True),
             json.dumps(self._with_relative_paths(result)), time.time()),
        )

    # ------------------------------------------------------------------ drift anchors
    def anchor(self, key: str) -> dict | None:
        """The drift anchor's reference (``{ref_ms, ...}``) for a device and settings, or None."""
        row = self._read("SELECT ref_ms, result FROM anchors WHERE key = ?", (key,))
        return None if row is None else {**json.loads(row[1]), "ref_ms": row[0]}

    def rekey_anchor(self, old: str, new: str) -> dict | None:
        """Move the anchor reference stored under ``old`` to ``new`` (kept where ``new`` has one already): an older
        key scheme's row is taken over once, by one key, never by every later one. Returns the reference at ``new``."""
        def move(conn) -> None:
            conn.execute("UPDATE OR IGNORE anchors SET key = ? WHERE key = ?", (new, old))
            conn.execute("DELETE FROM anchors WHERE key = ?", (old,))

        self._transaction(move)
        return self.anchor(new)

    def anchors(self) -> list[dict]:
        """Every drift-anchor reference of this cache: ``{key, arch, device, settings, result}``."""
        rows = self._read_all("SELECT key, arch, device, settings, result FROM anchors")
        return [{"key": k, "arch": a, "device": d, "settings": json.loads(s), "result": json.loads(r)}
                for k, a, d, s, r in rows]

    def put_anchor(self, key: str, arch: str, device: str, settings: dict, result: dict) -> dict:
        """Store an anchor reference unless one is there already (the first writer wins, so every measurement of a
        cache shares one scale); returns the stored one."""
        self._write("INSERT OR IGNORE INTO anchors (key, arch, device, settings, ref_ms, result, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, arch, device, json.dumps(settings, sort_keys=True), float(result["ref_ms"]),
                     json.dumps(result), time.time()))
        return self.anchor(key)

    def counts(self) -> dict:
        return {"conversions": self.count("conversions"), "measurements": self.count("measurements")}

    # ------------------------------------------------------------------ layer tables
    def put_table(self, table_key: str, identity: dict, meta: dict) -> None:
        """Create or update a table's identity row (device, settings, versions, input) and its metadata."""
        self._write(
            "INSERT INTO latency_tables (table_key, device, settings, versions, resolution, channels, num_classes, "
            "meta, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(table_key) DO UPDATE SET meta = "
            "excluded.meta",
            (table_key, identity["device"], json.dumps(identity["settings"], sort_keys=True),
             json.dumps(identity["versions"], sort_keys=True), identity["resolution"], identity["channels"],
             identity["num_classes"], json.dumps(meta), time.time()),
        )

    def set_table_meta(self, table_key: str, keys: Sequence[str], value) -> None:
        """Set one entry of an existing table's metadata (``keys``: the path of nested keys); see
        :meth:`update_table_meta`."""
        self.update_table_meta(table_key, keys, lambda _old: value)

    def update_table_meta(self, table_key: str, keys: Sequence[str], update):
        """Replace one entry of an existing table's metadata (``keys``: the path of nested keys) by ``update(old)``
        (``old`` None where there is none), read and written in one transaction, so writers of different entries
        (a build's clock, a validation, a predictor's stored decision), or of the same one, never undo each other's.
        Returns the new entry (None, and nothing written, where the table does not exist). Values are stored as
        ``put_table`` stores them (Python's JSON: NaN included, as a held-out set's Kendall tau can be; SQLite's own
        JSON functions refuse it)."""
        if not keys:
            raise ValueError("a table metadata entry needs at least one key")
        new = []

        def work(conn) -> None:
            row = conn.execute("SELECT meta FROM latency_tables WHERE table_key = ?", (table_key,)).fetchone()
            if row is None:
                return
            meta = json.loads(row[0])
            node = meta
            for key in keys[:-1]:
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]
            node[keys[-1]] = update(node.get(keys[-1]))
            conn.execute("UPDATE latency_tables SET meta = ? WHERE table_key = ?", (json.dumps(meta), table_key))
            new.append(node[keys[-1]])

        self._transaction(work)
        return new[-1] if new else None

    def tables(self, table_key: str | None = None) -> list[dict]:
        """Every table (or the one with ``table_key``): identity, metadata and row counts."""
        sql = ("SELECT t.table_key, device, settings, versions, resolution, channels, num_classes, meta, created_at, "
               "(SELECT COUNT(*) FROM table_layers l WHERE l.table_key = t.table_key AND l.status = 'ok') "
               "FROM latency_tables t" + (" WHERE t.table_key = ?" if table_key else "") + " ORDER BY created_at")
        out = []
        for row in self._read_all(sql, (table_key,) if table_key else ()):
            models = dict(self._read_all("SELECT purpose || ':' || space, COUNT(*) FROM table_models "
                                         "WHERE table_key = ? GROUP BY purpose, space", (row[0],)))
            out.append({"table_key": row[0], "device": row[1], "settings": json.loads(row[2]),
                        "versions": json.loads(row[3]), "resolution": row[4], "channels": row[5],
                        "num_classes": row[6], "meta": json.loads(row[7]), "created_at": row[8], "layers": row[9],
                        "models": models})
        return out

    def put_layer(self, table_key: str, layer: str, spec: dict, result: dict) -> None:
        self._write(
            "INSERT OR REPLACE INTO table_layers (table_key, layer, spec, status, latency_ms, result, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (table_key, layer, json.dumps(spec, sort_keys=True), result["status"], result.get("latency_ms"),
             json.dumps(result), time.time()),
        )

    def layers(self, table_key: str) -> dict[str, dict]:
        """layer key -> {spec, status, latency_ms, result} for every row of a table."""
        rows = self._read_all("SELECT layer, spec, status, latency_ms, result FROM table_layers WHERE table_key = ?",
                              (table_key,))
        return {r[0]: {"spec": json.loads(r[1]), "status": r[2], "latency_ms": r[3], "result": json.loads(r[4])}
                for r in rows}

    def put_model(self, table_key: str, purpose: str, space: str, arch: str, latency_ms: float, result: dict) -> None:
        self._write(
            "INSERT OR REPLACE INTO table_models (table_key, purpose, space, arch, latency_ms, result, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (table_key, purpose, space, arch, float(latency_ms), json.dumps(result), time.time()),
        )

    def models(self, table_key: str, purpose: str, space: str) -> list[dict]:
        rows = self._read_all("SELECT arch, latency_ms, result FROM table_models WHERE table_key = ? AND purpose = ? "
                              "AND space = ? ORDER BY created_at, arch", (table_key, purpose, space))
        return [{"arch": r[0], "latency_ms": r[1], "result": json.loads(r[2])} for r in rows]

    def close(self) -> None:
        with self._lock:
            self.conn.close()
