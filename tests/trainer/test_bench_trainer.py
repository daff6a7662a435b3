"""scripts/bench_trainer.py refuses flags and datasets it cannot run with in one line (exit 2), before any work, and
ends with one JSON line of its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import load_script as load_conftest_script

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


def test_more_images_per_class_than_the_source_holds_is_one_line():
    """Fashion-MNIST has 6,000 training images per class, 100 of them held out: --images-per-class 6000 was a
    DatasetUnavailable traceback from load_dataset."""
    out = subprocess.run([sys.executable, str(SCRIPT), "--images-per-class", "6000", "--rounds", "1", "--steps", "1"],
                         capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: dataset fashion_mnist") and "images_per_class" in lines[0], \
        out.stderr
    assert "{" not in out.stdout  # nothing timed, no JSON


def load_script():
    return load_conftest_script("bench_trainer")


def stubbed(monkeypatch):
    """The script with its dataset, timings and child training stubbed: only the report is exercised."""
    bench = load_script()
    data = SimpleNamespace(train=range(4000), val=range(1000), resolution=28)
    monkeypatch.setattr(bench, "load_dataset", lambda cfg, progress: data)
    monkeypatch.setattr(bench, "throughput", lambda model, data, batch, steps, seed: 100.0 + seed)
    result = dict(status="ok", top1=0.5, train_seconds=1.0, eval_seconds=0.1, images_per_second=900.0,
                  data_wait_fraction=0.01)
    monkeypatch.setattr(bench, "train_child", lambda arch, data, cfg, seed, device: SimpleNamespace(
        **result, to_dict=lambda: dict(result)))
    return bench


def test_json_holds_the_figures_with_rounds_and_steps_and_is_the_last_line(monkeypatch, capsys):
    """bench_trainer took no --json (every other bench script does) and its JSON lacked rounds and steps. The JSON
    line is still printed without --json (scripts read its keys); with it, it is the same one last line."""
    bench = stubbed(monkeypatch)
    monkeypatch.setattr(bench.torch, "set_num_threads", lambda n: None)  # the test session's threads stay as set
    for flags in ([], ["--json"]):
        assert bench.main(["--rounds", "3", "--steps", "2", *flags]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        report = json.loads(lines[-1])
        assert not any(line.startswith("{") for line in lines[:-1])
        assert {"threads": 1, "batch": 64, "resolution": 32, "rounds": 3, "steps": 2}.items() <= report.items()
        assert [(p["ours"], p["torchvision"]) for p in report["pairs"]] == list(bench.PAIRS)
        for pair in report["pairs"]:
            assert pair["ours_ips"] == pair["torchvision_ips"] == 101.0 and pair["ratio"] == 1.0
        assert [c["arch"] for c in report["children"]] == ["mobilenet_v2", "mnasnet_b1"]
        assert report["children"][0]["data_wait_fraction"] == 0.01
