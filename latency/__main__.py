"""``python -m latency measure ARCH`` and ``python -m latency devices``."""

from __future__ import annotations

import argparse
import json
import sys

from latency.runners import AdbRunner, DeviceError, HostRunner


def _measure(args: argparse.Namespace) -> int:
    from latency.service import LatencyService

    fields = {"threads": args.threads, "warmup_runs": args.warmup, "num_runs": args.runs}
    if args.runner == "adb":
        fields.update(serial=args.serial, benchmark_binary=args.binary, cpu_mask=args.cpu_mask)
    with LatencyService(args.runner, workers=1, cache_path=args.cache, **fields) as service:
        result = service.measure(args.arch, resolution=args.resolution, channels=args.channels,
                                 num_classes=args.classes)
    data = result.to_dict()
    if args.json:
        print(json.dumps(data))
    else:
        print(f"arch:        {result.arch}")
        print(f"device:      {result.device} ({result.runner})")
        print(f"input:       {args.channels}x{args.resolution}x{args.resolution}, {args.classes} classes")
        if result.ok:
            print(f"latency:     {result.latency_ms:.3f} ms median, {result.mean_ms:.3f} mean, {result.std_ms:.3f} std, "
                  f"{result.min_ms:.3f} min" + (f", {result.p95_ms:.3f} p95" if result.p95_ms is not None else "")
                  + f" over {result.runs} runs")
        print(f"conversion:  max abs error {result.max_abs_err}, max rel error {result.max_rel_err}")
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
    if args.json:
        print(json.dumps({"devices": rows, "adb": adb_note}))
    else:
        for r in rows:
            print(f"{r['runner']:<5} {r['serial'] or '-':<20} {r['state']:<12} {r.get('model') or ''}")
        if len(rows) == 1:
            print("no Android device attached" + (f" ({adb_note})" if adb_note else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latency", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="convert ARCH to TFLite and time it")
    m.add_argument("arch", help="reference name or architecture string")
    m.add_argument("--runner", choices=("host", "adb"), default="host")
    m.add_argument("--serial", default=None, help="adb device serial (default: the only attached device)")
    m.add_argument("--binary", default=None, help="local path of benchmark_model (adb runner)")
    m.add_argument("--cpu-mask", default=None, help="taskset mask on the phone, e.g. f0")
    m.add_argument("--resolution", type=int, default=224)
    m.add_argument("--channels", type=int, default=3)
    m.add_argument("--classes", type=int, default=1000)
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--warmup", type=int, default=10)
    m.add_argument("--runs", type=int, default=50)
    m.add_argument("--cache", default=None, help="SQLite cache path (default ~/.cache/mnasnet-search/latency)")
    m.add_argument("--json", action="store_true")
    d = sub.add_parser("devices", help="list attached phones and the host")
    d.add_argument("--adb", default="adb")
    d.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        return _measure(args) if args.command == "measure" else _devices(args)
    except (ValueError, DeviceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
