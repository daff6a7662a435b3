"""Driver benchmark: what the search itself costs per child at the paper's scale (8,000 children).

The real search driver (``nas.run.run_search``: the ``lstm_ppo`` controller, the soft reward, the SQLite run store
with its fsyncs, the TensorBoard and event-log loggers) with the synthetic evaluator (no training, no conversion: a
closed-form child), batch 64, budgets 1,000 / 4,000 / 8,000 children, each in a fresh process. Then the 8,000-child
run once more, killed with SIGKILL half-way and resumed: it must end with exactly 8,000 children, none recorded
twice and no finished child evaluated twice.

    python scripts/bench_search.py                    # table + verdicts
    python scripts/bench_search.py --budget 8000 --json   # ... and a last line of JSON

Goal: under 10 ms per child at 8,000 (controller updates included) and no more than 1.5x the per-child figure at
1,000 (nothing in the driver grows with the number of children already stored).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OVERRIDES = ["evaluator=synthetic", "controller=lstm_ppo", "reward=soft", "batch_size=64", "threads=1",
             "logger=[tensorboard,events]", "pareto.enabled=false", "measure_references=[]", "target_ms=5.0"]


def drive(run_dir: str, budget: int) -> None:
    """One run of the driver in this process; prints its wall seconds as JSON.

    Start-up (imports of torch, Hydra and the components, paid once per process whatever the budget) is timed
    apart: building the parts once before the run pays it, and the run itself is ``driver_seconds``."""
    from hydra import compose, initialize_config_dir

    from mnas_common.paths import config_dir
    from nas.run import build_parts, run_search

    start = time.perf_counter()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("search", overrides=[*OVERRIDES, f"budget={budget}", f"run_dir={run_dir}"])
    build_parts(cfg, run_dir).close()
    startup = time.perf_counter() - start
    start = time.perf_counter()
    summary = run_search(cfg, run_dir)
    print(json.dumps({"driver_seconds": time.perf_counter() - start, "startup_seconds": startup,
                      "children": summary["children"]}), flush=True)


def child_process(run_dir: Path, budget: int) -> list[str]:
    return [sys.executable, __file__, "--drive", str(run_dir), "--budget", str(budget)]


def timed(run_dir: Path, budget: int) -> dict:
    out = subprocess.run(child_process(run_dir, budget), capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["ms_per_child"] = 1000 * result["driver_seconds"] / result["children"]
    return result


def stored(run_dir: Path) -> int:
    from nas.store import sqlite_uri

    try:
        with sqlite3.connect(sqlite_uri(run_dir / "run.sqlite", mode="ro"), uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM children WHERE committed_step IS NOT NULL").fetchone()[0]
    except sqlite3.Error:
        return 0


def kill_and_resume(run_dir: Path, budget: int) -> dict:
    """SIGKILL the driver once half-way, resume, and check the run: exactly ``budget`` children, none twice."""
    proc = subprocess.Popen(child_process(run_dir, budget), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and stored(run_dir) < budget // 2:
        time.sleep(0.05)
    killed_at = stored(run_dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = timed(run_dir, budget)
    with sqlite3.connect(run_dir / "run.sqlite") as conn:
        rows = conn.execute("SELECT step, idx, committed_step FROM children").fetchall()
        steps = conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
    committed = [r for r in rows if r[2] is not None]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    evaluated = [e["arch"] for e in events if e["event"] == "child" and e["origin"] == "evaluated"]
    return {"killed_at": killed_at, "children": len(committed), "distinct_places": len({r[:2] for r in committed}),
            "steps": steps, "evaluated_twice": len(evaluated) - len(set(evaluated)),
            "resume_seconds": resumed["driver_seconds"]}


def main() -> int:
    from mnas_common.errors import OneLineParser  # bad command lines: one error line, exit 2

    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=8000, help="the largest budget (also 1,000 and 4,000)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--drive", help=argparse.SUPPRESS)  # internal: one driver run in this process
    args = parser.parse_args()
    if args.drive:
        drive(args.drive, args.budget)
        return 0
    if args.budget < 1000:
        parser.error(f"--budget must be at least 1000, got {args.budget}")
    budgets = sorted({1000, min(4000, args.budget), args.budget})
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        for budget in budgets:
            results[budget] = timed(Path(tmp) / f"run{budget}", budget)
            r = results[budget]
            print(f"budget {budget:>5}: {r['children']} children in {r['driver_seconds']:.1f} s driver time, "
                  f"{r['ms_per_child']:.2f} ms per child (start-up {r['startup_seconds']:.1f} s, once)", flush=True)
        kill = kill_and_resume(Path(tmp) / "killed", args.budget)
    big, small = results[args.budget], results[1000]
    growth = big["ms_per_child"] / small["ms_per_child"]
    print(f"kill -9 at {kill['killed_at']} committed children, resumed: {kill['children']} children in "
          f"{kill['steps']} steps, {kill['distinct_places']} distinct (step, idx), "
          f"{kill['evaluated_twice']} evaluated twice")
    fine = big["ms_per_child"] < 10 and growth <= 1.5
    resume_ok = (kill["children"] == kill["distinct_places"] == args.budget and kill["evaluated_twice"] == 0)
    print(f"verdict: {big['ms_per_child']:.2f} ms per child at {args.budget} (goal < 10), {growth:.2f}x the figure "
          f"at 1,000 (goal <= 1.5): {'met' if fine else 'NOT met'}; kill -9 resume: {'exact' if resume_ok else 'WRONG'}")
    if args.json:
        print(json.dumps({
            "children": big["children"], "driver_seconds": round(big["driver_seconds"], 3),
            "startup_seconds": round(big["startup_seconds"], 3),
            "ms_per_child": round(big["ms_per_child"], 3), "ms_per_child_1000": round(small["ms_per_child"], 3),
            **{f"ms_per_child_{b}": round(r["ms_per_child"], 3) for b, r in results.items() if b not in (1000, args.budget)},
            "growth": round(growth, 3), "kill_resume_children": kill["children"],
            "kill_resume_evaluated_twice": kill["evaluated_twice"], "goal_met": fine and resume_ok,
        }))
    return 0 if fine and resume_ok else 1


if __name__ == "__main__":
    sys.exit(main())
