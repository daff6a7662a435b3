"""Per-device latency lookup tables: every distinct layer a search space can produce, timed on one device.

A table is identified by the device model (``host:<arch>:<cpu>`` or ``adb:<phone model>``, no serial: a table built
on one Pixel 2 serves every Pixel 2), the runner settings (threads, runs, LiteRT version or benchmark binary, CPU
mask), the converter versions and the input (resolution, channels, classes). It lives in the latency cache:
``table_layers`` (one row per layer, committed as it is timed, so an interrupted build resumes where it stopped) and
``table_models`` (whole-model measurements that calibrate and validate the predictor, ``latency.predictor``).

Each layer is converted exactly as a whole model is (same builder modules, same ONNX export, same onnx2tf path),
with the input shape it has inside the network, and timed by the same runner with the same settings. Conversions
run in the service's worker processes in parallel; timings run in batches, each batch in one quiet window (on the
host), so the two cores convert while nothing is timed and time while nothing converts.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from latency.cache import cache_key
from latency.result import LatencyResult
from latency.service import DEFAULT_ANCHOR, anchor_key, checked_input, exclusive_lock, stored_anchor
from mnas_common.checks import positive_int, positive_number
from mnas_common.errors import first_line
from mnas_common.paths import config_dir
from search_spaces import SearchSpace, list_references, resolve_arch
from search_spaces.layers import LayerSpec, network_layers, unique

FORMAT = "mnasnet-search latency table"
FORMAT_VERSION = 1
CALIBRATION_DEFAULT = 150  # README "Latency lookup tables": on the 224 px host table, 60 gave 54.5% of held-out
                           # models within +-5% and 85.0% within +-10%, 150 gave 57.5% and 86.5%
MODEL_BATCH = 8  # whole models timed per session (calibration, validation)
CALIBRATION_SEED = 1_000_003
# Held-out architectures. Was 2_000_003 until the predictor's features were chosen on measurements that included
# that seed's first 200 models: a validation set must be one that no choice has seen.
VALIDATION_SEED = 3_000_017
CSV_FIELDS = ("record", "key", "latency_ms", "status", "space", "spec", "result")


def load_space(name: str) -> SearchSpace:
    """A search space by config name (``configs/search_space/<name>.yaml``) or by the path of a YAML file of the same
    form; a ``defaults`` list is merged as Hydra would (names from ``configs/search_space``)."""
    config = _space_config(name)
    try:
        return SearchSpace.from_config(config)
    except ValueError as exc:
        raise ValueError(f"search space {name}: {first_line(exc)}") from None


def space_label(name: str) -> str:
    """The name a space's calibration and validation sets are stored under (a file's stem for a path)."""
    return Path(name).stem if name.endswith((".yaml", ".yml")) else name


def space_names() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "search_space").glob("*.yaml"))


def _space_config(name: str, seen: tuple = ()) -> dict:
    import yaml

    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"search space file {name} not found")
    elif name in space_names():
        path = config_dir() / "search_space" / f"{name}.yaml"
    else:
        raise ValueError(f"unknown search space {name!r}; known: {', '.join(space_names())} (or a .yaml path)")
    if name in seen:
        raise ValueError(f"search space config {name!r} includes itself through its defaults")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"search space {path} is not valid YAML ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"search space {path} must be a mapping")
    defaults = data.pop("defaults", None) or []
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise ValueError(f"search space {path}: defaults must be a list of space names (as in configs/search_space/"
                         f"tiny.yaml), got {defaults!r}")
    merged: dict = {}
    for entry in defaults:
        merged.update(data if entry == "_self_" else _space_config(entry, seen + (name,)))
    if "_self_" not in defaults:
        merged.update(data)
    merged.pop("_target_", None)
    return merged


# ------------------------------------------------------------------------------------------------ identity
def table_identity(service, *, resolution: int, channels: int, num_classes: int, device: str | None = None) -> dict:
    """What a table's numbers depend on. ``device`` overrides the runner's device model (a table imported for a
    phone that is not attached)."""
    return {
        "device": device or service.runner.device_model,
        "settings": service.measurement_settings,
        "versions": service.model_versions(),
        "resolution": resolution,
        "channels": channels,
        "num_classes": num_classes,
    }


def identity_key(identity: dict) -> str:
    return cache_key(**{k: identity[k] for k in ("device", "settings", "versions", "resolution", "channels",
                                                 "num_classes")})


# the millisecond figures of a timing that a table keeps for each model (and that move with a drift-anchor scale)
MS_FIELDS = ("latency_ms", "mean_ms", "std_ms", "min_ms", "p95_ms")

RUNNER_FLAGS = (("serial", "--serial", None), ("benchmark_binary", "--binary", None), ("cpu_mask", "--cpu-mask", None),
                ("threads", "--threads", 1), ("warmup_runs", "--warmup", 10), ("num_runs", "--runs", 50),
                ("rounds", "--rounds", 3), ("anchor", "--anchor", DEFAULT_ANCHOR), ("pin_cpu", "--pin-cpu", False),
                ("quiet", "--no-quiet", True), ("use_xnnpack", "--no-xnnpack", True),
                ("fixed_performance", "--fixed-performance", False), ("cooldown_s", "--cooldown", 0.0))


def build_command(service, *, space: str, resolution: int, channels: int, num_classes: int) -> str:
    """The command line that builds the table ``service`` would look up (named in every 'table missing' error): each
    setting that is part of the table's identity, and ``--cache`` where the service's cache is not the default."""
    from latency.service import default_cache_dir

    config = dict(service.runner_config)
    if config.get("runner", "host") == "host":
        config.update(anchor=service.anchor or "none", pin_cpu=service.pin_cpu, quiet=service.gate.mode == "quiet")
    parts = ["python -m latency table build", f"--runner {config.get('runner', 'host')}"]
    for field, flag, default in RUNNER_FLAGS:
        value = config.get(field)
        if value is not None and value != default:
            parts.append(flag if isinstance(default, bool) else f"{flag} {shlex.quote(str(value))}")
    parts.append(f"--space {shlex.quote(space)} --resolution {resolution} --channels {channels} --classes {num_classes}")
    if Path(service.cache_path) != default_cache_dir() / "latency.sqlite":  # a cache of its own: build into it
        parts.append(f"--cache {shlex.quote(str(service.cache_path))}")
    return " ".join(parts)


def table_layers(space: SearchSpace, *, resolution: int, channels: int, num_classes: int,
                 archs: tuple[str, ...] = ()) -> list[LayerSpec]:
    """The space's distinct layers plus those of ``archs`` (architecture strings or reference names)."""
    layers = space.layers(resolution=resolution, channels=channels, num_classes=num_classes)
    for arch in archs:
        layers += network_layers(resolve_arch(arch), resolution=resolution, channels=channels,
                                 num_classes=num_classes)
    return unique(layers)


