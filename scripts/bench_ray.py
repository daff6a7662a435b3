"""Ray scale-out benchmark: real children per hour on this machine, scheduling efficiency at paper scale (simulated
actors on a real Ray instance), and the projected wall-clock of ``mnas_pixel1``.

1. **This machine**: the same quickstart-size search (the quickstart experiment's proxy, the deployed 224x224x3
   model timed on the host, quiet timing), once with ``evaluator=local`` and once with ``evaluator=ray`` and two
   trainer actors, each from a fresh latency cache; children per hour from the wall time of the whole command.
   Goal: at least 1.6x. Also printed: the cores the machine kept busy over each search (/proc/stat), and the speed-up
   once under way (children per hour from the first child's result to the last: start-up left out), which shows how
   much of the gap a longer search would close. ``--override KEY=VALUE`` (repeatable) changes both searches alike,
   e.g. ``--override controller=evolution --override steady_state=true`` for aging evolution with no batch barrier.
2. **Paper scale, simulated**: 8,000 children with the real search driver (aging evolution, steady state) and the
   real Ray evaluator's scheduler on a real local Ray instance, whose trainer, converter and device actors are
   simulated: each stage sleeps a duration drawn from the per-child costs measured in part 1 (time-compressed so
   that a run takes about ``--sim-seconds``). Scheduling efficiency = the makespan of an ideal zero-overhead
   scheduler on the same durations (a discrete-event simulation) / the measured makespan. Goal at 128 actors: 0.9.
3. **mnas_pixel1 projection**: 8,000 children in PPO batches of 64 on 8 GPUs and 2 phones, from the costs of this
   machine where it has them and stated assumptions where it has not (no GPU here).

Starts Ray, so it runs itself in a private network namespace where it can (root with ``unshare``): Ray listens on
every interface. ``python scripts/bench_ray.py --json`` ends with one JSON line (``local_children_per_hour``,
``ray_children_per_hour``, ``speedup``, ``steady_speedup``, ``local_cores_busy``, ``ray_cores_busy``,
``simulated_efficiency_8``/``_32``/``_128``, ``projected_hours``). ``--skip-sim`` runs part 1 (and 3) only.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# two trainer actors; two converter actors, as the local evaluator's two conversion workers (latency.workers)
RAY = ["evaluator=ray", "evaluator.trainers.actors=2", "evaluator.converters.actors=2"]
QUICKSTART = ["+experiment=quickstart", "measure_references=[]", "pareto.enabled=false", "logger=[events]"]


def in_private_netns() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def reexec_in_netns() -> None:
    """Run this script again inside ``unshare -n`` (loopback only) when it is not already and it can."""
    if in_private_netns() or os.environ.get("BENCH_RAY_NO_NETNS"):
        return
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        print("note: not in a private network namespace (needs root and unshare): Ray listens on this machine's "
              "interfaces for the duration of the benchmark", file=sys.stderr)
        return
    script = shlex.join([sys.executable, *sys.argv])
    os.execvp("unshare", ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {script}"])


# ---------------------------------------------------------------------------------------------------- part 1
def real_run(tmp: Path, name: str, budget: int, extra: list[str]) -> dict:
    """One search as a user runs it; returns wall seconds and the per-child costs it measured."""
    run_dir = tmp / name
    cmd = [sys.executable, "-m", "nas.search", *QUICKSTART, f"budget={budget}", f"run_dir={run_dir}",
           f"latency.cache_path={tmp / name / 'latency-cache' / 'latency.sqlite'}", *extra]
    start, busy = time.perf_counter(), cpu_seconds()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cores_busy = (cpu_seconds() - busy) / wall
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise SystemExit(f"error: the {name} search failed: {lines[-1] if lines else f'exit code {result.returncode}'}")
    from nas.store import RunStore

    with RunStore(run_dir, readonly=True) as store:
        kids = [c for c in store.children(committed_only=True) if not c.reused]
    costs = [{"train": c.train_seconds or 0.0, "convert": (c.latency or {}).get("convert_seconds") or 0.0,
              "time": max(0.0, (c.latency or {}).get("wall_seconds") or 0.0)} for c in kids if c.ok]
    return {"wall_seconds": wall, "children": len(kids), "per_hour": 3600 * len(kids) / wall, "costs": costs,
            "cores_busy": cores_busy, "steady_per_hour": steady_per_hour(run_dir / "events.jsonl")}


def steady_per_hour(events_path: Path) -> float | None:
    """Children per hour once the search is under way: the children evaluated after the first one, over the time from
    the first one's result to the last one's (start-up, which a longer search amortises, left out)."""
    times = sorted(e["time"] for e in map(json.loads, events_path.read_text().splitlines())
                   if e["event"] == "child" and e.get("origin") == "evaluated")
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return 3600 * (len(times) - 1) / (times[-1] - times[0])


def cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat: user, nice, system, irq, softirq). Steal
    time is left out: it is another VM's use of the core, not work of this machine's (``latency.quiet`` counts it,
    because there it asks whether anyone else disturbed a timing)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return sum(int(v) for v in (fields[1:4] + fields[6:8])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------- part 2
def slots(hosts: list, count: int) -> list:
    """``count`` simulated actors spread over a few asyncio Ray actors (each slot runs one stage at a time, as an
    actor does); to the evaluator's scheduler a slot looks like an actor handle."""
    return [Slot(hosts[i % len(hosts)]) for i in range(count)]


class SimHost:
    async def run(self, stage: str, seconds: float, payload: dict) -> dict:
        await asyncio.sleep(seconds)
        return {**payload, "node": "simulated"}

    def where(self) -> dict:
        return {"node": "simulated", "pid": os.getpid()}


class Slot:
    def __init__(self, host):
        self.host = host
        self.train = _Method(self, "train")
        self.convert = _Method(self, "convert")
        self.time = _Method(self, "time")
        self.where = _Method(self, "where")


class _Method:
    def __init__(self, slot: Slot, stage: str):
        self.slot, self.stage = slot, stage

    def remote(self, *args):
        return SIM.dispatch(self.slot.host, self.stage, args)


class Simulation:
    """Durations of each child's stages (drawn once per architecture from the measured costs, compressed)."""

    def __init__(self, costs: list[dict], scale: float, seed: int = 0):
        self.costs, self.scale = costs, scale
        self.rng = random.Random(seed)
        self.drawn: dict[str, dict] = {}

    def durations(self, arch: str) -> dict:
        if arch not in self.drawn:
            c = self.rng.choice(self.costs)
            self.drawn[arch] = {k: v * self.scale for k, v in c.items()}
        return self.drawn[arch]

    def dispatch(self, host, stage: str, args):
        from nas.synthetic import synthetic_measurements

        if stage == "where":
            return host.where.remote()
        if stage == "train":
            arch = args[0]
            top1, _, params, _ = synthetic_measurements(arch)
            payload = {"status": "ok", "top1": top1, "train_seconds": self.durations(arch)["train"]}
        elif stage == "convert":
            arch = args[0]
            payload = {"status": "ok", "arch": arch, "key": arch, "tflite_path": "-", "onnx_path": "-"}
        else:
            arch = args[0]["arch"]
            payload = {"status": "ok", "latency_ms": synthetic_measurements(arch)[1], "std_ms": 0.0}
        return host.run.remote(stage, self.durations(arch)[stage], payload)


SIM: Simulation | None = None


def ideal_makespan(order: list[str], sim, trainers: int, converters: int, devices: int,
                   in_flight: int | None = None) -> float:
    """Zero-overhead schedule of ``order``: ``in_flight`` children at once (default: one per trainer, the steady
    state), each child train || (convert -> time), every stage served first come, first served by the first free
    actor of its kind (a discrete-event simulation)."""
    free = {"train": [0.0] * trainers, "convert": [0.0] * converters, "time": [0.0] * devices}
    slots = [0.0] * (in_flight or trainers)  # when each in-flight place frees up (a child finishing frees its place)
    heapq.heapify(slots)
    end = 0.0
    for arch in order:
        d = sim.durations(arch)
        start = heapq.heappop(slots)

        def run(kind: str, ready: float, seconds: float) -> float:
            begin = max(ready, heapq.heappop(free[kind]))
            heapq.heappush(free[kind], begin + seconds)
            return begin + seconds

        trained = run("train", start, d["train"])
        timed = run("time", run("convert", start, d["convert"]), d["time"])
        done = max(trained, timed)
        heapq.heappush(slots, done)
        end = max(end, done)
    return end


def simulated(costs: list[dict], actors: int, children: int, target_s: float, tmp: Path) -> dict:
    """The real driver and scheduler over simulated actors; returns the efficiency against the ideal schedule."""
    global SIM
    import ray
    from hydra import compose, initialize_config_dir

    from mnas_common.paths import config_dir
    from nas import ray_evaluator
    from nas.run import run_search

    converters, devices = max(1, math.ceil(actors / 4)), max(1, math.ceil(actors / 8))
    # compressed so that the busiest kind of actor (trainers, converters or devices, whichever the costs make the
    # bottleneck) needs about target_s: the ideal makespan is then about target_s
    busiest = max(sum(c[stage] for c in costs) / len(costs) / n
                  for stage, n in (("train", actors), ("convert", converters), ("time", devices)))
    scale = target_s / (children * busiest)
    SIM = Simulation(costs, scale)

    host_cls = ray.remote(num_cpus=0, max_concurrency=100_000)(SimHost)
    hosts = [host_cls.remote() for _ in range(4)]
    ray.get([h.where.remote() for h in hosts])  # started before the clock starts

    class SimulatedRay(ray_evaluator.RayEvaluator):
        def start(self, run_dir):  # the real scheduler, simulated actors
            self._pools = {stage: ray_evaluator._Pool(stage, iter(slots(hosts, n)).__next__, n)
                           for stage, n in (("train", actors), ("convert", converters), ("time", devices))}

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("search", overrides=[
            "evaluator=ray", f"evaluator.trainers.actors={actors}", "controller=evolution", "steady_state=true",
            f"budget={children}", f"run_dir={tmp / f'sim{actors}'}", "logger=[events]", "pareto.enabled=false",
            "measure_references=[]", "threads=1", "evaluator.poll_s=0.05"])
    original = ray_evaluator.RayEvaluator
    ray_evaluator.RayEvaluator = SimulatedRay
    try:
        run_search(cfg, tmp / f"sim{actors}")
    finally:
        ray_evaluator.RayEvaluator = original
        for host in hosts:
            ray.kill(host)
    events = [json.loads(line) for line in (tmp / f"sim{actors}" / "events.jsonl").read_text().splitlines()]
    order = [e["arch"] for e in events if e["event"] == "submit"]
    # the schedule: from the first child handed out to the last one committed (start-up is not scheduling)
    measured = max(e["time"] for e in events if e["event"] == "step") - min(
        e["time"] for e in events if e["event"] == "submit")
    ideal = ideal_makespan(order, SIM, actors, converters, devices)
    return {"actors": actors, "converters": converters, "devices": devices, "measured_s": measured,
            "ideal_s": ideal, "efficiency": ideal / measured}


# ---------------------------------------------------------------------------------------------------- part 3
ASSUMED = {
    "gpu_train_seconds": 65.0,  # 5 epochs x 50,000 images at 128 px at ~4,000 img/s (bf16, one modern GPU), + eval
    "phone_seconds": 6.7,       # Pixel 1: (10 warm-up + 50 runs) x 78 ms + push and cool-down (mnas_pixel1: 1 s)
}


class Fixed:
    """The same costs for every child."""

    def __init__(self, train: float, convert: float, timing: float):
        self.costs = {"train": train, "convert": convert, "time": timing}

    def durations(self, arch: str) -> dict:
        return self.costs


def projection(convert_s: float, *, children: int = 8000, batch: int = 64, gpus: int = 8, phones: int = 2,
               converters: int = 8) -> float:
    """Hours for ``children`` in on-policy batches of ``batch``: a batch is handed out whole and the controller
    waits for its slowest child before the next (the PPO barrier)."""
    costs = Fixed(ASSUMED["gpu_train_seconds"], convert_s, ASSUMED["phone_seconds"])
    one_batch = ideal_makespan([str(i) for i in range(batch)], costs, gpus, converters, phones, in_flight=batch)
    return children / batch * one_batch / 3600


# ---------------------------------------------------------------------------------------------------- main
def simulate_all(args, costs: list[dict], tmp: Path, out: dict) -> None:
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             num_cpus=os.cpu_count())
    try:
        for n in args.actors:
            r = simulated(costs, n, args.children, args.sim_seconds, tmp)
            out[f"simulated_efficiency_{n}"] = round(r["efficiency"], 3)
            print(f"simulated {args.children} children on {n} trainer, {r['converters']} converter and "
                  f"{r['devices']} device actors: {r['measured_s']:.1f} s measured vs {r['ideal_s']:.1f} s "
                  f"ideal, efficiency {r['efficiency']:.3f}", flush=True)
    finally:
        ray.shutdown()


def check_args(parser, args) -> None:
    """Every count checked before anything starts (a bad one was a traceback, some after part 1's 30 minutes);
    ``args.actors`` becomes a list of ints."""
    import yaml

    from mnas_common.paths import config_dir

    population = yaml.safe_load((config_dir() / "controller" / "evolution.yaml").read_text())["population_size"]
    parser.require_positive(args, "budget")
    if args.children <= population:
        parser.error(f"--children must be > {population} (the simulated search runs aging evolution with a "
                     f"population of {population}), got {args.children}")
    if not math.isfinite(args.sim_seconds) or args.sim_seconds <= 0:
        parser.error(f"--sim-seconds must be a number > 0, got {args.sim_seconds}")
    parts = [a.strip() for a in args.actors.split(",")]
    actors = [int(a) for a in parts if a.isdigit() and int(a) >= 1]
    if len(actors) != len(parts) or len(set(actors)) != len(actors):  # 8,8 reused sim8/: the first run's figures
        parser.error(f"--actors must be distinct ints >= 1, comma-separated (e.g. 8,32,128), got {args.actors!r}")
    args.actors = actors


