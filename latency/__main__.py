"""``python -m latency measure|predict|devices|table|cache ...``: measure, predict, list devices, build and share
tables, keep the cache in bounds.

  measure ARCH                 convert ARCH to TFLite and time it on the host or a phone
  predict ARCH                 latency from the device's layer table and calibration, with its stated error
  devices                      the host and every attached phone
  table build                  time every layer of a search space on a device (resumable), then calibrate
  table validate --n N         measure N fresh random architectures for real; store and print the predictor's error
  table list                   the tables in the cache
  table export --format F --out FILE / table import FILE   share a table (CSV or JSON)
  cache info                   what the latency cache holds and how much room its converted models take
  cache prune --max-gb G       remove the least recently used converted models beyond G GB (timings stay)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from latency.runners import AdbRunner, DeviceError, HostRunner
from latency.table import CALIBRATION_DEFAULT
from mnas_common.errors import OneLineParser


def _runner_fields(args: argparse.Namespace) -> dict:
    from latency.service import DEFAULT_ANCHOR

    fields = {"threads": args.threads, "warmup_runs": args.warmup, "num_runs": args.runs}
    fields["anchor"] = args.anchor if args.anchor is not None else (DEFAULT_ANCHOR if args.runner == "host" else None)
    host_only = [flag for flag, given in (("--rounds", args.rounds is not None), ("--pin-cpu", args.pin_cpu),
                                          ("--no-quiet", args.no_quiet)) if given]
    # typed flags only (None when not given): $ANDROID_SERIAL and $TFLITE_BENCHMARK_MODEL set for the phone do not
    # make a host measurement an error, but --cpu-mask f0 or --serial S on the host were dropped without a word
    adb_only = [flag for flag, given in (("--serial", args.serial is not None), ("--binary", args.binary is not None),
                                         ("--cpu-mask", args.cpu_mask is not None), ("--no-xnnpack", args.no_xnnpack),
                                         ("--fixed-performance", args.fixed_performance),
                                         ("--cooldown", args.cooldown is not None))
                if given]
    if args.runner == "host":
        fields.update(rounds=3 if args.rounds is None else args.rounds, pin_cpu=args.pin_cpu, quiet=not args.no_quiet)
        if adb_only:
            raise ValueError(f"{', '.join(adb_only)}: settings of the adb runner, not of --runner host"
                             + (" (the host interpreter always uses XNNPACK)" if args.no_xnnpack else ""))
    elif host_only:
        raise ValueError(f"{', '.join(host_only)}: settings of the host runner, not of --runner {args.runner}")
    else:
        serial = os.environ.get("ANDROID_SERIAL") if args.serial is None else args.serial
        binary = os.environ.get("TFLITE_BENCHMARK_MODEL") if args.binary is None else args.binary
        fields.update(serial=serial, benchmark_binary=binary, cpu_mask=args.cpu_mask, use_xnnpack=not args.no_xnnpack,
                      fixed_performance=args.fixed_performance,
                      cooldown_s=0.0 if args.cooldown is None else args.cooldown)
    return fields


def _service(args: argparse.Namespace, workers: int = 1):
    from latency.service import LatencyService

    return LatencyService(args.runner, workers=workers, cache_path=args.cache, **_runner_fields(args))


def _input(args: argparse.Namespace) -> dict:
    return {"resolution": args.resolution, "channels": args.channels, "num_classes": args.classes}


def _measure(args: argparse.Namespace) -> int:
    with _service(args) as service:
        result = service.measure(args.arch, **_input(args))
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0 if result.ok else 1
    print(f"arch:        {result.arch}")
    print(f"device:      {result.device or 'none'} ({result.runner})")
    print(f"input:       {args.channels}x{args.resolution}x{args.resolution}, {args.classes} classes")
    if result.ok:
        print(f"latency:     {result.latency_ms:.3f} ms median, {result.mean_ms:.3f} mean, {result.std_ms:.3f} std, "
              f"{result.min_ms:.3f} min" + (f", {result.p95_ms:.3f} p95" if result.p95_ms is not None else "")
              + f" over {result.runs} runs")
        timing = result.extra.get("timing") or {}
        if timing:
            print(f"timed:       {timing.get('mode')}" + (f", waited {timing['waited_s']:.2f} s for the search's work"
                                                          if timing.get("waited_s") else ""))
            if anchor := timing.get("anchor"):
                print(f"drift:       anchor {anchor['arch']} (reference {anchor['ref_ms']:.3f} ms), round factors "
                      + ", ".join(f"{f:.3f}" for f in anchor["factors"]))
    if result.max_abs_err is not None:  # a child that failed before its conversion was checked has none
        print(f"conversion:  max abs error {result.max_abs_err}, max rel error {result.max_rel_err}")
    if result.tflite_path:
        print(f"tflite:      {result.tflite_path}" + ("  (cached)" if result.cached else ""))
    if not result.ok:
        print(f"status:      failed: {result.error}")
    return 0 if result.ok else 1


def _devices(args: argparse.Namespace) -> int:
    host = HostRunner()
    rows = [{"runner": "host", "serial": None, "state": "ready", "model": host.device_id}]
    try:
        for d in AdbRunner(adb=args.adb).devices():
            rows.append({"runner": "adb", **d})
        adb_note = None
    except DeviceError as exc:
        adb_note = str(exc)
    if args.ray_resources:  # for `ray start --resources=...` on the node the phones hang on (evaluator=ray)
        print(json.dumps({f"phone_{r['serial']}": 1 for r in rows if r["runner"] == "adb" and r["state"] == "device"}))
    elif args.json:
        print(json.dumps({"devices": rows, "adb": adb_note}))
    else:
        for r in rows:
            print(f"{r['runner']:<5} {r['serial'] or '-':<20} {r['state']:<12} {r.get('model') or ''}")
        if len(rows) == 1:
            print("no Android device attached" + (f" ({adb_note})" if adb_note else ""))
    return 0


def _read_only_cache(args: argparse.Namespace) -> dict:
    """The runner's fields (its flags checked first, as without this check), once a command that only reads a table
    has refused a ``--cache`` that does not exist (a typo) rather than create an empty cache there and name a build
    command for it."""
    fields = _runner_fields(args)
    if args.cache and not Path(args.cache).is_file():
        raise ValueError(f"no latency cache at {args.cache} (--cache)")
    return fields


def _predict(args: argparse.Namespace) -> int:
    from latency.predictor import load_predictor

    predictor = load_predictor({"runner": args.runner, **_read_only_cache(args)}, **_input(args), space=args.space,
                               cache_path=args.cache, device=args.device, table=args.table)
    result = predictor.predict(args.arch)
    if args.json:
        print(json.dumps(result.to_dict()))
    elif result.ok:
        err = result.extra["stated_error"]
        print(f"arch:        {result.arch}")
        print(f"device:      {result.device} (table {predictor.table_key})")
        print(f"latency:     {result.latency_ms:.3f} ms predicted (layer sum {result.extra['layer_sum_ms']:.3f} ms)")
        print(f"error:       {predictor.describe_error()}" if err.get("n") else
              "error:       not validated yet (run python -m latency table validate)")
    else:
        print(f"status:      failed: {result.error}")
    return 0 if result.ok else 1


def _table_build(args: argparse.Namespace) -> int:
    from latency.table import build_table

    with _service(args, workers=args.workers) as service:
        summary = build_table(service, space_name=args.space, **_input(args), archs=args.arch,
                              calibration=args.calibration, batch=args.batch, progress=not args.json)
    failed = summary.pop("failed")
    summary["failed"] = len(failed)
    if args.json:
        print(json.dumps({**summary, "failures": failed[:20]}))
    else:
        print(f"table {summary['table_key']} for {summary['device']}: {summary['layers']} layers "
              f"({summary['timed_now']} timed now), {summary['calibration']} calibration models, "
              f"{summary['seconds'] / 60:.1f} min now, {summary['build_seconds_total'] / 60:.1f} min in all")
        for f in failed[:5]:
            print(f"failed: {f['layer']}: {f['error']}")
    return 1 if failed else 0


def _table_validate(args: argparse.Namespace) -> int:
    from latency.predictor import validate

    with _service(args, workers=args.workers) as service:
        figures = validate(service, n=args.n, space=args.space, **_input(args), progress=not args.json)
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{figures['n']} held-out architectures of space {args.space!r} measured for real on {figures['device']}:")
        print(f"  within +-5%: {100 * figures['within_5']:.1f}%   within +-10%: {100 * figures['within_10']:.1f}%")
        print(f"  RMSE {figures['rmse_ms']:.3f} ms ({100 * figures['rmse_rel']:.2f}%), max error "
              f"{100 * figures['max_rel']:.2f}%, Kendall tau {figures['kendall_tau']:.4f}")
        print(f"  predictor: {figures['model']}, {figures['calibration_n']} calibration models")
    return 0


def _table_list(args: argparse.Namespace) -> int:
    path = _cache_file(args)
    tables = []
    if path.is_file():  # listing creates nothing: a mistyped --cache left an empty cache (and its folders) behind
        cache = _open_cache(args)
        tables = cache.tables()
        cache.close()
    if args.json:
        print(json.dumps(tables))
        return 0
    for t in tables:
        spaces = ", ".join(f"{name}: {s.get('build_seconds', 0) / 60:.1f} min" for name, s in t["meta"].get("spaces", {}).items())
        models = ", ".join(f"{k} {v}" for k, v in sorted(t["models"].items()))
        print(f"{t['table_key']}  {t['device']}  {t['channels']}x{t['resolution']}x{t['resolution']} "
              f"{t['num_classes']} classes  {t['layers']} layers  {models or 'no models'}  {spaces}")
        for name, v in sorted(t["meta"].get("validation", {}).items()):  # the error every prediction states
            print(f"  {name}: held-out error over {v.get('n')} models: {v.get('within_5', 0):.1%} within +-5%, "
                  f"{v.get('within_10', 0):.1%} within +-10%, Kendall tau {v.get('kendall_tau', 0):.3f}")
    if not tables:
        print("no latency tables (python -m latency table build)")
    return 0


def _table_export(args: argparse.Namespace) -> int:
    from latency.predictor import find_table
    from latency.table import export_table

    _read_only_cache(args)
    with _service(args) as service:
        key = find_table(service, **_input(args), device=args.device, table=args.table, space=None,
                         check_input=False)["table_key"]
        summary = export_table(service.cache, key, args.out, args.format)
    print(json.dumps(summary) if args.json else f"wrote {summary['rows']} rows of table {key} to {summary['out']}")
    return 0


def _table_import(args: argparse.Namespace) -> int:
    from latency.table import import_table, read_export

    export = read_export(args.file)  # before the cache is opened: a refused file creates no cache where none was
    cache = _open_cache(args, must_exist=False)  # importing into a new cache creates it
    try:
        summary = import_table(cache, export)
    finally:
        cache.close()
    print(json.dumps(summary) if args.json else
          f"imported table {summary['table_key']} for {summary['device']}: {summary['layer']} layers, "
          f"{summary['calibration']} calibration and {summary['validation']} validation models"
          + (f"; timings scaled by {summary['anchor_scale']:.4f} to this cache's drift-anchor reference"
             if summary["anchor_scale"] != 1.0 else ""))
    return 0


def _cache_file(args: argparse.Namespace) -> Path:
    from latency.service import default_cache_dir

    return Path(args.cache) if args.cache else default_cache_dir() / "latency.sqlite"


def _open_cache(args: argparse.Namespace, *, must_exist: bool = True):
    """The cache ``--cache`` names (default: the shared one); ``must_exist``: refuse to create one where none is."""
    from latency.cache import LatencyCache

    path = _cache_file(args)
    if must_exist and not path.is_file():
        raise ValueError(f"no latency cache at {path} (--cache)")
    return LatencyCache(path)


def _cache_info(args: argparse.Namespace) -> int:
    cache = _open_cache(args)
    try:
        usage = cache.models_usage()
        info = {"cache": str(cache.path), "conversions": cache.conversion_counts(),
                "measurements": cache.count("measurements"), "tables": cache.count("latency_tables"),
                "models": usage["models"], "models_gb": usage["bytes"] / 1e9}
    finally:
        cache.close()
    if args.json:
        print(json.dumps(info))
        return 0
    c = info["conversions"]
    print(f"cache:         {info['cache']}")
    print(f"conversions:   {c['ok']} ok, {c['evicted']} evicted by the size cap, {c['failed']} failed")
    print(f"measurements:  {info['measurements']}")
    print(f"tables:        {info['tables']}")
    print(f"models:        {info['models']} converted models, {info['models_gb']:.2f} GB "
          "(latency.cache_max_gb caps it; python -m latency cache prune --max-gb G)")
    return 0


def _cache_prune(args: argparse.Namespace) -> int:
    from mnas_common.checks import non_negative_number

    non_negative_number("--max-gb", args.max_gb)
    non_negative_number("--keep-recent-min", args.keep_recent_min)
    from latency.cache import cap_bytes
    from latency.service import ANCHOR_INPUT

    cache = _open_cache(args)
    try:
        # the drift anchors' conversions stay, as the automatic trim keeps them (every host timing times one)
        anchors = {a["arch"] for a in cache.anchors()}
        protect = {key for key, arch, *shape in cache.conversion_rows()
                   if arch in anchors and dict(zip(("resolution", "channels", "num_classes"), shape)) == ANCHOR_INPUT}
        out = cache.trim_models(cap_bytes(args.max_gb), keep_recent_s=60 * args.keep_recent_min, protect=protect)
    finally:
        cache.close()
    if out is None:
        raise ValueError(f"another process is trimming {cache.path} now; try again in a moment")
    if args.json:
        print(json.dumps(out))
    else:
        print(f"removed {out['removed']} converted models ({out['freed_bytes'] / 1e9:.2f} GB); {out['kept_models']} "
              f"kept ({out['kept_bytes'] / 1e9:.2f} GB); timings stay cached")
    return 0


def _parsers() -> argparse.ArgumentParser:
    runner = argparse.ArgumentParser(add_help=False)
    runner.add_argument("--runner", choices=("host", "adb"), default="host")
    runner.add_argument("--serial", default=None,
                        help="adb device serial (default: $ANDROID_SERIAL, else the only attached device)")
    runner.add_argument("--binary", default=None,
                        help="local path of benchmark_model (adb runner; default: $TFLITE_BENCHMARK_MODEL)")
    runner.add_argument("--cpu-mask", default=None, help="taskset mask on the phone, e.g. f0")
    runner.add_argument("--threads", type=int, default=1)
    runner.add_argument("--warmup", type=int, default=10)
    runner.add_argument("--runs", type=int, default=50)
    runner.add_argument("--rounds", type=int, default=None, help="host: rounds the timed runs are taken in (3)")
    runner.add_argument("--pin-cpu", action="store_true", help="host: pin the timing thread to one core")
    runner.add_argument("--no-quiet", action="store_true",
                        help="host: time without the quiet gate (as latency.quiet=false)")
    runner.add_argument("--no-xnnpack", action="store_true", help="adb: benchmark_model without XNNPACK")
    runner.add_argument("--fixed-performance", action="store_true",
                        help="adb: time in the phone's fixed performance mode (Android 11+; off again at the end)")
    runner.add_argument("--cooldown", type=float, default=None, help="adb: seconds to pause before each model (0)")
    runner.add_argument("--anchor", default=None,
                        help="host: the drift anchor timed in every round (default mnasnet_b1, as configs/latency/"
                             "host.yaml; 'none' for no drift correction)")
    # the cache alone (table list/import, cache info/prune): they time nothing, so they take no runner flags
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--cache", default=None, help="the cache: its SQLite file or the directory holding "
                       "latency.sqlite (default ~/.cache/mnasnet-search/latency)")
    where.add_argument("--json", action="store_true")
    runner.add_argument("--cache", default=None, help="the cache: its SQLite file or the directory holding "
                        "latency.sqlite, created if new (default ~/.cache/mnasnet-search/latency)")
    runner.add_argument("--json", action="store_true")
    shape = argparse.ArgumentParser(add_help=False)
    shape.add_argument("--resolution", type=int, default=224)
    shape.add_argument("--channels", type=int, default=3)
    shape.add_argument("--classes", type=int, default=1000)
    space = argparse.ArgumentParser(add_help=False)
    space.add_argument("--space", default="mnasnet", help="configs/search_space/<space>.yaml (default mnasnet)")
    pick = argparse.ArgumentParser(add_help=False)
    pick.add_argument("--device", default=None, help="use the table of this device model (e.g. 'adb:Pixel 2') "
                                                      "instead of asking the attached one")
    pick.add_argument("--table", default=None, help="table key (or a unique prefix) from 'table list'")

    parser = OneLineParser(prog="python -m latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", parents=[runner, shape], help="convert ARCH to TFLite and time it")
    m.add_argument("arch", help="reference name or architecture string")
    p = sub.add_parser("predict", parents=[runner, shape, space, pick], help="predict ARCH's latency from a table")
    p.add_argument("arch", help="reference name or architecture string")
    d = sub.add_parser("devices", help="list attached phones and the host")
    d.add_argument("--ray-resources", action="store_true",
                   help='print the ready phones as Ray custom resources: ray start --resources="$(... --ray-resources)"')
    d.add_argument("--adb", default="adb")
    d.add_argument("--json", action="store_true")
    t = sub.add_parser("table", help="per-device layer latency tables")
    tsub = t.add_subparsers(dest="table_command", required=True)
    b = tsub.add_parser("build", parents=[runner, shape, space], help="time every layer of the space (resumable)")
    b.add_argument("--calibration", type=int, default=CALIBRATION_DEFAULT,
                   help=f"whole random models measured to calibrate ({CALIBRATION_DEFAULT})")
    b.add_argument("--arch", action="append", default=None,
                   help="also add this network's layers (repeatable; default: the reference architectures)")
    b.add_argument("--workers", type=int, default=2, help="conversion worker processes (2)")
    b.add_argument("--batch", type=int, default=24, help="layers timed per quiet window (24)")
    v = tsub.add_parser("validate", parents=[runner, shape, space], help="measure N held-out architectures")
    v.add_argument("--n", type=int, default=200)
    v.add_argument("--workers", type=int, default=2)
    tsub.add_parser("list", parents=[where], help="tables in the cache")
    # a table is exported whole, with the calibration of every space it holds: no --space (it was accepted, unused)
    e = tsub.add_parser("export", parents=[runner, shape, pick], help="write a table as CSV or JSON")
    e.add_argument("--format", choices=("csv", "json"), required=True)
    e.add_argument("--out", required=True)
    i = tsub.add_parser("import", parents=[where], help="read a table written by 'table export'")
    i.add_argument("file")
    c = sub.add_parser("cache", help="what the latency cache holds; trim its converted models")
    csub = c.add_subparsers(dest="cache_command", required=True)
    csub.add_parser("info", parents=[where], help="conversions, timings, tables and the converted models' size")
    pr = csub.add_parser("prune", parents=[where], help="remove the least recently used converted models")
    pr.add_argument("--max-gb", type=float, required=True, help="keep at most this many GB of converted models")
    pr.add_argument("--keep-recent-min", type=float, default=10.0,
                    help="never remove a model used in the last N minutes (a search may be timing it; 10)")
    return parser


TABLE_COMMANDS = {"build": _table_build, "validate": _table_validate, "list": _table_list, "export": _table_export,
                  "import": _table_import}
CACHE_COMMANDS = {"info": _cache_info, "prune": _cache_prune}


def main(argv: list[str] | None = None) -> int:
    args = _parsers().parse_args(argv)
    from latency.cache import LatencyCacheError
    from latency.service import LockBusy
    from mnas_common.checks import non_negative_int, positive_int
    from mnas_common.errors import first_line

    # ~ expanded here, once, for every subcommand and before the file/directory decision: a quoted --cache='~/x'
    # (or --cache=~/x, which the shell leaves alone) was the home directory's cache to measure and predict but a
    # folder named ~ in the working directory to table list/import and cache info/prune
    cache = Path(args.cache).expanduser() if getattr(args, "cache", None) else None
    if cache is not None:  # the cache's directory (a new one too) names its file
        directory = cache.is_dir() or not cache.exists() and not cache.suffix
        args.cache = str(cache / "latency.sqlite" if directory else cache)
    for name in ("out", "file"):  # table export --out=~/t.csv and a quoted table import '~/t.csv' alike
        if getattr(args, name, None):
            setattr(args, name, str(Path(getattr(args, name)).expanduser()))
    try:
        for name in ("n", "workers", "batch", "resolution", "channels", "classes"):
            # the input too: table build --channels 0 built a whole table of 0-channel layers, --resolution 0 failed
            # every layer one by one, predict and validate named a build command for a 0x0 input
            if getattr(args, name, None) is not None:
                positive_int(f"--{name}", getattr(args, name))
        if getattr(args, "calibration", None) is not None:
            non_negative_int("--calibration", args.calibration)
        if args.command == "table":
            return TABLE_COMMANDS[args.table_command](args)
        if args.command == "cache":
            return CACHE_COMMANDS[args.cache_command](args)
        return {"measure": _measure, "predict": _predict, "devices": _devices}[args.command](args)
    # OSError: an unwritable path; RuntimeError: the service's own failures (a latency worker that died twice or gave
    # no answer, a drift anchor that did not convert; DeviceError is one), reached by table build and validate too
    except (ValueError, RuntimeError, LatencyCacheError, LockBusy, OSError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was timed is committed; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
