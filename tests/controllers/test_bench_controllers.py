"""scripts/bench_controllers.py's statistics: sample counts where a seed that never got there is ``budget + 1``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_controllers.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_controllers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_seed_that_never_got_there_is_never_averaged_into_a_count():
    """With an even number of seeds the median averaged a real count with the 'never' placeholder: 30 and never
    (101, budget 100) printed as a real 66 samples, and the verdict used it."""
    bench = load_script()
    q1, median, q3 = bench.count_quartiles([30, 101])
    assert median == 101 and bench.fmt_samples(median, 100) == ">100"
    assert q1 in (30, 101) and q3 in (30, 101)
    assert bench.count_quartiles([5, 1, 4, 2, 3]) == (2, 3, 4)  # odd counts: the usual quartiles


def test_a_ratio_against_never_is_a_bound_not_a_number():
    """A controller that never got there while random did printed (budget + 1) / random as a plain ratio: 101/50
    read as a measured 2.02. It is only a lower bound; over a random that never got there, an upper one."""
    bench = load_script()
    assert bench.fmt_ratio(25, 50, 100) == "0.50"
    assert bench.fmt_ratio(101, 50, 100) == "> 2.02"
    assert bench.fmt_ratio(50, 101, 100) == "< 0.50"
    assert bench.fmt_ratio(101, 101, 100) == "- (never)"
