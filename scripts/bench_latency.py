"""Latency benchmark, side by side in one run (prints ratios; not a timed test).

1. Conversion seconds per child: plain default onnx2tf (fresh process per child, as a user would run it) versus our
   fast path in a warm worker (cold = first child including imports, warm = later children). Goal: >= 3x warm.
2. Repeat-measurement noise of the host runner: coefficient of variation of the median over REPEATS for 3 archs.
3. Decoded mnasnet_b1 versus torchvision's mnasnet1_0 converted the same way: latency ratio (goal within 10%).
4. With ``--predictor``: the host layer table of the default space (built if missing; resumable, so a cache that
   holds it makes this instant) and the predictor's error on ``--validate`` held-out random architectures measured
   for real (``python -m latency table validate``). Goals: >= 99% within +-10%, >= 90% within +-5%, Kendall tau
   >= 0.95, table built in <= 20 minutes.

5. With ``--figures``: the predictor's validation figures as stored with the table in ``--cache`` (nothing timed).
6. With ``--modes``: quickstart-style searches (``+experiment=quickstart``, ``--budget`` children, batch
   ``--batch``) with ``latency.mode`` measure, predict and hybrid: children per hour of each, the in-search latency
   of the three references against a quiet measurement of each alone afterwards (ratio; goal within 5%), and the
   fronts' agreement on the measure run's own children (share of its accuracy-latency front that the front by
   predicted latency, and by the hybrid rule replayed child by child, recover). ``--cache`` must hold the host
   table at the deploy input (checked before the first search); each search gets its own copy of it, without its
   cached conversions and timings, so every search converts and times for real.
7. With ``--run DIR``: a finished host-latency search (``make search`` leaves ``runs/quickstart/seed0``): each
   reference's in-search latency against the median of ``--alone`` timings of it alone afterwards, each in a fresh
   cache on the run cache's drift-anchor reference (ratio; goal within 5%), and every measured child's timing spread
   (std of its timed runs over its latency; goal below 5% for every child). Use a run whose latency cache was fresh
   (``latency.cache_path=...``): a reference answered from an older cache was not timed in the search. The run's
   cache must still be there (with its drift-anchor reference where the run used one); it is never created.
8. With ``--anchor``: the drift anchor's schemes side by side. ``--anchor-models`` random networks of the default
   space (224x224x3, 1,000 classes) are timed as a table build times its calibration and validation models (sessions
   of 8, three rounds a second apart) with no correction, with the anchor timed at each round's two ends (the
   scheme before) and around every network (``latency.service._time_round``, the scheme in use), each three
   times, the schemes interleaved; for each: how much a network's latency moved between repeats (mean, share within
   5% and 2%). Needs an otherwise idle machine (it takes no gate).
9. With ``--retime N``: how well the held-out truth repeats. The first N validation models stored with the table in
   ``--cache`` are converted and timed again now, as ``table validate`` timed them (sessions of 8, same settings, on
   the cache's drift-anchor reference, in a fresh copy of the cache): how far each moved from its stored latency
   (mean, share within 5% and 2%, bias, RMS), the predictor's error against the stored timings, the new ones and
   their mean (a truth with half the repeat noise's variance, if the two sittings' errors are independent), and the
   share of the new timings whose runs' std is under 5% of their median (the quiet floor of the spread goal).
10. With ``--residual``: whether the predictor's learned residual pays, from the models stored with the table in
   ``--cache`` (nothing timed): the ridge alone against the ridge with the residual in 3 x 10-fold cross-validation on
   the calibration models, and on random training subsets of 60 to 250 of the pooled calibration and validation
   models, each tested on 100 others (12 draws per size).
11. With ``--floor N``: the quiet floor of the children's spread goal on this machine. ``--floor-arch`` (mnasnet_a1) is
   timed alone in N sessions of 50 runs (a child's runs), one thread pinned to one core as the service times, 0.3 s
   apart, nothing else of the search running: the share of sessions whose runs' std is under 5% of their median, and
   of the slow runs (more than 1.3x their session's median) how many used as much more of the thread's own CPU time
   as of wall time (within 10%: the virtual CPU ran slower; the thread was not descheduled or held) and how many saw a
   garbage collection. Needs an otherwise idle machine (it takes no gate).

Usage: .venv/bin/python scripts/bench_latency.py [--resolution 224] [--repeats 5] [--runs 30]
       .venv/bin/python scripts/bench_latency.py --predictor [--validate 200] [--cache DIR/latency.sqlite] [--only-predictor]
       .venv/bin/python scripts/bench_latency.py --figures --modes --cache DIR/latency.sqlite [--budget 16 --batch 4]
           --only-modes [--json]      (--json: one JSON line of every figure at the end)
       .venv/bin/python scripts/bench_latency.py --run runs/quickstart/seed0 [--alone 3] [--json]
       .venv/bin/python scripts/bench_latency.py --anchor [--anchor-models 16] [--json]
       .venv/bin/python scripts/bench_latency.py --retime 48 --cache DIR/latency.sqlite [--json]
       .venv/bin/python scripts/bench_latency.py --residual --cache DIR/latency.sqlite [--json]
       .venv/bin/python scripts/bench_latency.py --floor 60 [--floor-arch mnasnet_a1] [--json]
       (any section: --keep-temp keeps its temporary folder, removed at exit otherwise)
"""

from __future__ import annotations

import atexit
import os
import shutil
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


def _scratch(prefix: str, keep: bool) -> Path:
    """A temporary folder for one section's conversions, caches and runs, removed when the script exits (a retime or
    modes copy holds gigabytes of converted models) unless ``keep`` (``--keep-temp``)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if keep:
        print(f"keeping {path} (--keep-temp)")
    else:
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def main() -> None:
    from mnas_common.errors import OneLineParser  # bad command lines: one error line, exit 2

    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--predictor", action="store_true", help="also build/validate the host layer table")
    parser.add_argument("--only-predictor", action="store_true", help="only the predictor part")
    parser.add_argument("--validate", type=int, default=200, help="held-out architectures measured for real")
    parser.add_argument("--cache", default=None, help="latency cache holding (or to hold) the table")
    parser.add_argument("--figures", action="store_true", help="the stored validation figures of the table")
    parser.add_argument("--modes", action="store_true", help="quickstart searches in measure/predict/hybrid mode")
    parser.add_argument("--only-modes", action="store_true", help="only --figures and --modes")
    parser.add_argument("--budget", type=int, default=16, help="children per --modes search")
    parser.add_argument("--batch", type=int, default=4, help="children per controller step in --modes")
    parser.add_argument("--top-k", type=int, default=5, help="latency.hybrid_top_k of the hybrid search")
    parser.add_argument("--run", default=None, metavar="DIR",
                        help="only: a finished search's references against alone timings, and its children's spread")
    parser.add_argument("--alone", type=int, default=3, help="alone timings per reference for --run (median)")
    parser.add_argument("--anchor", action="store_true", help="only: repeat noise under the drift-anchor schemes")
    parser.add_argument("--anchor-models", type=int, default=16, help="random networks for --anchor (sessions of 8)")
    parser.add_argument("--retime", type=int, default=0, metavar="N",
                        help="only: time the table's first N validation models again and compare (needs --cache)")
    parser.add_argument("--residual", action="store_true",
                        help="only: the predictor's residual against the ridge alone, by cross-validation (needs --cache)")
    parser.add_argument("--floor", type=int, default=0, metavar="N",
                        help="only: N sessions of 50 runs of --floor-arch alone: the spread goal's floor here")
    parser.add_argument("--floor-arch", default="mnasnet_a1", help="the network --floor times")
    parser.add_argument("--keep-temp", action="store_true",
                        help="keep each section's temporary folder (conversions, caches, runs) instead of removing it")
    parser.add_argument("--json", action="store_true", help="print one JSON line of all figures at the end")
    args = parser.parse_args()
    check_args(parser, args)
    from latency.predictor import LatencyTableMissing

    out: dict = {}
    try:
        run_sections(args, out)
    except LatencyTableMissing as exc:  # one line naming the build command, not a traceback
        raise SystemExit(f"error: {exc}") from None
    if args.json:  # only when the sections ran: a failure is its error line, not an empty or partial record
        import json

        print(json.dumps(out))


def check_args(parser, args) -> None:
    """Bad numbers end here, in one ``error:`` line (exit 2), not in a traceback after minutes of conversions. Any
    resolution from 1 px converts and passes the PyTorch check (mnasnet_a1 at 1, 8, 16 and 32 px: max abs error
    under 1e-6), as the latency service accepts it."""
    parser.require_positive(args, "resolution", "repeats", "runs", "alone", "validate", "budget", "batch", "top_k")


def run_sections(args, out: dict) -> None:
    """The sections the flags ask for, each adding its figures to ``out`` under its flag's name."""
    alone = {"retime": retime_validation, "run": run_figures, "anchor": anchor_schemes, "residual": residual_figures,
             "floor": spread_floor}  # each runs by itself, the first given
    for flag, section in alone.items():
        if getattr(args, flag):
            out[flag] = section(args)
            return
    if args.figures:
        out["validation"] = stored_figures(args)
    if args.modes:
        out["modes"] = mode_searches(args)
    if args.only_modes:
        return
    if args.predictor or args.only_predictor:
        out["predictor"] = predictor_figures(args)
        if args.only_predictor:
            return
    out["conversion"] = bench_conversion(args)


def bench_conversion(args) -> dict:
    """Sections 1-3: conversion seconds per child, the host runner's repeat noise, decoded mnasnet_b1 against
    torchvision's mnasnet1_0; prints them and returns the same figures (``--json``)."""
    from tqdm import tqdm

    from latency import build_service
    from latency.convert import build_eval_model, export_onnx, onnx_to_tflite
    from latency.runners import HostRunner
    from search_spaces import resolve_arch

    tmp = _scratch("bench_latency_", args.keep_temp)
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
    speedup = statistics.mean(default_s[n] for n in warm) / statistics.mean(fast_s[n] for n in warm)
    print(f"warm speed-up: {speedup:.1f}x (goal >= 3x): {'PASS' if speedup >= 3 else 'FAIL'}")

    # 2. repeat noise of the host runner on the converted models
    runner = HostRunner(threads=1, warmup_runs=5, num_runs=args.runs)
    paths = {n: service.measure(n, resolution=r).tflite_path for n in CHILDREN}
    print(f"\n== host repeat noise: median over {args.repeats} repeats")
    repeat_ms, cv = {}, {}
    for name in CHILDREN:
        medians = [runner.time(paths[name])["latency_ms"] for _ in tqdm(range(args.repeats), desc=name, leave=False)]
        repeat_ms[name] = statistics.mean(medians)
        cv[name] = statistics.pstdev(medians) / repeat_ms[name]
        print(f"{name:<14} mean of medians {repeat_ms[name]:7.2f} ms   CV {100 * cv[name]:5.2f}%")

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
    return {"resolution": r, "runs": args.runs, "repeats": args.repeats, "default_seconds": default_s,
            "fast_seconds": fast_s, "fast_wall_seconds": wall_s, "warm_speedup": speedup,
            "repeat_mean_ms": repeat_ms, "repeat_cv": cv, "b1_ms": statistics.median(ours),
            "torchvision_mnasnet1_0_ms": statistics.median(theirs), "b1_torchvision_ratio": ratio}


def predictor_figures(args) -> dict:
    """Section 4: the same code as ``python -m latency table build`` and ``table validate``."""
    from latency import build_service
    from latency.predictor import validate
    from latency.service import DEFAULT_ANCHOR
    from latency.table import build_table

    with build_service("host", workers=2, cache_path=args.cache, anchor=DEFAULT_ANCHOR) as service:
        summary = build_table(service, space_name="mnasnet", resolution=args.resolution)
        if summary["failed"]:  # as `table build` does: figures from a table with holes would mislead
            first = summary["failed"][0]
            raise SystemExit(f"error: {len(summary['failed'])} layer(s) of table {summary['table_key']} failed "
                             f"(first: {first['layer']}: {first['error']}); run the same command again to retry them")
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
    return {"layers": summary["layers"], "calibration": summary["calibration"],
            "build_minutes": round(summary["build_seconds_total"] / 60, 2), **figures}  # figures name the table


def stored_figures(args) -> dict:
    """Section 5: what ``table validate`` stored, as every prediction states it (recomputed from the stored rows), and
    beside it the same held-out set predicted by the ridge alone, without the learned residual."""
    from latency.predictor import load_predictor

    _table_cache(args, "--figures")
    from latency.service import DEFAULT_ANCHOR

    host = {"runner": "host", "rounds": 3, "anchor": DEFAULT_ANCHOR}
    predictor = load_predictor(host, resolution=args.resolution, cache_path=args.cache)
    e = predictor.stated_error
    print(f"\n== predictor validation stored with table {predictor.table_key} ({predictor.device}, {args.resolution} px)")
    if not e.get("n"):
        print("no validation models stored (python -m latency table validate --n 200)")
        return dict(e)
    ridge = load_predictor(host, resolution=args.resolution, cache_path=args.cache, residual=False).stated_error
    print(f"{'':<14}{predictor.model_name:>17}{'ridge alone':>14}")
    for name, key, goal in (("within +-10%", "within_10", 0.99), ("within +-5%", "within_5", 0.90),
                            ("Kendall tau", "kendall_tau", 0.95)):
        print(f"{name:<14}{e[key]:>17.3f}{ridge[key]:>14.3f}  (goal >= {goal}): {'PASS' if e[key] >= goal else 'FAIL'}")
    print(f"{'RMSE':<14}{100 * e['rmse_rel']:>16.2f}%{100 * ridge['rmse_rel']:>13.2f}%")
    print(f"RMSE {e['rmse_ms']:.3f} ms ({100 * e['rmse_rel']:.2f}%), max error {100 * e['max_rel']:.2f}%, bias "
          f"{100 * e['bias_rel']:+.2f}%, over {e['n']} held-out architectures ({e['calibration_n']} calibration models)")
    cv = e.get("residual_cv")
    if cv:
        print(f"residual decided by {cv['folds']}-fold cross-validation on the calibration models: relative RMSE "
              f"{100 * cv['residual_rmse_rel']:.2f}% with it, {100 * cv['ridge_rmse_rel']:.2f}% without "
              f"({'kept' if cv['pays'] else 'not kept'})")
    return {**e, "ridge_alone": {k: ridge[k] for k in ("within_5", "within_10", "kendall_tau", "rmse_rel",
                                                       "max_rel", "bias_rel")}}


def _table_cache(args, flag: str) -> str:
    """``--cache``, which ``flag`` needs and which must exist (a section never creates a cache where none was)."""
    if not args.cache:
        raise SystemExit(f"error: {flag} needs --cache, the latency cache holding the table")
    if not Path(args.cache).is_file():
        raise SystemExit(f"error: --cache {args.cache}: no such file")
    return args.cache


def residual_figures(args) -> dict:
    """Section 10: the ridge alone against the ridge with the learned residual, cross-validated on the stored models."""
    import numpy as np

    from latency.cache import LatencyCache
    from latency.predictor import load_predictor
    from latency.service import DEFAULT_ANCHOR

    cache_path = _table_cache(args, "--residual")
    predictor = load_predictor({"runner": "host", "rounds": 3, "anchor": DEFAULT_ANCHOR}, resolution=args.resolution,
                               cache_path=cache_path, residual=False)
    cache = LatencyCache(cache_path)
    sets = [predictor.dataset(cache.models(predictor.table_key, purpose, predictor.space))
            for purpose in ("calibration", "validation")]
    cache.close()
    if len(sets[0][2]) < 20:
        raise SystemExit(f"error: --residual needs 20 or more calibration models; table {predictor.table_key} has "
                         f"{len(sets[0][2])} (python -m latency table build --calibration N)")
    print(f"\n== learned residual against the ridge alone, table {predictor.table_key} ({len(sets[0][2])} calibration, "
          f"{len(sets[1][2])} validation models); within +-5% / +-10% / Kendall tau / relative RMSE")
    return residual_comparison(*sets, show=True)


def residual_comparison(calibration: tuple, validation: tuple, *, draws: int = 12,
                        sizes: tuple[int, ...] = (60, 100, 150, 250), show: bool = False) -> dict:
    """The ridge alone and the ridge with :class:`latency.predictor.Residual` on the same data: 3 x 10-fold on the
    calibration models (``cv_calibration``), trained on them and tested on the validation models (``held_out``), and
    trained on random subsets of ``sizes`` models of both sets pooled, tested on 100 others (``subsets``). Each set
    is ``(feature rows, arch shapes, latencies)``."""
    import numpy as np

    from latency.predictor import error_figures, kfold, ridge_and_residual

    def arrays(d):
        return list(d[0]), np.asarray(d[1], dtype=float).reshape(len(d[2]), -1), np.asarray(d[2], dtype=float)

    def subset(d, idx):
        return [d[0][i] for i in idx], d[1][idx], d[2][idx]

    def predict(train, test) -> dict:
        return dict(zip(("ridge", "residual"), ridge_and_residual(train, test)))

    def mean(figs: list[dict]) -> dict:
        keys = ("within_5", "within_10", "kendall_tau", "rmse_rel")
        return {name: {k: float(np.mean([f[name][k] for f in figs])) for k in keys} for name in ("ridge", "residual")}

    def line(label: str, figs: dict) -> None:
        if show:
            print(f"{label:<34}" + "   ".join(f"{name}: {100 * f['within_5']:5.1f}% / {100 * f['within_10']:5.1f}% / "
                                              f"tau {f['kendall_tau']:.3f} / RMSE {100 * f['rmse_rel']:.2f}%"
                                              for name, f in figs.items()))

    cal, val = arrays(calibration), arrays(validation)
    n = len(cal[2])
    folds = []
    for repeat in range(3):
        pred = {"ridge": np.zeros(n), "residual": np.zeros(n)}
        for fold in kfold(n, 10, seed=repeat):
            train = np.setdiff1d(np.arange(n), fold)
            for name, values in predict(subset(cal, train), subset(cal, fold)).items():
                pred[name][fold] = values
        folds.append({name: error_figures(p, cal[2]) for name, p in pred.items()})
    out: dict = {"cv_calibration": mean(folds)}
    line("3 x 10-fold, calibration models", out["cv_calibration"])
    if len(val[2]):
        out["held_out"] = {name: error_figures(p, val[2]) for name, p in predict(cal, val).items()}
        line(f"held out ({len(val[2])} validation models)", out["held_out"])
    pooled = (cal[0] + val[0], np.r_[cal[1], val[1]] if len(val[2]) else cal[1], np.r_[cal[2], val[2]])
    out["subsets"] = {}
    for size in sizes:
        if size + 100 > len(pooled[2]):
            continue
        figs = []
        for draw in range(draws):
            idx = np.random.default_rng(100 + draw).permutation(len(pooled[2]))
            test = subset(pooled, idx[size:size + 100])
            figs.append({name: error_figures(p, test[2]) for name, p in predict(subset(pooled, idx[:size]), test).items()})
        out["subsets"][str(size)] = mean(figs)
        line(f"{size} trained, 100 tested, {draws} draws", out["subsets"][str(size)])
    return out


def _fresh_copy(cache: str, tmp: Path) -> Path:
    """The table cache without its cached conversions and timings: searches on it convert and time for real (its
    drift-anchor reference stays, so they time on the table's scale)."""
    import sqlite3

    copy = tmp / "cache" / "latency.sqlite"
    copy.parent.mkdir(parents=True)
    src = sqlite3.connect(cache)
    dst = sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    dst.execute("DELETE FROM measurements")
    dst.execute("DELETE FROM conversions")
    dst.commit()
    dst.close()
    shutil.rmtree(copy.parent / "models", ignore_errors=True)
    return copy


def _front(points: list[tuple[float, float, str]]) -> set[str]:
    """Archs on the accuracy-latency front of ``(top1, latency, arch)`` points."""
    from nas.front import front_mask

    if not points:
        return set()
    mask = front_mask([p[0] for p in points], [p[1] for p in points])
    return {p[2] for p, keep in zip(points, mask) if keep}


def _share_anchors(source: Path, target: Path) -> int:
    """Copy the drift-anchor references of cache ``source`` into cache ``target`` (kept where it has its own);
    ``source`` must exist (opening a missing one would create it empty: no anchor, another scale)."""
    from latency.cache import LatencyCache

    if not Path(source).is_file():
        raise SystemExit(f"error: latency cache {source}: no such file (its drift-anchor reference is needed)")
    src, into = LatencyCache(source), LatencyCache(target)
    rows = src.anchors()
    for row in rows:
        into.put_anchor(row["key"], row["arch"], row["device"], row["settings"], row["result"])
    src.close()
    into.close()
    return len(rows)