# ------------------------------------------------------------------------------------------------ build
def build_table(service, *, space_name: str = "mnasnet", resolution: int = 224, channels: int = 3,
                num_classes: int = 1000, archs: tuple[str, ...] | None = None, calibration: int = CALIBRATION_DEFAULT,
                batch: int = 24, progress: bool = True) -> dict:
    """Time every layer of the space not yet in the table, then measure ``calibration`` whole random architectures
    of the space (kept apart from validation). Resumable: what is committed is never done again.

    ``archs`` (default: the registered reference architectures) adds the layers of those networks too.
    Returns a summary: table key, layers total/timed now/failed, calibration models, seconds.
    """
    checked_input(resolution, channels, num_classes)
    space = load_space(space_name)
    space_name = space_label(space_name)
    archs = tuple(list_references()) if archs is None else tuple(archs)
    specs = table_layers(space, resolution=resolution, channels=channels, num_classes=num_classes, archs=archs)
    identity = table_identity(service, resolution=resolution, channels=channels, num_classes=num_classes)
    key = identity_key(identity)
    # one build of a table at a time per cache: a second would time the same layers and remove the first one's
    # conversions in progress (work/layers/<key>); run again after it ends, and it resumes where that one stopped
    with exclusive_lock(service.locks_dir / "table" / f"{key}.lock",
                        busy=f"another build of table {key} ({identity['device']}) runs on this cache now; run this "
                             "again when it ends: it resumes where that one stopped"):
        return _build_table(service, key, identity, space, space_name, specs, archs, resolution=resolution,
                            channels=channels, num_classes=num_classes, calibration=calibration, batch=batch,
                            progress=progress)


