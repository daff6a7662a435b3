"""Latency benchmark, side by side in one run (prints ratios; not a timed test).

1. Conversion seconds per child: plain default onnx2tf (fresh process per child, as a user would run it) versus our
   fast path in a warm worker (cold = first child including imports, warm = later children). Goal: >= 3x warm.
2. Repeat-measurement noise of the host runner: coefficient of variation of the median over REPEATS for 3 archs.
3. Decoded mnasnet_b1 versus torchvision's mnasnet1_0 converted the same way: latency ratio (goal within 10%).
4. With ``--predictor``: the host layer table of the default space (built if missing; resumable, so a cache that
   holds it makes this instant) and the predictor's error on ``--validate`` held-out random architectures measured
   for real (``python -m latency table validate``). Goals: >= 99% within +-10%, >= 90% within +-5%, Kendall tau
   >= 0.95, table built in <= 20 minutes.

Usage: .venv/bin/python scripts/bench_latency.py [--resolution 224] [--repeats 5] [--runs 30]
       .venv/bin/python scripts/bench_latency.py --predictor [--validate 200] [--cache DIR/latency.sqlite] [--only-predictor]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILDREN = ["mobilenet_v2", "mnasnet_a1", "mnasnet_b1"]

DEFAULT_CONVERT = """
import sys, time, os
from pathlib import Path
start = time.perf_counter()
import onnx2tf
onnx2tf.convert(input_onnx_file_path=sys.argv[1], output_folder_path=sys.argv[2], non_verbose=True)
print(time.perf_counter() - start)
"""


def default_onnx2tf_seconds(onnx_path: Path, work: Path) -> float:
    """Plain onnx2tf.convert() with default options in a fresh process (imports included, as a CLI user pays)."""
    from latency.calibration import write_calibration_file

    write_calibration_file(work)
    out = subprocess.run([sys.executable, "-c", DEFAULT_CONVERT, str(onnx_path), str(work / "out")], cwd=work,
                         capture_output=True, text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--predictor", action="store_true", help="also build/validate the host layer table")
    parser.add_argument("--only-predictor", action="store_true", help="only the predictor part")
    parser.add_argument("--validate", type=int, default=200, help="held-out architectures measured for real")
    parser.add_argument("--cache", default=None, help="latency cache holding (or to hold) the table")
    args = parser.parse_args()
    if args.predictor or args.only_predictor:
        predictor_figures(args)
        if args.only_predictor:
            return
    from tqdm import tqdm

    from latency import build_service
    from latency.convert import build_eval_model, export_onnx, onnx_to_tflite
    from latency.runners import HostRunner
    from search_spaces import resolve_arch

    tmp = Path(tempfile.mkdtemp(prefix="bench_latency_"))
    r = args.resolution
    print(f"resolution {r}, host runner 1 thread, {args.runs} runs; temp {tmp}")

    # 1. conversion speed
    default_s = {}
    for name in tqdm(CHILDREN, desc="default onnx2tf"):
        work = tmp / f"default_{name}"
        work.mkdir()
        onnx = export_onnx(build_eval_model(resolve_arch(name), 3, 1000), work / "model.onnx", r, 3)
        default_s[name] = default_onnx2tf_seconds(onnx, work)
    service = build_service("host", warmup_runs=5, num_runs=args.runs, workers=1, cache_path=tmp / "c" / "l.sqlite")
    fast_s, wall_s = {}, {}
    for name in tqdm(CHILDREN, desc="fast path, warm worker"):
        start = time.perf_counter()
        res = service.measure(name, resolution=r)
        wall_s[name] = time.perf_counter() - start
        fast_s[name] = res.convert_seconds
        assert res.ok, res.error
    print("\n== conversion seconds per child (default onnx2tf in a fresh process vs fast path in a warm worker)")
    print(f"{'child':<14}{'default':>9}{'fast':>8}{'ratio':>8}   (fast wall incl. check+timing)")
    for i, name in enumerate(CHILDREN):
        tag = "cold (worker start)" if i == 0 else "warm"
        print(f"{name:<14}{default_s[name]:>9.1f}{fast_s[name]:>8.1f}{default_s[name] / fast_s[name]:>7.1f}x"
              f"   {wall_s[name]:.1f}s {tag}")
    warm = CHILDREN[1:]
    ratio = statistics.mean(default_s[n] for n in warm) / statistics.mean(fast_s[n] for n in warm)
    print(f"warm speed-up: {ratio:.1f}x (goal >= 3x): {'PASS' if ratio >= 3 else 'FAIL'}")

    # 2. repeat noise of the host runner on the converted models
    runner = HostRunner(threads=1, warmup_runs=5, num_runs=args.runs)
    paths = {n: service.measure(n, resolution=r).tflite_path for n in CHILDREN}
    print(f"\n== host repeat noise: median over {args.repeats} repeats")
    for name in CHILDREN:
        medians = [runner.time(paths[name])["latency_ms"] for _ in tqdm(range(args.repeats), desc=name, leave=False)]
        cv = statistics.pstdev(medians) / statistics.mean(medians)
        print(f"{name:<14} mean of medians {statistics.mean(medians):7.2f} ms   CV {100 * cv:5.2f}%")

    # 3. decoded mnasnet_b1 vs torchvision mnasnet1_0, converted the same way
    import torchvision
    from latency.calibration import write_calibration_file

    write_calibration_file(tmp)
    os.chdir(tmp)
    tv = torchvision.models.mnasnet1_0(weights=None).eval()
    (tmp / "tv").mkdir()
    tv_onnx = export_onnx(tv, tmp / "tv" / "model.onnx", r, 3)
    tv_tflite = onnx_to_tflite(tv_onnx, tmp / "tv", fast=True)
    ours, theirs = [], []
    for _ in tqdm(range(args.repeats), desc="b1 vs torchvision"):  # interleaved so drift hits both alike
        ours.append(runner.time(paths["mnasnet_b1"])["latency_ms"])
        theirs.append(runner.time(tv_tflite)["latency_ms"])
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"\n== mnasnet_b1 (ours) {statistics.median(ours):.2f} ms vs torchvision mnasnet1_0 "
          f"{statistics.median(theirs):.2f} ms: ratio {ratio:.3f} (goal within 10%): "
          f"{'PASS' if abs(ratio - 1) <= 0.10 else 'FAIL'}")
    service.close()


def predictor_figures(args) -> None:
    """Section 4: the same code as ``python -m latency table build`` and ``table validate``."""
    from latency import build_service
    from latency.predictor import validate
    from latency.table import build_table

    with build_service("host", workers=2, cache_path=args.cache) as service:
        summary = build_table(service, space_name="mnasnet", resolution=args.resolution)
        figures = validate(service, n=args.validate, space="mnasnet", resolution=args.resolution)
    print(f"\n== predictor, host runner, default space, {args.resolution} px, 1,000 classes")
    print(f"table {summary['table_key']}: {summary['layers']} layers, {summary['calibration']} calibration models, "
          f"built in {summary['build_seconds_total'] / 60:.1f} min (layers {summary['layer_seconds'] / 60:.1f} min "
          f"in this run; goal <= 20)")
    checks = [("within +-10%", figures["within_10"], 0.99), ("within +-5%", figures["within_5"], 0.90),
              ("Kendall tau", figures["kendall_tau"], 0.95)]
    for name, value, goal in checks:
        print(f"{name:<14}{value:>8.3f}  (goal >= {goal}): {'PASS' if value >= goal else 'FAIL'}")
    print(f"RMSE {figures['rmse_ms']:.3f} ms ({100 * figures['rmse_rel']:.2f}%), max error {100 * figures['max_rel']:.2f}%, "
          f"over {figures['n']} held-out architectures")


if __name__ == "__main__":
    main()
