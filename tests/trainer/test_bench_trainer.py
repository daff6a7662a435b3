"""scripts/bench_trainer.py refuses flags it cannot run with in one line (exit 2), before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_trainer.py"


@pytest.mark.parametrize("flags, says", [
    (["--threads", "0"], "--threads must be >= 1"),  # set_num_threads traceback
    (["--rounds", "0"], "--rounds must be >= 1"),  # StatisticsError: no median for empty data
    (["--steps", "0"], "--steps must be >= 1"),
    (["--images-per-class", "3"], "--steps 12 needs 13"),  # no full batch: a TypeError traceback
])
def test_bad_flags_are_one_line(flags, says):
    out = subprocess.run([sys.executable, str(SCRIPT), *flags], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr
