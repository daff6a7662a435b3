"""scripts/bench_controllers.py's statistics: sample counts where a seed that never got there is ``budget + 1``."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tests.conftest import load_script as load_conftest_script



def load_script():
    return load_conftest_script("bench_controllers")


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


def test_the_goal_is_undetermined_when_random_never_got_there_and_ppo_needed_over_half():
    """Random never within 95% (a count above the budget, ``budget + 1``) and PPO's median between half the budget and
    the budget printed "NOT met", while the ratio column said ``< 0.59``: random might have needed ten times the
    budget. The goal is met up to half of budget + 1 (README: random never in 3,072 samples, PPO 264), undetermined
    above; where random's count is measured the verdict is too."""
    bench = load_script()
    assert bench.goal(264, 3073, 3072) == "met"
    assert bench.goal(1536, 3073, 3072) == "met"  # 1536 <= 3073 / 2 <= any count above the budget / 2
    assert bench.goal(1537, 3073, 3072) == "undetermined"
    assert bench.goal(1800, 3073, 3072) == "undetermined"
    assert bench.goal(3073, 3073, 3072) == "undetermined"  # both never
    assert bench.goal(50, 100, 3072) == "met" and bench.goal(51, 100, 3072) == "not_met"
    assert bench.goal(3073, 1000, 3072) == "not_met"  # PPO never, random measured


def fake_curve(ppo_hit: int):
    """best_curve stand-in: PPO reaches 1.0 at sample ``ppo_hit``, every other controller stays at 0.5 (never 95%)."""
    def curve(name, objective, num_choices, seed, budget, batch):
        return [1.0 if name == "lstm_ppo" and i + 1 >= ppo_hit else 0.5 for i in range(budget)]
    return curve


def test_the_verdict_line_says_undetermined_not_NOT_met(monkeypatch, capsys):
    bench = load_script()
    monkeypatch.setattr(bench, "best_curve", fake_curve(ppo_hit=59))
    report = bench.efficiency(SimpleNamespace(seeds=1, budget=100, batch=10), [2] * 4)
    out = capsys.readouterr().out
    verdicts = [line for line in out.splitlines() if "-> goal" in line]
    assert len(verdicts) == len(bench.OBJECTIVES), out
    assert all(line.endswith("-> goal (<= half) undetermined (random never got there within the budget)")
               and "PPO median 59 vs random >100" in line for line in verdicts), out
    assert "| lstm_ppo | 59 [59, 59] | < 0.58 |" in out
    for figures in report.values():
        assert figures["goal"] == "undetermined" and figures["ppo_median"] == 59 and figures["random_median"] is None
    monkeypatch.setattr(bench, "best_curve", fake_curve(ppo_hit=50))
    bench.efficiency(SimpleNamespace(seeds=1, budget=100, batch=10), [2] * 4)
    assert "-> goal (<= half) met\n" in capsys.readouterr().out


def test_json_ends_the_output_with_every_figure_printed(monkeypatch, capsys):
    """bench_controllers printed no JSON (every other bench script ends with one JSON line under --json)."""
    bench = load_script()
    monkeypatch.setattr(bench.torch, "set_num_threads", lambda n: None)  # the test session's threads stay as set
    bench.main(["--seeds", "1", "--budget", "8", "--batch", "4", "--repeats", "1", "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert not any(line.startswith("{") for line in lines[:-1])
    assert (report["seeds"], report["budget"], report["batch"], report["repeats"]) == (1, 8, 4, 1)
    assert set(report["overhead"]) == set(bench.NAMES)
    assert set(report["overhead"]["lstm_ppo"]) == {"sample_64_ms", "per_architecture_ms", "update_64_ms",
                                                   "sample_update_ms"}
    assert set(report["objectives"]) == set(bench.OBJECTIVES)
    for figures in report["objectives"].values():
        assert figures["goal"] in ("met", "not_met", "undetermined")
        assert set(figures["controllers"]) == set(bench.NAMES)
        for row in figures["controllers"].values():
            assert set(row["samples_to_95"]) == {"median", "q1", "q3"}
            assert all(v is None or 1 <= v <= 8 for v in row["samples_to_95"].values())
            assert row["ratio_is"] in ("measured", "lower_bound", "upper_bound", "unknown")
            assert (row["ratio_to_random"] is None) == (row["ratio_is"] == "unknown")
            assert set(row["best_reward"]) == {"median", "q1", "q3"} and "samples_to_99_median" in row
    bench.main(["--seeds", "1", "--budget", "8", "--batch", "4", "--repeats", "1", "--skip-efficiency"])
    assert not any(line.startswith("{") for line in capsys.readouterr().out.splitlines())  # no --json: no JSON
