"""A device double for ``adb``: tests put a wrapper named ``adb`` first on PATH that runs this file.

It behaves like adb for the commands the AdbRunner uses (devices -l, -s SERIAL, push, shell getprop/chmod/rm/cmd,
wait-for-device) against a fake ``/data/local/tmp`` under $FAKE_ADB_ROOT, and runs ``benchmark_model`` by really
timing the pushed model with LiteRT on the host, printing benchmark_model's own output format (new builds, with an
``INFO: `` prefix and ``p5= median= p95=``). Environment:
  FAKE_ADB_ROOT     directory standing in for the phone's storage (required)
  FAKE_ADB_SERIALS  comma-separated attached serials ("" = no devices); default "FAKE0001"
  FAKE_ADB_DROPS    how many benchmark_model runs fail first with "device offline" (a dropping device, which comes
                    back rebooted: without fixed performance mode)
  FAKE_ADB_LOG      file that receives one line per adb invocation (argv as JSON)
  FAKE_ADB_SERIALS_FILE  file with the attached serials, comma-separated, read at every call (overrides
                    FAKE_ADB_SERIALS): a test unplugs a phone mid-search by rewriting it
  FAKE_ADB_TIMES    file that receives one JSON line per benchmark_model run: serial, graph, start and end times,
                    status, and whether the phone was in fixed performance mode (``fixed_performance``)
  FAKE_ADB_DELAY_S  seconds each benchmark_model run takes at least (a slow phone)
  FAKE_ADB_WAIT_BLOCKS  set: ``wait-for-device`` blocks until the serial is attached, as adb does (else it returns)
  FAKE_ADB_SDK      the phone's Android API level (default 30); below 30 it has no fixed performance mode
  The phone's fixed performance mode is the file ``fixed-performance-<serial>`` under FAKE_ADB_ROOT (``cmd power
  set-fixed-performance-mode-enabled true|false`` writes it); a test reboots the phone by removing it. ``shell``
  runs ``A && B`` as a shell does.
  FAKE_ADB_HANG     text: a call whose arguments (after ``-s SERIAL``) contain it never answers, as a hung adb
                    server or phone (``devices``, ``getprop``, ``push``), until the file FAKE_ADB_UNHANG exists
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("FAKE_ADB_ROOT", "/nonexistent-fake-adb-root"))
SERIALS_FILE = os.environ.get("FAKE_ADB_SERIALS_FILE")


def _attached() -> list[str]:
    return [s for s in (Path(SERIALS_FILE).read_text().strip() if SERIALS_FILE and Path(SERIALS_FILE).exists()
                        else os.environ.get("FAKE_ADB_SERIALS", "FAKE0001")).split(",") if s]


SERIALS = _attached()


def install(bin_dir: Path) -> Path:
    """Write an executable ``adb`` into ``bin_dir`` that runs this double (tests put ``bin_dir`` first on PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "adb"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def attach(tmp_path: Path, monkeypatch) -> dict:
    """One fake Pixel 2 (serial FAKE0001) for a test: the double first on PATH, a fake benchmark_model binary, the
    phone's storage and the call log under ``tmp_path``. Returns ``{"binary", "log"}``."""
    bin_dir = install(tmp_path / "bin").parent
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake android_aarch64 benchmark_model\n")
    (tmp_path / "device").mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_ROOT", str(tmp_path / "device"))
    monkeypatch.setenv("FAKE_ADB_SERIALS", "FAKE0001")
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    return {"binary": str(binary), "log": tmp_path / "adb.log"}


def local(remote: str) -> Path:
    if not remote.startswith("/data/local/tmp/"):
        raise SystemExit(f"adb: error: remote path outside /data/local/tmp: {remote}")
    return ROOT / remote.lstrip("/")


def fail(message: str, code: int = 1) -> int:
    print(message, file=sys.stderr)
    return code


def benchmark(args: list[str], serial: str | None = None) -> int:
    started = time.time()
    code = _benchmark(args, serial)
    time.sleep(max(0.0, float(os.environ.get("FAKE_ADB_DELAY_S", "0")) - (time.time() - started)))
    if times := os.environ.get("FAKE_ADB_TIMES"):
        graph = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a).get("graph")
        with open(times, "a") as f:
            f.write(json.dumps({"serial": serial, "graph": graph, "start": started, "end": time.time(),
                                "status": code, "fixed_performance": _fixed_performance(serial).exists()}) + "\n")
    return code


def _fixed_performance(serial: str | None) -> Path:
    """The file whose presence is the phone's fixed performance mode."""
    return ROOT / f"fixed-performance-{serial or SERIALS[0]}"


