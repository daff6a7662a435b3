"""Controller benchmark: sample efficiency on cheap objectives with the real reward, and controller overhead.

    .venv/bin/python scripts/bench_controllers.py [--seeds 5] [--budget 3072] [--batch 32] [--threads 1]

Part 1, per objective (``controllers.objectives``: hidden_target, trade_off) and seed: every controller gets the
same budget of samples; "best" is the highest reward any controller found on that seed, and each controller's
samples-to-95% is how many samples it drew before its best-so-far reached 0.95 x best (never: reported as
> budget). Medians (and quartiles) over seeds. Goal (issue 5): PPO needs at most half the samples of random.

Part 2: milliseconds to sample 64 architectures of the default MnasNet space (42 decisions) and for one update
at batch 64, median of repeated runs in this process. Goal: sample 64 + one PPO update well under a second.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import controllers  # noqa: E402
from controllers.objectives import OBJECTIVES  # noqa: E402

# The default MnasNet space's decisions (search_spaces.SearchSpace.default().num_choices), used when the
# search space cannot be imported.
MNASNET_CHOICES = [4, 2, 2, 3, 2, 2, 4, 2, 2, 3, 2, 3, 4, 2, 2, 3, 3, 3, 4, 2, 2, 3, 3, 3,
                   4, 2, 2, 3, 3, 3, 4, 2, 2, 3, 3, 3, 4, 2, 2, 3, 3, 2]
NAMES = ["random", "evolution", "lstm_reinforce", "lstm_ppo"]


def space_choices() -> list[int]:
    try:
        from search_spaces import SearchSpace

        return list(SearchSpace.default().num_choices)
    except Exception as exc:  # the benchmark must still run while the search space is being changed
        print(f"note: using the built-in 42-decision MnasNet choices ({exc})")
        return MNASNET_CHOICES


def best_curve(name: str, objective, num_choices, seed: int, budget: int, batch: int) -> list[float]:
    """Best-so-far reward after each sample."""
    ctl = controllers.build(name, num_choices, seed=seed)
    curve, best = [], float("-inf")
    while len(curve) < budget:
        sample = ctl.sample(min(batch, budget - len(curve)))
        rewards = [objective(t) for t in sample.tokens]
        ctl.update(sample.tokens, rewards)
        for r in rewards:
            best = max(best, r)
            curve.append(best)
    return curve


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def count_quartiles(counts: list[int]) -> tuple[int, int, int]:
    """Quartiles of sample counts in which ``budget + 1`` stands for 'never': each one a count some seed needed (the
    higher of two middle ones), never a number interpolated between a real count and the placeholder."""
    ordered = sorted(counts)
    return tuple(ordered[math.ceil(p * (len(ordered) - 1))] for p in (0.25, 0.5, 0.75))


def fmt_samples(value: float, budget: int) -> str:
    return f">{budget}" if value > budget else f"{value:.0f}"


def fmt_ratio(count: int, random_count: int, budget: int) -> str:
    """A controller's samples over random's, where either may be ``budget + 1`` ('never'): a count that never got
    there is only a lower bound (so the ratio is one too), and over a random count that never did, an upper one."""
    ratio = count / random_count
    if count > budget and random_count > budget:
        return "- (never)"
    if count > budget:
        return f"> {ratio:.2f}"
    return f"< {ratio:.2f}" if random_count > budget else f"{ratio:.2f}"


def efficiency(args, num_choices) -> None:
    print(f"\n## Sample efficiency: {args.seeds} seeds, budget {args.budget} samples, batch {args.batch}, "
          f"{len(num_choices)} decisions\n")
    runs = [(o, s, n) for o in OBJECTIVES for s in range(args.seeds) for n in NAMES]
    curves = {}
    for obj_name, seed, name in tqdm(runs, desc="runs", file=sys.stderr):
        objective = OBJECTIVES[obj_name](num_choices, seed=seed)
        curves[obj_name, seed, name] = best_curve(name, objective, num_choices, seed, args.budget, args.batch)
    print("| objective | controller | samples to 95% of best (median [q1, q3]) | samples / random's (95%) | "
          "samples to 99% of best | best reward after budget (median [q1, q3]) |")
    print("|---|---|---|---|---|---|")
    verdicts = []
    for obj_name in OBJECTIVES:
        needed = {(n, f): [] for n in NAMES for f in (0.95, 0.99)}
        final = {n: [] for n in NAMES}
        for seed in range(args.seeds):
            best = max(curves[obj_name, seed, n][-1] for n in NAMES)
            for n in NAMES:
                curve = curves[obj_name, seed, n]
                for f in (0.95, 0.99):
                    hit = next((i + 1 for i, r in enumerate(curve) if r >= f * best), args.budget + 1)
                    needed[n, f].append(hit)
                final[n].append(curve[-1])
        random_median = count_quartiles(needed["random", 0.95])[1]
        for n in NAMES:
            q1, med, q3 = count_quartiles(needed[n, 0.95])
            f1, fmed, f3 = quartiles(final[n])
            print(f"| {obj_name} | {n} | {fmt_samples(med, args.budget)} [{fmt_samples(q1, args.budget)}, "
                  f"{fmt_samples(q3, args.budget)}] | {fmt_ratio(med, random_median, args.budget)} | "
                  f"{fmt_samples(count_quartiles(needed[n, 0.99])[1], args.budget)} | "
                  f"{fmed:.4f} [{f1:.4f}, {f3:.4f}] |")
        ppo_median = count_quartiles(needed["lstm_ppo", 0.95])[1]
        verdicts.append(f"{obj_name}: PPO median {fmt_samples(ppo_median, args.budget)} vs random "
                        f"{fmt_samples(random_median, args.budget)} samples -> goal (<= half) "
                        + ("met" if ppo_median <= 0.5 * random_median else "NOT met"))
    print("\n" + "\n".join(verdicts))


def overhead(args, num_choices) -> None:
    print(f"\n## Overhead: batch 64, {len(num_choices)} decisions, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats} repeats\n")
    print("| controller | sample 64 (ms) | per architecture (ms) | update at 64 (ms) | sample + update (ms) |")
    print("|---|---|---|---|---|")
    objective = OBJECTIVES["hidden_target"](num_choices, seed=0)
    for name in NAMES:
        ctl = controllers.build(name, num_choices, seed=0)
        t_sample, t_update = [], []
        for _ in range(args.repeats + 1):  # the first round warms up and fills evolution's population
            t0 = time.perf_counter()
            sample = ctl.sample(64)
            t1 = time.perf_counter()
            rewards = [objective(t) for t in sample.tokens]
            t2 = time.perf_counter()
            ctl.update(sample.tokens, rewards)
            t3 = time.perf_counter()
            t_sample.append((t1 - t0) * 1e3)
            t_update.append((t3 - t2) * 1e3)
        s, u = statistics.median(t_sample[1:]), statistics.median(t_update[1:])
        print(f"| {name} | {s:.2f} | {s / 64:.3f} | {u:.2f} | {s + u:.2f} |")


def main(argv: list[str] | None = None) -> None:
    from mnas_common.errors import OneLineParser  # bad command lines: one error line, exit 2

    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=3072, help="samples per controller and seed")
    parser.add_argument("--batch", type=int, default=32, help="samples per controller update")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for the whole run")
    parser.add_argument("--repeats", type=int, default=20, help="repeats for the overhead timings")
    parser.add_argument("--skip-efficiency", action="store_true")
    args = parser.parse_args(argv)
    for field in ("seeds", "budget", "batch", "threads", "repeats"):
        if getattr(args, field) < 1:
            parser.error(f"--{field} must be >= 1, got {getattr(args, field)}")
    torch.set_num_threads(args.threads)
    num_choices = space_choices()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    overhead(args, num_choices)
    if not args.skip_efficiency:
        efficiency(args, num_choices)


if __name__ == "__main__":
    main()