def mode_searches(args) -> dict:
    """Section 6: the same quickstart search in the three latency modes, then the references timed alone."""
    from hydra import compose, initialize_config_dir

    from latency.predictor import load_predictor
    from mnas_common.config import to_plain
    from mnas_common.errors import first_line
    from mnas_common.paths import config_dir
    from nas.evaluator import LatencyModes
    from nas.front import ParetoFront
    from nas.run import run_search
    from nas.store import RunStore
    from rewards import MnasNetReward

    _table_cache(args, "--modes")
    tmp = _scratch("bench_modes_", args.keep_temp)
    modes = ("measure", "predict", "hybrid")
    # one copy per search, each made from the table cache before any search: a shared copy let the later searches
    # (same seed, same first batch) find the measure run's conversions and timings, inflating their speed
    caches = {mode: _fresh_copy(args.cache, tmp / "caches" / mode) for mode in modes}

    def config(mode: str):
        overrides = ["+experiment=quickstart", f"budget={args.budget}", f"batch_size={args.batch}",
                     f"latency.mode={mode}", f"latency.hybrid_top_k={args.top_k}",
                     f"latency.cache_path={caches[mode]}", "logger=[]", "pareto.enabled=false",
                     f"deploy.resolution={args.resolution}"]
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            return overrides, compose("search", overrides=overrides)

    # the table the predict and hybrid searches need, loaded as they load it, before the measure search (minutes)
    # rather than found missing after it (LatencyTableMissing: main's one line naming the build command)
    _, cfg = config("predict")
    latency_modes, _ = LatencyModes.split(to_plain(cfg.latency))
    deploy = to_plain(cfg.deploy)
    predictor = load_predictor(_service_config(to_plain(cfg.latency)), resolution=deploy["resolution"],
                               channels=deploy["channels"], num_classes=deploy["num_classes"],
                               cache_path=caches["measure"], space=latency_modes.table_space,
                               table=latency_modes.table)
    results: dict = {}
    runs: dict = {}
    for mode in modes:
        overrides, cfg = config(mode)
        start = time.perf_counter()
        try:
            run_search(cfg, tmp / mode, overrides=overrides)
        except ValueError as exc:  # a ConfigError (its problems joined) or a bad value: one line, not a traceback
            raise SystemExit(f"error: --modes, the {mode} search: {first_line(exc)}") from None
        seconds = time.perf_counter() - start
        with RunStore(tmp / mode, readonly=True) as store:
            children = store.children(committed_only=True)
            references = store.references()
        evaluated = len({c.arch for c in children}) + len(references)
        measured = sum(str(c.latency_source) == "measured" for c in children if not c.reused)
        errors = [abs(c.latency_prediction_error) for c in children if c.latency_prediction_error is not None]
        runs[mode] = {"children": children, "references": references, "target": cfg.target_ms,
                      "latency": _service_config(to_plain(cfg.latency))}
        results[mode] = {"seconds": seconds, "evaluations": evaluated, "per_hour": 3600 * evaluated / seconds,
                         "measured": measured, "live_abs_error_mean": sum(errors) / len(errors) if errors else None}
        print(f"{mode:<8} {evaluated} evaluations ({args.budget} children, {len(references)} references) in "
              f"{seconds:.0f} s: {results[mode]['per_hour']:.0f} per hour; {measured} children measured for real")

    # fronts' agreement, on the measure run's own children (the same accuracies, three sources of latency)
    base = [c for c in runs["measure"]["children"] if c.measured and not c.reused]
    host = runs["measure"]["latency"]
    predicted = {c.arch: predictor.predict(c.arch).latency_ms for c in base}
    truth = _front([(c.top1, c.latency_ms, c.arch) for c in base])
    by_prediction = _front([(c.top1, predicted[c.arch], c.arch) for c in base])
    reward = MnasNetReward(target_ms=runs["measure"]["target"])
    front, rewards, hybrid_points = ParetoFront(), [], []
    for c in base:  # the hybrid rule, child by child in the order the measure run placed them
        p = predicted[c.arch]
        r_pred = reward(accuracy=c.top1, latency_ms=p)
        measure = not front.dominated(c.top1, p) or sum(r > r_pred for r in rewards) < args.top_k
        lat = c.latency_ms if measure else p
        hybrid_points.append((c.top1, lat, c.arch))
        front.add(c.top1, lat)
        rewards.append(reward(accuracy=c.top1, latency_ms=lat))
    by_hybrid = _front(hybrid_points)
    agreement = {"front_size": len(truth),
                 "predict_recovered": len(truth & by_prediction) / len(truth) if truth else None,
                 "hybrid_recovered": len(truth & by_hybrid) / len(truth) if truth else None,
                 "predict_front_size": len(by_prediction), "hybrid_front_size": len(by_hybrid)}
    if truth:
        print(f"front of the measure run's {len(base)} children: {len(truth)} points; recovered by predicted latency "
              f"{100 * agreement['predict_recovered']:.0f}% ({len(by_prediction)} points), by the hybrid rule "
              f"{100 * agreement['hybrid_recovered']:.0f}% ({len(by_hybrid)} points)")
    else:
        print("the measure run measured no child: no front to compare")

    # the references: in-search (measure run) against each timed alone afterwards, in a cache of its own (so nothing
    # cached answers) on the search's scale (its drift-anchor reference; a fresh one would differ by a few percent)
    alone = references_alone(runs["measure"]["references"], host, caches["measure"], tmp / "quiet", repeats=1,
                             deploy={"resolution": args.resolution})
    return {**results, "agreement": agreement, **alone, "budget": args.budget, "batch": args.batch,
            "resolution": args.resolution}


def _service_config(latency: dict) -> dict:
    """A search's ``latency`` config as ``build_service`` keywords for a service of our own: without the search-mode
    keys (``LatencyModes.split``), the Hydra target and the cache path (the caller chooses the cache)."""
    from nas.evaluator import LatencyModes

    _, service = LatencyModes.split(latency)
    return {k: v for k, v in service.items() if k not in ("_target_", "cache_path")}


def references_alone(references: dict, host: dict, cache: Path, tmp: Path, *, repeats: int, deploy: dict) -> dict:
    """Each reference's in-search latency against the median of ``repeats`` timings of it alone, each in a cache of
    its own (so nothing cached answers) on the search cache's scale (its drift-anchor reference; a fresh one would
    differ by a few percent); prints one line per reference."""
    from latency import build_service

    quiet: dict[str, list[float]] = {name: [] for name in references}
    for i in range(repeats):
        quiet_cache = tmp / f"alone{i}" / "latency.sqlite"
        _share_anchors(cache, quiet_cache)
        with build_service(**{**host, "workers": 1}, cache_path=quiet_cache) as service:
            for name, ref in sorted(references.items()):
                quiet[name].append(service.measure(ref["arch"], **deploy).latency_ms)
    ratios, medians = {}, {name: statistics.median(v) for name, v in quiet.items()}
    print(f"reference      in-search ms   alone ms{' (median)' if repeats > 1 else ''}   ratio (goal within 5%)")
    for name, ref in sorted(references.items()):
        ratios[name] = ref["latency_ms"] / medians[name]
        spread = f" [{min(quiet[name]):.2f}-{max(quiet[name]):.2f}]" if repeats > 1 else ""
        print(f"{name:<14}{ref['latency_ms']:>12.2f}{medians[name]:>11.2f}{spread}{ratios[name]:>8.3f}  "
              f"{'PASS' if abs(ratios[name] - 1) <= 0.05 else 'FAIL'}")
    return {"reference_ratio": ratios, "reference_in_search_ms": {n: r["latency_ms"] for n, r in references.items()},
            "reference_alone_ms": medians, "reference_alone_runs_ms": quiet}