def _dropped() -> bool:
    """Whether this run is one of the FAKE_ADB_DROPS that fail first. Two phones of one test share the storage and
    time at once: the count is read and written under a lock (unlocked, one run could read the file the other had
    just truncated, and crash)."""
    import fcntl

    with open(ROOT / "drops.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        drops = ROOT / "drops"
        remaining = int(drops.read_text()) if drops.exists() else int(os.environ.get("FAKE_ADB_DROPS", "0"))
        drops.write_text(str(max(remaining - 1, 0)))
        return remaining > 0


def _benchmark(args: list[str], serial: str | None) -> int:
    flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    graph = local(flags["graph"])
    if not graph.is_file():
        return fail(f"ERROR: Could not open '{flags['graph']}'.")
    if _dropped():
        _fixed_performance(serial).unlink(missing_ok=True)  # it comes back rebooted
        return fail("error: device offline")
    from ai_edge_litert.interpreter import Interpreter
    import numpy as np

    start = time.perf_counter()
    interpreter = Interpreter(model_path=str(graph), num_threads=int(flags.get("num_threads", "1")))
    interpreter.allocate_tensors()
    init_us = (time.perf_counter() - start) * 1e6
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.random.default_rng(0).random(detail["shape"], dtype=np.float32))

    def run(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            interpreter.invoke()
            out.append((time.perf_counter() - t) * 1e6)
        return out

    def line(s: list[float]) -> str:
        q = statistics.quantiles(s, n=20) if len(s) > 1 else [s[0]] * 19
        return (f"INFO: count={len(s)} first={s[0]:.0f} curr={s[-1]:.0f} min={min(s):.0f} max={max(s):.0f} "
                f"avg={statistics.fmean(s):g} std={statistics.pstdev(s):.0f} p5={q[0]:.0f} "
                f"median={statistics.median(s):.0f} p95={q[18]:.0f}")

    first = run(1)
    warm = run(max(1, int(flags.get("warmup_runs", "1"))))
    timed = run(int(flags.get("num_runs", "50")))
    print("INFO: STARTING!")
    print(f"INFO: Graph: [{flags['graph']}]")
    print(f"INFO: #threads used for CPU inference: [{flags.get('num_threads', '-1')}]")
    print("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
    print("INFO: The input model file size (MB): %.4f" % (graph.stat().st_size / 1e6))
    print(line(warm))
    print(line(timed))
    print(f"INFO: Inference timings in us: Init: {init_us:.0f}, First inference: {first[0]:.0f}, "
          f"Warmup (avg): {statistics.fmean(warm):g}, Inference (avg): {statistics.fmean(timed):g}")
    return 0


def shell(command: str, serial: str | None = None) -> int:
    argv = shlex.split(command)
    if "&&" in argv:  # A && B: B runs when A succeeded
        cut = argv.index("&&")
        first = shell(shlex.join(argv[:cut]), serial)
        return first if first else shell(shlex.join(argv[cut + 1:]), serial)
    if argv[:2] == ["getprop", "ro.product.model"]:
        print("Pixel 2")
        return 0
    if argv[0] == "chmod":
        os.chmod(local(argv[2]), int(argv[1], 8))
        return 0
    if argv[:2] == ["rm", "-f"]:
        for p in argv[2:]:
            local(p).unlink(missing_ok=True)
        return 0
    if argv[0] == "cmd":
        if argv[1:3] == ["power", "set-fixed-performance-mode-enabled"]:
            if int(os.environ.get("FAKE_ADB_SDK", 30)) < 30:
                print("Unknown command: set-fixed-performance-mode-enabled")  # Android 10 and older (its shell says)
                return 255
            if argv[3] == "true":
                _fixed_performance(serial).touch()
            else:
                _fixed_performance(serial).unlink(missing_ok=True)
        return 0
    if argv[0] == "taskset":
        if not all(c in "0123456789abcdefABCDEF" for c in argv[1]):
            return fail(f"taskset: bad mask {argv[1]}")
        argv = argv[2:]
    binary = local(argv[0])
    if not binary.is_file():
        return fail(f"/system/bin/sh: {argv[0]}: not found", 127)
    if not os.access(binary, os.X_OK):
        return fail(f"/system/bin/sh: {argv[0]}: can't execute: Permission denied", 126)
    return benchmark(argv[1:], serial)


def main(args: list[str]) -> int:
    if log := os.environ.get("FAKE_ADB_LOG"):
        with open(log, "a") as f:
            f.write(json.dumps(args) + "\n")
    serial = None
    if args[:1] == ["-s"]:
        serial, args = args[1], args[2:]
    if (hang := os.environ.get("FAKE_ADB_HANG")) and hang in " ".join(args):
        unhang = Path(os.environ.get("FAKE_ADB_UNHANG") or os.devnull + ".never")
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline and not unhang.exists():  # until the caller's timeout kills it (or a test
            time.sleep(0.1)                                             # whose caller was killed ends it)
        return 1
    if args[:1] == ["devices"]:
        print("List of devices attached")
        for s in SERIALS:
            print(f"{s}\tdevice product:walleye model:Pixel_2 device:walleye transport_id:1" if "-l" in args
                  else f"{s}\tdevice")
        print()
        return 0
    if args[:1] == ["kill-server"] or args[:1] == ["start-server"]:
        return 0
    if args[:1] == ["wait-for-device"]:
        while os.environ.get("FAKE_ADB_WAIT_BLOCKS") and (serial or "") not in _attached():
            time.sleep(0.1)  # as adb does: until the phone is back
        return 0
    if not SERIALS:
        return fail("adb: no devices/emulators found")
    if serial is None and len(SERIALS) > 1:
        return fail("adb: more than one device/emulator")
    if serial is not None and serial not in SERIALS:
        return fail(f"adb: device '{serial}' not found")
    if args[:1] == ["push"]:
        target = local(args[2])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args[1], target)
        print(f"{args[1]}: 1 file pushed, 0 skipped.")
        return 0
    if args[:1] == ["shell"]:
        return shell(" ".join(args[1:]), serial)
    return fail(f"adb: unknown command {' '.join(args)}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