def _build_table(service, key: str, identity: dict, space: SearchSpace, space_name: str, specs: list[LayerSpec],
                 archs: tuple[str, ...], *, resolution: int, channels: int, num_classes: int, calibration: int,
                 batch: int, progress: bool) -> dict:
    from tqdm import tqdm

    cache = service.cache
    clock = _BuildClock(cache, key, identity, space_name, specs, archs)  # creates the table's row if it is new
    done = {k for k, row in cache.layers(key).items() if row["status"] == "ok" and row["result"].get("complete", True)}
    todo = [s for s in specs if s.key not in done]
    failures: list[dict] = []
    try:
        with tqdm(total=len(specs), initial=len(specs) - len(todo), desc=f"layers ({identity['device']})",
                  unit="layer", disable=not progress, dynamic_ncols=True) as bar:
            failures += _time_layers(service, key, todo, batch, bar, tick=clock.tick)
        clock.layers_done()
        models = measure_models(service, key, space, space_name, "calibration", calibration, resolution=resolution,
                                channels=channels, num_classes=num_classes, progress=progress, tick=clock.tick)
    finally:  # an interrupted sitting (Ctrl-C, an error) counts in the build time too
        clock.tick()
    return {"table_key": key, "device": identity["device"], "layers": len(specs), "timed_now": len(todo) - len(failures),
            "failed": failures, "calibration": len(models), "seconds": clock.seconds,
            "layer_seconds": clock.layer_seconds, "build_seconds_total": clock.entry["build_seconds"]}


class _BuildClock:
    """A sitting's build time, added to the table's record as it goes (after every timed batch of layers and every
    calibration model) and at its end, so that a sitting killed outright (``kill -9``, SIGTERM, a lost session)
    still counts up to its last commit: the build time a table states is the time it took, whatever the sittings."""

    def __init__(self, cache, key: str, identity: dict, space_name: str, specs: list, archs: tuple):
        self.cache, self.key, self.space_name = cache, key, space_name
        self.layers, self.archs = len(specs), list(archs)
        self.start = self._last = time.monotonic()
        self.layer_seconds: float | None = None  # the layer phase of this sitting, once it has ended
        self.entry: dict = {}
        if not cache.tables(key):
            cache.put_table(key, identity, {})
        self.tick()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start

    def tick(self) -> None:
        """Add the seconds since the last tick to the table's per-space build record (meta ``spaces``); the layer
        phase's seconds to its ``layer_seconds`` too."""
        now = time.monotonic()
        delta, self._last = now - self._last, now

        def add(entry: dict | None) -> dict:
            entry = dict(entry or {})
            entry.update(layers=self.layers, archs=self.archs, build_seconds=entry.get("build_seconds", 0.0) + delta,
                         layer_seconds=entry.get("layer_seconds", 0.0) + (delta if self.layer_seconds is None else 0.0))
            return entry

        self.entry = self.cache.update_table_meta(self.key, ("spaces", self.space_name), add)

    def layers_done(self) -> None:
        self.tick()
        self.layer_seconds = self.seconds


