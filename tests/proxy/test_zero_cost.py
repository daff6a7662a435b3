"""Training-free scores: the papers' definitions on networks small enough to check by hand, then real children."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mnas_common.sources import FASHION_MNIST_ROOT
from nas.data import load_dataset
from nas.zero_cost import compute_scores, naswot, synflow
from tests.conftest import needs_fmnist

SMALL = "ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16"
OTHER = "cn_r2_k5_s1_c24_se0.25-ir_r2_k3_s2_e6_c32"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = dict(name="zc", source="fashion_mnist", root=FASHION_MNIST_ROOT, resolution=16, images_per_class=20,
               val_per_class=5, seed=0)
    return load_dataset(cfg, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_synflow_of_a_two_layer_net_is_twice_its_output():
    # SynFlow is conserved layer by layer: with |W| and an all-ones input, each layer's sum |w * dR/dw| equals
    # R = 1' |W2| |W1| 1, so two bias-free layers give 2R.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    r = float(net[3].weight.detach().abs().sum(0) @ net[1].weight.detach().abs().sum(1))
    assert synflow(net, torch.randn(5, 1, 2, 2)) == pytest.approx(math.log(2 * r))


def test_naswot_by_hand():
    # codes of three inputs at one ReLU: (1,0), (0,1), (1,1); K[i,j] = positions where codes agree
    # K = [[2,0,1],[0,2,1],[1,1,2]], det K = 4
    x = torch.tensor([[1.0, -1.0], [-2.0, 3.0], [0.5, 0.5]])
    assert naswot(nn.Sequential(nn.ReLU()), x) == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="singular"):
        naswot(nn.Sequential(nn.ReLU()), torch.tensor([[1.0, -1.0], [2.0, -3.0]]))


@needs_fmnist
def test_scores_are_deterministic_for_a_seed_and_differ_between_architectures(data):
    a = compute_scores(SMALL, data, seed=0, batch_size=16)
    assert a["error"] is None and a["seconds"] > 0
    assert math.isfinite(a["synflow"]) and math.isfinite(a["naswot"])
    again = compute_scores(SMALL, data, seed=0, batch_size=16)
    assert (again["synflow"], again["naswot"]) == (a["synflow"], a["naswot"])
    other_seed = compute_scores(SMALL, data, seed=1, batch_size=16)
    assert other_seed["naswot"] != a["naswot"]
    b = compute_scores(OTHER, data, seed=0, batch_size=16)
    assert b["synflow"] != a["synflow"] and b["naswot"] != a["naswot"]
    only = compute_scores("mobilenet_v2", data, ("naswot",), seed=0, batch_size=16)
    assert set(only) == {"naswot", "seconds", "error"} and only["error"] is None


@needs_fmnist
def test_a_bad_child_is_none_with_a_reason_never_an_exception(data):
    bad = compute_scores("xx_r1_k3_s1_c8", data)
    assert bad["synflow"] is None and bad["naswot"] is None
    assert "invalid architecture" in bad["error"] and "xx" in bad["error"]
    one = compute_scores(SMALL, data, ("naswot", "synflow"), batch_size=1)  # NASWOT needs two images
    assert one["naswot"] is None and "at least 2" in one["error"] and one["synflow"] is not None


@needs_fmnist
def test_caller_mistakes_raise(data):
    with pytest.raises(ValueError, match="unknown training-free score"):
        compute_scores(SMALL, data, ("grad_norm",))
    with pytest.raises(ValueError, match="batch_size"):
        compute_scores(SMALL, data, batch_size=0)