def load_costs(path: Path) -> list[dict]:
    """A costs file's per-child costs (a non-empty JSON list of {train, convert, time} seconds), or a one-line
    ValueError saying what is wrong with it."""
    try:
        costs = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not readable JSON ({exc})") from None
    if not isinstance(costs, list) or not costs:
        raise ValueError("expected a non-empty JSON list of per-child costs")
    for i, c in enumerate(costs):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), (int, float)) and not isinstance(c.get(k), bool)
                                              and c[k] >= 0 for k in ("train", "convert", "time")):
            raise ValueError(f"entry {i} is not {{train, convert, time}} seconds >= 0: {c!r}")
    return costs


def main() -> int:
    from mnas_common.errors import OneLineParser  # bad command lines: one error line, exit 2

    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=56,
                        help="children of each real search in part 1 (56: the quickstart's own, what make search runs)")
    parser.add_argument("--children", type=int, default=8000, help="children of each simulated search")
    parser.add_argument("--actors", default="8,32,128", help="simulated trainer actors, comma-separated")
    parser.add_argument("--sim-seconds", type=float, default=600.0, help="ideal makespan of a simulated run")
    parser.add_argument("--skip-real", action="store_true", help="part 2 and 3 from --costs instead of part 1")
    parser.add_argument("--costs", help="a JSON file of per-child costs (written by part 1 next to the output)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override for both real searches of part 1 (repeatable)")
    parser.add_argument("--skip-sim", action="store_true", help="part 1 only: no simulated search")
    parser.add_argument("--keep", metavar="DIR", help="keep part 1's run directories (local/, ray/) under DIR")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    check_args(parser, args)
    if args.skip_real:
        unused = [flag for flag, given in (("--keep", args.keep), ("--override", args.override)) if given]
        if unused:
            parser.error(f"{' and '.join(unused)}: only for part 1's real searches, which --skip-real skips")
        if not args.costs:
            parser.error("--skip-real needs --costs, the per-child costs a previous part 1 wrote")
        if not Path(args.costs).is_file():
            parser.error(f"--costs {args.costs}: no such file")
        try:
            stored_costs = load_costs(Path(args.costs))
        except ValueError as exc:
            parser.error(f"--costs {args.costs}: {exc}")
    reexec_in_netns()
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp_name:
        tmp = Path(tmp_name)
        if args.skip_real:
            costs = stored_costs
        else:
            runs = Path(args.keep).expanduser().resolve() if args.keep else tmp  # the searches run from ROOT
            if args.keep and any((runs / name).exists() for name in ("local", "ray")):
                raise SystemExit(f"error: --keep {runs} already holds a local/ or ray/ run; give an empty directory")
            local = real_run(runs, "local", args.budget, args.override)
            print(f"local: {local['children']} children in {local['wall_seconds']:.0f} s, "
                  f"{local['per_hour']:.0f} children/hour, {local['cores_busy']:.2f} cores busy", flush=True)
            remote = real_run(runs, "ray", args.budget, [*args.override, *RAY])
            print(f"ray (2 trainer and 2 converter actors): {remote['children']} children in "
                  f"{remote['wall_seconds']:.0f} s, {remote['per_hour']:.0f} children/hour, "
                  f"{remote['cores_busy']:.2f} cores busy", flush=True)
            out.update(local_children_per_hour=round(local["per_hour"], 1),
                       ray_children_per_hour=round(remote["per_hour"], 1),
                       speedup=round(remote["per_hour"] / local["per_hour"], 3),
                       local_cores_busy=round(local["cores_busy"], 2), ray_cores_busy=round(remote["cores_busy"], 2))
            if local["steady_per_hour"] and remote["steady_per_hour"]:
                out["steady_speedup"] = round(remote["steady_per_hour"] / local["steady_per_hour"], 3)
            print(f"speed-up {out['speedup']:.2f}x (goal >= 1.6); once under way (first result to last) "
                  f"{out.get('steady_speedup', float('nan')):.2f}x", flush=True)
            costs = local["costs"] + remote["costs"]
            costs_path = Path(args.costs) if args.costs else ROOT / "runs" / "bench_ray_costs.json"
            costs_path.parent.mkdir(parents=True, exist_ok=True)
            costs_path.write_text(json.dumps(costs))
        if not args.skip_sim:
            simulate_all(args, costs, tmp, out)
    convert_s = sorted(c["convert"] for c in costs)[len(costs) // 2]
    hours = projection(convert_s)
    out["projected_hours"] = round(hours, 1)
    print(f"mnas_pixel1 projection: 8,000 children, PPO batches of 64, 8 GPUs ({ASSUMED['gpu_train_seconds']:.0f} s "
          f"per child, assumed: no GPU here), 2 phones ({ASSUMED['phone_seconds']} s per child, assumed), conversion "
          f"{convert_s:.1f} s (measured here): {hours:.1f} hours")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