def _time_layers(service, key: str, todo: list[LayerSpec], batch: int, bar, tick=None) -> list[dict]:
    """Convert in all workers, time in batches (one quiet window each); returns the failures. ``tick()`` is called
    after each batch is committed."""
    work = service.work_dir / "layers" / key
    shutil.rmtree(work, ignore_errors=True)  # conversions of an interrupted build, never timed
    pending = deque(todo)
    converting: dict = {}
    ready: list[dict] = []
    timing = None
    failures: list[dict] = []
    with ThreadPoolExecutor(max_workers=service.workers + 1, thread_name_prefix="table") as threads:
        while pending or converting or ready or timing is not None:
            while pending and len(converting) < service.workers and len(ready) + len(converting) < 2 * batch:
                spec = pending.popleft()
                converting[threads.submit(service.convert_layer, spec, work / spec.key)] = spec
            if timing is None and ready and (len(ready) >= batch or not (pending or converting)):
                items, ready = ready[:batch], ready[batch:]
                timing = threads.submit(service.time_layers, items, key)
            done, _ = wait(set(converting) | ({timing} if timing is not None else set()), return_when=FIRST_COMPLETED)
            for future in done:
                if future is timing:
                    timing = None
                    try:
                        rows = future.result()
                    except Exception as exc:  # the batch is not committed: a rerun times it again
                        rows = []
                        failures.append({"layer": "(timing batch)", "error": first_line(exc, with_type=True)})
                    failures += [r for r in rows if r["status"] != "ok"]
                    bar.update(len(rows))
                    if tick is not None:
                        tick()
                    continue
                spec = converting.pop(future)
                try:
                    record = future.result()
                except Exception as exc:
                    record = {"status": "failed", "error": first_line(exc, with_type=True), "transient": True}
                if record["status"] == "ok":
                    ready.append({"layer": spec.key, "spec": spec.to_dict(), "conversion": record})
                    continue
                if not record.get("transient"):  # a mismatch belongs to the layer: record it, do not retry
                    service.cache.put_layer(key, spec.key, spec.to_dict(), {"status": "failed",
                                                                            "error": record["error"]})
                failures.append({"layer": spec.key, "error": record["error"]})
                bar.update(1)
    shutil.rmtree(work, ignore_errors=True)
    return failures


def measure_models(service, key: str, space: SearchSpace, space_name: str, purpose: str, n: int, *,
                   resolution: int, channels: int, num_classes: int, progress: bool = True,
                   tick=None) -> list[dict]:
    """Measure ``n`` random architectures of the space for real and store them with the table under ``purpose``
    (``calibration`` or ``validation``). The two sets come from different seeds and never share an architecture.
    Resumable: stored ones are kept; the first ``n`` of the seed's sequence are the set."""
    from tqdm import tqdm

    cache = service.cache
    other = "validation" if purpose == "calibration" else "calibration"
    excluded = {m["arch"] for m in cache.models(key, other, space_name)}
    seed = CALIBRATION_SEED if purpose == "calibration" else VALIDATION_SEED
    have = {m["arch"]: m for m in cache.models(key, purpose, space_name)}
    chosen: list[str] = []
    for arch in _draw(space, seed, excluded):
        if len(chosen) == n:
            break
        chosen.append(arch)
    todo = [a for a in chosen if a not in have]
    shape = {"resolution": resolution, "channels": channels, "num_classes": num_classes}
    with tqdm(total=len(chosen), initial=len(chosen) - len(todo), desc=f"{purpose} models", unit="model",
              disable=not progress, dynamic_ncols=True) as bar:
        for arch, result in time_models(service, todo, shape):
            bar.update(1)
            if not result.ok:
                continue  # a child that cannot be measured cannot calibrate or validate anything
            row = {k: getattr(result, k) for k in (*MS_FIELDS, "runs")}
            row["timing"] = result.extra.get("timing")
            cache.put_model(key, purpose, space_name, arch, result.latency_ms, row)
            have[arch] = {"arch": arch, "latency_ms": result.latency_ms, "result": row}
            if tick is not None:
                tick()
    return [have[a] for a in chosen if a in have]