def run_figures(args) -> dict:
    """Section 7: a finished search's references against alone timings, and every measured child's timing spread."""
    from latency.service import default_cache_dir
    from nas.store import RunStore

    run = Path(args.run)
    if not (run / "run.sqlite").exists():
        raise SystemExit(f"error: --run {run}: no run store (run.sqlite) there")
    with RunStore(run, readonly=True) as store:
        config = store.get_meta("config") or {}
        children = store.children(committed_only=True)
        references = store.references()
    host = _service_config(config.get("latency") or {})
    if host.get("runner") != "host":
        raise SystemExit(f"error: --run {run}: its latency runner is {host.get('runner')!r}, not host")
    cache = Path((config.get("latency") or {}).get("cache_path") or default_cache_dir() / "latency.sqlite")
    if references:  # timed alone on the run cache's drift-anchor scale: that cache must be there, never made here
        _check_run_cache(run, cache, host)
    deploy = config.get("deploy") or {}
    measured = [c for c in children if c.measured and not c.reused and str(c.latency_source) != "predicted"
                and c.latency_std_ms is not None]
    spreads = sorted(c.latency_std_ms / c.latency_ms for c in measured)
    out: dict = {"run": str(run), "children_measured": len(measured)}
    if spreads:
        below = sum(s < 0.05 for s in spreads)
        out.update(spread_median=statistics.median(spreads), spread_max=spreads[-1], spread_below_5pct=below)
        print(f"{len(measured)} children timed in the search: timing spread (std / latency) median "
              f"{100 * out['spread_median']:.1f}%, {below} of {len(spreads)} ({100 * below / len(spreads):.0f}%) "
              f"below 5%, the largest {100 * spreads[-1]:.1f}%")
    cached = sorted(n for n, r in references.items() if r.get("cached"))
    if cached:
        print(f"warning: {', '.join(cached)} came from the latency cache, not timed in this search")
    if references:
        tmp = _scratch("bench_run_", args.keep_temp)
        out.update(references_alone(references, host, cache, tmp, repeats=args.alone, deploy=deploy))
    return out


def _check_run_cache(run: Path, cache: Path, host: dict) -> None:
    """Refuse (one line) a ``--run`` whose latency cache is missing, or holds no drift-anchor reference though the
    run timed with an anchor: its references timed alone would be on another scale than in the search."""
    from latency.cache import LatencyCache, LatencyCacheError
    from latency.service import checked_anchor
    from mnas_common.errors import first_line

    if not cache.is_file():
        raise SystemExit(f"error: --run {run}: its latency cache {cache} does not exist (moved or removed?); the "
                         "references are timed alone on that cache's drift-anchor scale")
    try:
        anchor = checked_anchor(host.get("anchor"), "host")
    except ValueError:
        anchor = None
    if anchor:
        try:
            stored = LatencyCache(cache)
        except LatencyCacheError as exc:
            raise SystemExit(f"error: --run {run}: {first_line(exc)}") from None
        try:
            held = stored.anchors()
        finally:
            stored.close()
        if not held:
            raise SystemExit(f"error: --run {run}: its latency cache {cache} holds no drift-anchor reference, though "
                             f"the run timed with anchor {anchor}: not the cache the search timed in")


