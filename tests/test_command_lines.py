"""Every command-line tool answers a bad command line with one line, ``error: ...``, and exit 2 (argparse's default
was the whole usage, then the error: up to 15 lines)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

TOOLS = [["-m", "nas.pareto", "run"], ["-m", "latency", "measure", "mnasnet_b1"], ["scripts/bench_proxy.py"],
         ["scripts/bench_ray.py"], ["scripts/bench_latency.py"], ["scripts/bench_controllers.py"],
         ["scripts/bench_search.py"], ["scripts/bench_trainer.py"]]


@pytest.mark.parametrize("tool", TOOLS, ids=lambda tool: tool[-1] if tool[0] != "-m" else tool[1])
def test_an_unknown_flag_is_one_error_line(tool):
    result = subprocess.run([sys.executable, *tool, "--no-such-flag"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "unrecognized arguments: --no-such-flag" in result.stderr


@pytest.mark.parametrize("argv", [[], ["prep"], ["--no-such-flag"]])
def test_nas_data_without_a_known_command_is_one_error_line(argv):
    """python -m nas.data printed only its usage line (no error: naming what was wrong) and took --help for a bad
    command."""
    result = subprocess.run([sys.executable, "-m", "nas.data", *argv], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert (f"unknown command {argv[0]!r}" if argv else "no command") in result.stderr


def test_nas_data_help_is_the_usage_on_stdout():
    result = subprocess.run([sys.executable, "-m", "nas.data", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m nas.data {prepare,info}")


@pytest.mark.parametrize("script", ["bench_search", "bench_ray", "bench_latency", "bench_controllers"])
def test_a_bad_budget_is_one_error_line_naming_the_script(script):
    """bench_search printed ``error: --budget must be at least 1000``, without the script's name the other
    benchmarks put first, nor the value it was given."""
    result = subprocess.run([sys.executable, f"scripts/{script}.py", "--budget", "0"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {script}.py: --budget must be "), \
        result.stderr
    assert result.stderr.rstrip().endswith("got 0"), result.stderr