def time_models(service, archs: list[str], shape: dict) -> Iterator[tuple[str, LatencyResult]]:
    """``(arch, result)`` for whole models as calibration and validation time them: converted ahead in every
    worker, timed ``MODEL_BATCH`` per session (rounds shared by the batch, see ``LatencyService.time_many``), each
    yielded as soon as its batch is timed. ``shape``: resolution, channels and num_classes."""
    with ThreadPoolExecutor(max_workers=service.workers, thread_name_prefix="convert") as threads:
        conversions = [threads.submit(_convert_safely, service, a, shape) for a in archs]
        for start in range(0, len(archs), MODEL_BATCH):
            results = service.time_many([f.result() for f in conversions[start:start + MODEL_BATCH]],
                                        batch=MODEL_BATCH)
            yield from zip(archs[start:start + MODEL_BATCH], results)


def _convert_safely(service, arch: str, shape: dict) -> dict:
    """A conversion record; a worker that hung or died makes a failed record (that model is skipped), not a crash."""
    try:
        return service.convert(arch, **shape)
    except Exception as exc:
        return {"status": "failed", "error": first_line(exc, with_type=True), "arch": arch, **shape}


def _draw(space: SearchSpace, seed: int, excluded: set[str]):
    """Distinct random architectures of ``space`` in a fixed order for ``seed``, skipping ``excluded``."""
    seen = set(excluded)
    round_ = 0
    while round_ < 1000:
        for arch in space.sample(64, seed=seed + round_):
            if arch not in seen:
                seen.add(arch)
                yield arch
        round_ += 1


# ------------------------------------------------------------------------------------------------ share
def table_spaces(info: dict, purpose: str) -> set[str]:
    """The spaces a table holds ``purpose`` (calibration or validation) models for: its ``models`` counts are keyed
    ``purpose:space``."""
    return {k.split(":", 1)[1] for k in info["models"] if k.startswith(purpose + ":")}