def anchor_schemes(args) -> dict:
    """Section 8: the same networks timed under three drift corrections, interleaved, each three times."""
    import itertools

    import numpy as np
    from tqdm import tqdm

    from latency import build_service
    from latency.quiet import ROUND_GAP_S
    from latency.runners import summarize_rounds
    from latency.service import ANCHOR_AGREE, ANCHOR_INPUT, DEFAULT_ANCHOR, _anchor_ms, _time_round
    from search_spaces.space import SearchSpace

    if args.anchor_models < 2:
        raise SystemExit("error: --anchor-models must be at least 2")
    tmp = _scratch("bench_anchor_", args.keep_temp)
    archs = SearchSpace.default().sample(args.anchor_models, seed=2026)
    with build_service("host", workers=1, cache_path=tmp / "latency.sqlite") as service:
        runner = service.runner
        paths = [service.convert(a, **ANCHOR_INPUT)["tflite_path"] for a in tqdm(archs, desc="convert")]
        anchor_path = service.convert(DEFAULT_ANCHOR, **ANCHOR_INPUT)["tflite_path"]
    interpreters = {p: runner.prepare(p) for p in paths}
    anchor = runner.prepare(anchor_path)
    ref_ms = _anchor_ms(runner, anchor, warmup=runner.warmup_runs)  # the scale only: every scheme shares it

    retimed: dict[str, list] = {}

    def session(group: list[str], scheme: str) -> dict[str, dict]:
        rounds: dict[str, list[list[float]]] = {p: [] for p in group}
        for attempt in range(runner.effective_rounds):
            if attempt:
                time.sleep(ROUND_GAP_S)
            # "ends", the scheme before: the anchor only around the whole round, timed without it in between
            before = _anchor_ms(runner, anchor, warmup=runner.round_warmup(attempt == 0)) if scheme == "ends" else None
            timed, errors = _time_round(runner, {p: interpreters[p] for p in group},
                                        anchor if scheme in ("around", "agree") else None, ref_ms, attempt,
                                        agree=ANCHOR_AGREE if scheme == "agree" else None,
                                        retimed=retimed.setdefault(scheme, []))
            if errors:
                raise SystemExit(f"error: timing failed: {next(iter(errors.values()))}")
            factor = ref_ms / ((before + _anchor_ms(runner, anchor, warmup=0)) / 2) if scheme == "ends" else 1.0
            for p in group:
                rounds[p].append([x * factor for x in timed[p][0]])
        return {p: summarize_rounds(r, [False] * len(r), anchored=scheme != "none") for p, r in rounds.items()}

    schemes = ["none", "ends", "around", "agree"]
    repeats: dict[str, list[dict[str, float]]] = {s: [] for s in schemes}
    groups = [paths[i:i + 8] for i in range(0, len(paths), 8)]
    for rep in tqdm(range(3), desc="repeats"):
        for scheme in schemes if rep % 2 == 0 else schemes[::-1]:
            repeats[scheme].append({p: v for g in groups for p, v in session(g, scheme).items()})
    out = {}
    print(f"\n== drift anchor ({DEFAULT_ANCHOR}): {len(paths)} networks timed 3 times in sessions of 8, by scheme")
    print("   (agree: as around, and a network whose two anchor times differ by more than "
          f"{100 * ANCHOR_AGREE:.0f}% is timed again; std < 5%: the share of timings whose runs' std is under 5% of "
          "their median)")
    print(f"{'scheme':<8}{'mean move':>10}{'within 5%':>11}{'within 2%':>11}{'std < 5%':>10}{'retimed':>9}")
    for scheme, reps in repeats.items():
        moves = np.array([abs(a[p]["latency_ms"] - b[p]["latency_ms"]) / ((a[p]["latency_ms"] + b[p]["latency_ms"]) / 2)
                          for a, b in itertools.combinations(reps, 2) for p in paths])
        steady = np.array([r[p]["std_ms"] / r[p]["latency_ms"] < 0.05 for r in reps for p in paths])
        out[scheme] = {"mean_move": float(moves.mean()), "within_5": float(np.mean(moves < 0.05)),
                       "within_2": float(np.mean(moves < 0.02)), "std_below_5": float(steady.mean()),
                       "retimed": len(retimed.get(scheme, []))}
        print(f"{scheme:<8}{100 * out[scheme]['mean_move']:>9.2f}%{100 * out[scheme]['within_5']:>10.0f}%"
              f"{100 * out[scheme]['within_2']:>10.0f}%{100 * out[scheme]['std_below_5']:>9.0f}%"
              f"{out[scheme]['retimed']:>9}")
    return {**out, "models": len(paths)}


FLOOR_RUNS = 50  # runs per --floor session: a child's timing (latency.num_runs)
FLOOR_SLOW = 1.3  # a run this much slower than its session's median is a slow run


