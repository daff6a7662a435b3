"""``python -m search_spaces`` as users run it (a real subprocess for exit codes, in-process for the rest)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from search_spaces import SearchSpace
from search_spaces.__main__ import main
from tests.conftest import ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search_spaces", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_info_json_for_a_reference(capsys):
    assert main(["info", "mnasnet_b1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 4_383_312 and info["macs"] == 314_415_872
    assert info["arch"].startswith("ds_r1_k3_s1_c16-")  # the paper's noskip: inert where 32 channels become 16
    assert [b["out_resolution"] for b in info["blocks"]] == [112, 56, 28, 14, 14, 7, 7]
    assert sum(b["params"] for b in info["blocks"]) < info["params"]


def test_info_table_for_a_string(capsys):
    arch = "ds_r1_k3_s1_c16-ir_r2_k5_s2_e3_c24_se0.25"
    assert main(["info", arch, "--resolution", "32", "--classes", "10", "--channels", "1"]) == 0
    out = capsys.readouterr().out
    assert arch in out and "1x32x32, 10 classes" in out
    assert "ir_r2_k5_s2_e3_c24_se0.25" in out.splitlines()[-1]


def test_sample_is_seeded_and_in_the_space():
    first, second = run_cli("sample", "--n", "5", "--seed", "3"), run_cli("sample", "--n", "5", "--seed", "3")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.split()
    assert lines == second.stdout.split() and len(lines) == 5
    assert lines == SearchSpace.default().sample(5, seed=3)


def test_space_describes_size(capsys):
    assert main(["space", "--space", "tiny"]) == 0
    assert "7 blocks, 42 decisions" in capsys.readouterr().out


def test_bad_input_prints_one_line_and_exits_2():
    result = run_cli("info", "ir_r1_k3_s1_c16_zz")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown token 'zz'" in result.stderr and "stage 1" in result.stderr
    result = run_cli("sample", "--space", "does_not_exist")
    assert result.returncode == 2 and "does_not_exist" in result.stderr


def test_an_infinite_width_and_a_negative_seed_are_one_line_naming_the_flag(capsys):
    assert main(["info", "mnasnet_a1", "--width", "inf"]) == 2  # was an OverflowError traceback
    assert main(["sample", "--seed", "-1"]) == 2  # was numpy's message, naming no flag
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: --width must be") and err[1] == "error: --seed must be >= 0, got -1"


@pytest.mark.parametrize("flag, value", [("--resolution", "0"), ("--classes", "-1"), ("--channels", "0")])
def test_an_input_size_that_is_not_positive_is_one_line_naming_the_flag_and_value(capsys, flag, value):
    assert main(["info", "mnasnet_a1", flag, value]) == 2  # was one message naming all three flags
    assert capsys.readouterr().err == f"error: {flag} must be a positive integer, got {value}\n"


def test_a_misspelt_reference_is_one_line_listing_the_known_ones(capsys):
    assert main(["info", "mnasnet_a2"]) == 2  # was "stage 1 ('mnasnet_a2'): unknown block type 'mnasnet'"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: unknown architecture 'mnasnet_a2': not a reference name" in err
    assert "mnasnet_a1, mnasnet_b1, mobilenet_v2" in err


@pytest.mark.parametrize("width", [0.5, 1.0, 1.3, 2.0])
def test_info_prints_the_channels_the_width_multiplier_builds(capsys, width):
    # the table printed the architecture's channels whatever --width was (c16 at 0.5 builds 8)
    import torch

    from search_spaces import build_model

    arch = "ds_r1_k3_s1_c16-ir_r2_k5_s2_e3_c24_se0.25-cn_r1_k3_s1_c12_noskip"
    assert main(["info", arch, "--width", str(width), "--resolution", "16", "--classes", "10", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = build_model(arch, num_classes=10, width_mult=width).eval()
    x, built = model.stem(torch.zeros(1, 3, 16, 16)), []
    with torch.no_grad():
        for stage in model.blocks:
            x = stage(x)
            built.append(x.shape[1])
    assert [b["out_channels"] for b in info["blocks"]] == built
    assert main(["info", arch, "--width", str(width), "--resolution", "16", "--classes", "10"]) == 0
    rows = capsys.readouterr().out.splitlines()[-3:]
    assert [row.split()[2].split("x")[0] for row in rows] == [str(c) for c in built]