def export_table(cache, table_key: str, out: str | Path, fmt: str) -> dict:
    """Write one table (layers, calibration and validation measurements, identity) as CSV or JSON."""
    tables = cache.tables(table_key)
    if not tables:
        raise ValueError(f"no latency table {table_key!r} in {cache.path}; see python -m latency table list")
    info = tables[0]
    header = {"format": FORMAT, "version": FORMAT_VERSION,
              **{k: info[k] for k in ("device", "settings", "versions", "resolution", "channels", "num_classes")},
              "meta": info["meta"]}
    if info["settings"].get("anchor"):  # host timings are on the scale of this cache's drift anchor: it travels along
        header["anchor"] = stored_anchor(cache, info["device"], info["settings"], info["versions"], adopt=False)
    rows = [{"record": "layer", "key": layer, "latency_ms": r["latency_ms"], "status": r["status"], "space": "",
             "spec": r["spec"], "result": r["result"]} for layer, r in sorted(cache.layers(table_key).items())]
    for purpose in ("calibration", "validation"):
        for space in sorted(table_spaces(info, purpose)):
            rows += [{"record": purpose, "key": m["arch"], "latency_ms": m["latency_ms"], "status": "ok",
                      "space": space, "spec": {}, "result": m["result"]} for m in cache.models(table_key, purpose, space)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; name the file to write, e.g. {out / ('table.' + fmt)}")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        _write_export(tmp, fmt, table_key, header, rows)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"table_key": table_key, "rows": len(rows), "out": str(out)}


def _write_export(tmp: Path, fmt: str, table_key: str, header: dict, rows: list[dict]) -> None:
    if fmt == "json":
        tmp.write_text(json.dumps({**header, "rows": rows}, indent=1) + "\n")
    elif fmt == "csv":
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerow({"record": "table", "key": table_key, "latency_ms": "", "status": "", "space": "",
                             "spec": "", "result": json.dumps(header, sort_keys=True)})
            for row in rows:
                writer.writerow({**row, "spec": json.dumps(row["spec"], sort_keys=True),
                                 "result": json.dumps(row["result"], sort_keys=True)})
    else:
        raise ValueError(f"--format must be csv or json, got {fmt!r}")


def read_export(path: str | Path) -> dict:
    """The content of a CSV or JSON written by :func:`export_table`, read and checked whole (nothing is written):
    ``{path, identity, key, meta, anchor, rows}``. A file that is not a table export is one ``ValueError`` line."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or first_line(exc)}") from None
    try:
        header, rows = _parsed_export(text)
        identity = {k: header[k] for k in ("device", "settings", "versions", "resolution", "channels", "num_classes")}
        if not isinstance(identity["device"], str) or not identity["device"]:
            raise ValueError("the table's device must be a non-empty string")
        if not isinstance(identity["settings"], dict) or not isinstance(identity["versions"], dict):
            raise ValueError("the table's settings and versions must be objects")
        meta = _checked_meta(header.get("meta") or {})
        for name in ("resolution", "channels", "num_classes"):
            positive_int(f"the table's {name}", identity[name])
        anchor = header.get("anchor")
        if anchor:
            positive_number("the drift anchor's ref_ms", anchor.get("ref_ms") if isinstance(anchor, dict) else None)
            if not identity["settings"].get("anchor"):
                raise ValueError("the file has a drift anchor but its settings name none")
        checked = [_checked_row(row) for row in rows]
        key = identity_key(identity)
    except KeyError as exc:  # a field the format has
        raise ValueError(f"{path} is not a latency table export (it has no {exc.args[0]!r})") from None
    except (TypeError, AttributeError, json.JSONDecodeError, csv.Error) as exc:
        raise ValueError(f"{path} is not a latency table export ({first_line(exc, with_type=True)})") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {first_line(exc)}") from None
    return {"path": path, "identity": identity, "key": key, "meta": meta, "anchor": anchor, "rows": checked}


def import_table(cache, export: str | Path | dict) -> dict:
    """Write an export (a file, or what :func:`read_export` read from one) into ``cache``; rows of the same table
    are replaced.

    The whole file is read and checked before anything is written, and it is written in one transaction: a file
    that is refused leaves the cache as it was."""
    export = export if isinstance(export, dict) else read_export(export)
    identity, key, anchor = export["identity"], export["key"], export["anchor"]
    counts = {"layer": 0, "calibration": 0, "validation": 0}
    try:
        with cache.batch():  # all of it or, should a write fail, none of it
            if not cache.tables(key):
                cache.put_table(key, identity, {})
            for name, value in export["meta"].items():  # merged per space: this cache's other spaces' records stay
                cache.update_table_meta(key, (name,), lambda old, new=value: (
                    {**old, **new} if isinstance(old, dict) and isinstance(new, dict) else new))
            scale = 1.0
            if anchor:
                # This cache's own reference is kept where it has one (its measurements are on that scale); the
                # table's timings move to it: ref_here / ref_table, the anchor's own latency ratio between the two.
                # (a reference this cache keeps under the key of before the versions counted is that reference)
                stored_anchor(cache, identity["device"], identity["settings"], identity["versions"])
                kept = cache.put_anchor(anchor_key(identity["device"], identity["settings"], identity["versions"]),
                                        identity["settings"]["anchor"], identity["device"], identity["settings"], anchor)
                scale = float(kept["ref_ms"]) / float(anchor["ref_ms"])
            for kind, row_key, space, spec, latency_ms, result in export["rows"]:
                if kind == "layer":
                    cache.put_layer(key, row_key, spec, _rescaled(result, scale))
                else:
                    cache.put_model(key, kind, space, row_key, latency_ms * scale, _rescaled(result, scale))
                counts[kind] += 1
    except ValueError as exc:
        raise ValueError(f"{export['path']}: {first_line(exc)}") from None
    return {"table_key": key, "device": identity["device"], **counts, "anchor_scale": scale}


def _parsed_export(text: str) -> tuple[dict, list[dict]]:
    """(header, rows) of an export's text, CSV or JSON."""
    if text.lstrip().startswith("{"):
        data = json.loads(text)
        header, rows = {k: v for k, v in data.items() if k != "rows"}, data.get("rows")
    else:
        records = list(csv.DictReader(text.splitlines()))
        if not records or records[0].get("record") != "table":
            raise ValueError("the first row is not the table's identity row")
        header = json.loads(records[0]["result"])
        rows = [{**r, "spec": json.loads(r["spec"] or "{}"), "result": json.loads(r["result"] or "{}"),
                 "latency_ms": float(r["latency_ms"]) if r["latency_ms"] else None} for r in records[1:]]
    if not isinstance(header, dict) or header.get("format") != FORMAT:  # what the file is, before what it holds
        raise ValueError(f"not a {FORMAT} file")
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"format version {header.get('version')!r}, this version reads {FORMAT_VERSION}")
    if not isinstance(rows, list):
        raise ValueError("its rows must be a list")
    return header, rows


META_PER_SPACE = ("spaces", "validation", "residual_cv")  # table metadata kept per search space


def _checked_meta(meta) -> dict:
    """An export's table metadata, or ValueError naming what is wrong (what predictions and ``table list`` read)."""
    if not isinstance(meta, dict):
        raise ValueError("the table's meta must be an object")
    for name in META_PER_SPACE:
        entries = meta.get(name, {})
        if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
            raise ValueError(f"the table's meta.{name} must be an object of one object per space")
    if not all(isinstance(v.get("pays"), bool) for v in meta.get("residual_cv", {}).values()):
        raise ValueError("each of the table's meta.residual_cv entries needs 'pays' (true or false)")
    return meta


def _checked_row(row: dict) -> tuple:
    """(kind, key, space, spec, latency_ms, result) of one exported row, or ValueError naming what is wrong."""
    kind, result = row["record"], row["result"]
    name = f"{kind} row {row.get('key')!r}"
    if not isinstance(result, dict):
        raise ValueError(f"{name}: its result must be an object")
    if kind == "layer":
        LayerSpec.from_dict(row["spec"])  # refuse rows that are not layers
        if row["status"] not in ("ok", "failed"):
            raise ValueError(f"{name}: status must be ok or failed, got {row['status']!r}")
        if row["status"] == "ok":
            _agreeing_latency(name, row.get("latency_ms"), result)
        return kind, str(row["key"]), "", row["spec"], None, {**result, "status": row["status"]}
    if kind in ("calibration", "validation"):
        latency_ms = _agreeing_latency(name, row["latency_ms"], result)
        return kind, resolve_arch(row["key"]), str(row["space"]), {}, latency_ms, result
    raise ValueError(f"unknown record kind {kind!r}")


def _agreeing_latency(name: str, column, result: dict) -> float:
    """A row's latency: positive, and the same in its ``latency_ms`` column and its result (an edit of one of them
    alone would be silently ignored or used by half of the readers)."""
    latency_ms = positive_number(f"{name}: latency_ms", column if column is not None else result.get("latency_ms"))
    stored = result.get("latency_ms", latency_ms)
    if not isinstance(stored, (int, float)) or not math.isclose(stored, latency_ms, rel_tol=1e-9):
        raise ValueError(f"{name}: latency_ms {latency_ms!r} differs from its result's {stored!r} (edit both)")
    return latency_ms


def _rescaled(result: dict, scale: float) -> dict:
    """A timing moved to another drift-anchor scale (every millisecond figure times ``scale``), marked as such."""
    if scale == 1.0:
        return result
    out = {k: v * scale if k in MS_FIELDS and isinstance(v, (int, float)) else v for k, v in result.items()}
    if isinstance(out.get("samples_ms"), list):
        out["samples_ms"] = [v * scale for v in out["samples_ms"]]
    out["extra"] = {**(out.get("extra") or {}), "anchor_rescaled": scale}
    return out