def spread_floor(args) -> dict:
    """Section 11: one network timed alone in sessions of a child's runs; per run its wall and thread CPU time."""
    import gc
    import os

    from tqdm import tqdm

    from latency import build_service
    from latency.quiet import pinned_to_one_core
    from search_spaces import resolve_arch

    if args.floor < 2:
        raise SystemExit("error: --floor must be at least 2")
    try:
        arch = resolve_arch(args.floor_arch)
    except ValueError as exc:
        raise SystemExit(f"error: --floor-arch: {exc}") from None
    tmp = _scratch("bench_floor_", args.keep_temp)
    with build_service("host", workers=1, cache_path=tmp / "latency.sqlite") as service:
        runner = service.runner
        conversion = service.convert(arch, resolution=args.resolution)
    if conversion["status"] != "ok":
        raise SystemExit(f"error: --floor-arch did not convert: {conversion['error']}")
    interpreter = runner.prepare(conversion["tflite_path"])
    collections: list[int] = []  # when each garbage collection started

    def track(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(time.perf_counter_ns())

    gc.callbacks.append(track)
    sessions = []
    try:
        with pinned_to_one_core() as cpu:
            runner.run(interpreter, 0, runner.warmup_runs)
            for _ in tqdm(range(args.floor), desc=f"sessions of {FLOOR_RUNS} runs"):
                runs = []
                for _ in range(FLOOR_RUNS):
                    cpu0, start = time.thread_time_ns(), time.perf_counter_ns()
                    interpreter.invoke()
                    end, cpu1 = time.perf_counter_ns(), time.thread_time_ns()
                    runs.append(((end - start) / 1e6, (cpu1 - cpu0) / 1e6,
                                 sum(start <= t <= end for t in collections)))
                sessions.append(runs)
                time.sleep(0.3)
    finally:
        gc.callbacks.remove(track)
    out = floor_figures(sessions)
    print(f"\n== the spread goal's floor: {args.floor_arch} alone, {len(sessions)} sessions of {FLOOR_RUNS} runs, "
          f"pinned to CPU {cpu}, {os.cpu_count()} CPUs")
    print(f"sessions with runs' std under 5% of their median: {100 * out['std_below_5']:.0f}% (largest "
          f"{100 * out['spread_max']:.1f}%)")
    print(f"slow runs (> {FLOOR_SLOW}x their session's median): {out['slow_runs']}, of which {out['slow_runs_cpu']} "
          f"used as much more thread CPU time as wall time (the CPU ran slower) and {out['slow_runs_gc']} saw a "
          "garbage collection")
    return {**out, "arch": args.floor_arch, "cpu": cpu}


def floor_figures(sessions: list[list[tuple[float, float, int]]]) -> dict:
    """``--floor``'s figures from sessions of runs, each ``(wall ms, thread CPU ms, collections during it)``;
    ``slow_wall_cpu_x``: each slow run's wall and thread CPU time over its session's medians."""
    import numpy as np

    spreads, slow, slow_cpu, slow_gc, ratios = [], 0, 0, 0, []
    for runs in sessions:
        wall, cpu = np.array([r[0] for r in runs]), np.array([r[1] for r in runs])
        spreads.append(float(wall.std() / np.median(wall)))
        for i in np.flatnonzero(wall > FLOOR_SLOW * np.median(wall)):
            slow += 1
            wall_x, cpu_x = wall[i] / np.median(wall), cpu[i] / np.median(cpu)
            slow_cpu += bool(abs(cpu_x / wall_x - 1) <= 0.1)
            slow_gc += bool(runs[i][2])
            ratios.append([round(float(wall_x), 2), round(float(cpu_x), 2)])
    spreads_a = np.array(spreads)
    return {"sessions": len(sessions), "std_below_5": float(np.mean(spreads_a < 0.05)),
            "spread_max": float(spreads_a.max()), "slow_runs": slow, "slow_runs_cpu": slow_cpu, "slow_runs_gc": slow_gc,
            "slow_wall_cpu_x": ratios}


def retime_validation(args) -> dict:
    """Section 9: the table's stored validation models timed again now, against their stored latencies."""
    from tqdm import tqdm

    from latency import build_service
    from latency.predictor import LatencyTableMissing, Predictor
    from latency.service import DEFAULT_ANCHOR
    from latency.table import time_models

    if not args.cache:
        raise SystemExit("error: --retime needs --cache, the latency cache holding the table")
    if args.retime < 2:
        raise SystemExit("error: --retime must be at least 2")
    _table_cache(args, "--retime")
    copy = _fresh_copy(args.cache, _scratch("bench_retime_", args.keep_temp))
    shape = {"resolution": args.resolution, "channels": 3, "num_classes": 1000}
    with build_service("host", workers=2, cache_path=copy, anchor=DEFAULT_ANCHOR) as service:
        try:
            predictor = Predictor.from_service(service, **shape)
        except LatencyTableMissing as exc:
            raise SystemExit(f"error: {exc}") from None
        stored = service.cache.models(predictor.table_key, "validation", predictor.space)[:args.retime]
        if len(stored) < 2:
            raise SystemExit(f"error: table {predictor.table_key} has {len(stored)} validation model(s) stored "
                             "(python -m latency table validate --n 200)")
        archs = [m["arch"] for m in stored]
        results = [result for _, result in tqdm(time_models(service, archs, shape), total=len(archs),
                                                desc="timed again", unit="model", dynamic_ncols=True)]
    ok = [(m, r) for m, r in zip(stored, results) if r.ok]
    if len(ok) < 2:
        raise SystemExit(f"error: only {len(ok)} of {len(stored)} models could be timed again")
    out = {"table_key": predictor.table_key,
           **repeat_figures([m["latency_ms"] for m, _ in ok], [r.latency_ms for _, r in ok],
                            [predictor.predict(m["arch"]).latency_ms for m, _ in ok],
                            [r.std_ms / r.latency_ms for _, r in ok])}
    print(f"\n== the held-out truth timed again: {len(ok)} validation models of table {predictor.table_key}")
    print(f"moved from the stored latency: mean {100 * out['mean_move']:.2f}%, {100 * out['within_5']:.0f}% within 5%, "
          f"{100 * out['within_2']:.0f}% within 2%, bias {100 * out['bias']:+.2f}%, RMS {100 * out['rms']:.2f}%")
    print(f"timing spread of the new timings: {100 * out['std_below_5']:.0f}% with runs' std under 5% of the median, "
          f"the largest {100 * out['spread_max']:.1f}%")
    print(f"{'predictor against':<20}{'within 5%':>10}{'within 10%':>11}{'RMSE':>8}{'bias':>8}{'tau':>7}")
    for name in ("stored", "timed again", "mean of both"):
        e = out[f"predictor_{name.replace(' ', '_')}"]
        print(f"{name:<20}{100 * e['within_5']:>9.1f}%{100 * e['within_10']:>10.1f}%{100 * e['rmse_rel']:>7.2f}%"
              f"{100 * e['bias_rel']:>+7.2f}%{e['kendall_tau']:>7.3f}")
    return out


def repeat_figures(stored, timed, predicted, spreads) -> dict:
    """Section 9's figures: how far each timing moved from its stored latency, the predictor's error against the
    stored timings, the new ones and their mean, and the share of new timings whose spread (std / median) is < 5%."""
    import numpy as np

    from latency.predictor import error_figures

    old, new, spreads = np.asarray(stored, float), np.asarray(timed, float), np.asarray(spreads, float)
    move = new / old - 1
    out = {"models": len(old), "mean_move": float(np.mean(np.abs(move))),
           "within_5": float(np.mean(np.abs(move) <= 0.05)), "within_2": float(np.mean(np.abs(move) <= 0.02)),
           "bias": float(np.mean(move)), "rms": float(np.sqrt(np.mean(move**2))),
           "std_below_5": float(np.mean(spreads < 0.05)), "spread_max": float(spreads.max())}
    for name, truth in (("stored", old), ("timed_again", new), ("mean_of_both", (old + new) / 2)):
        out[f"predictor_{name}"] = error_figures(predicted, truth)
    return out


if __name__ == "__main__":
    main()
