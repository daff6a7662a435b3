"""Rewards: hand-computed values of the MnasNet formula, presets from the configs, refusal of bad input."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from rewards import AccuracyReward, MacsReward, MnasNetReward, RewardOverflow, pareto_reward

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def load(name):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return instantiate(compose(config_name=None, overrides=[f"+reward={name}"]).reward)


def test_soft_preset_matches_hand_computed_values():
    soft = load("soft")
    assert isinstance(soft, MnasNetReward) and soft.target == 75.0
    assert (soft.alpha, soft.beta) == (-0.07, -0.07)
    assert soft(accuracy=0.75, latency_ms=75.0) == pytest.approx(0.75)
    # 2x slower: 0.75 * 2^-0.07 = 0.714478...; 2x faster: 0.75 * 0.5^-0.07 = 0.787288...
    assert soft(accuracy=0.75, latency_ms=150.0) == pytest.approx(0.75 * math.exp(-0.07 * math.log(2)))
    assert soft(accuracy=0.75, latency_ms=150.0) == pytest.approx(0.7144785, abs=1e-6)
    assert soft(accuracy=0.75, latency_ms=37.5) == pytest.approx(0.7872875, abs=1e-6)
    assert soft.uses_latency and not soft.uses_macs


def test_hard_preset_is_flat_below_target_and_divides_above():
    hard = load("hard")
    assert (hard.alpha, hard.beta, hard.target) == (0.0, -1.0, 75.0)
    assert hard(accuracy=0.8, latency_ms=10.0) == pytest.approx(0.8)
    assert hard(accuracy=0.8, latency_ms=75.0) == pytest.approx(0.8)
    assert hard(accuracy=0.8, latency_ms=150.0) == pytest.approx(0.4)


def test_accuracy_and_macs_presets():
    acc = load("accuracy")
    assert acc.target is None and not acc.uses_latency and not acc.uses_macs
    assert acc(accuracy=0.6, latency_ms=1e9, macs=1e12) == 0.6
    assert acc(accuracy=0.6) == 0.6
    macs = load("macs")
    assert isinstance(macs, MacsReward) and macs.target == 300e6 and macs.uses_macs and not macs.uses_latency
    assert macs(accuracy=0.7, macs=600e6) == pytest.approx(0.7 * 2 ** -0.07)
    assert macs(accuracy=0.7, macs=600e6, latency_ms=1.0) == macs(accuracy=0.7, macs=600e6)


@pytest.mark.parametrize("name", ["soft", "hard", "accuracy", "macs"])
def test_failed_child_gets_the_configured_reward_and_describe_is_plain_data(name):
    reward = load(name)
    assert reward(accuracy=None) == 0.0
    assert reward(accuracy=None, latency_ms=None, macs=None) == 0.0
    info = reward.describe()
    assert info["name"] == name and info["reward_for_invalid"] == 0.0
    assert pickle.loads(pickle.dumps(info)) == info
    assert pickle.loads(pickle.dumps(reward)).describe() == info


def test_reward_for_invalid_is_configurable():
    assert MnasNetReward(reward_for_invalid=-1.0)(accuracy=None) == -1.0
    assert AccuracyReward(reward_for_invalid=-0.5)(accuracy=None, latency_ms=3.0) == -0.5


def test_numpy_scalars_are_accepted():
    soft = MnasNetReward()
    assert soft(accuracy=np.float32(0.5), latency_ms=np.float64(75.0)) == pytest.approx(0.5)


def test_pareto_reward_pure_function():
    assert pareto_reward(0.5, 100.0, 50.0, 0.0, -1.0) == pytest.approx(0.25)
    assert pareto_reward(0.5, 25.0, 50.0, -0.5, -1.0) == pytest.approx(0.5 * math.sqrt(2))


def test_a_reward_the_controller_cannot_take_is_refused_naming_the_setting():
    """alpha -50 with a target far above the costs raised OverflowError (a traceback); -20 gave 1e182, and the
    controller's sampling died later on a NaN probability."""
    with pytest.raises(RewardOverflow, match=r"\(latency_ms 0.5 / target_ms 1e\+09\) \*\* alpha -50 = inf, beyond "
                                             r"1e\+06: .* set target_ms near the costs searched, or alpha nearer 0$"):
        MnasNetReward(target_ms=1e9, alpha=-50)(accuracy=0.5, latency_ms=0.5)
    # a factor below 1 never overflows, and one up to 1e6 is a reward: the search goes on
    assert MacsReward(beta=-2)(accuracy=0.5, macs=3e14) == pytest.approx(0.5e-12)
    assert MnasNetReward(target_ms=75, alpha=-1)(accuracy=0.5, latency_ms=75e-6) == pytest.approx(0.5e6)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: MnasNetReward(target_ms=0), "target_ms must be > 0"),
        (lambda: MnasNetReward(target_ms=-75), "target_ms must be > 0"),
        (lambda: MnasNetReward(target_ms=float("inf")), "target_ms must be a finite number"),
        (lambda: MnasNetReward(alpha=0.07), "alpha must be <= 0"),
        (lambda: MnasNetReward(beta=1.0), "beta must be <= 0"),
        (lambda: MnasNetReward(alpha=float("nan")), "alpha must be a finite number"),
        (lambda: MnasNetReward(reward_for_invalid="zero"), "reward_for_invalid must be a finite number"),
        (lambda: MacsReward(target_macs=0), "target_macs must be > 0"),
        (lambda: AccuracyReward(reward_for_invalid=float("nan")), "reward_for_invalid must be a finite"),
    ],
)
def test_bad_config_is_refused_with_the_field_named(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"accuracy": 1.5, "latency_ms": 70.0}, r"accuracy must be a fraction in \[0, 1\]"),
        ({"accuracy": -0.1, "latency_ms": 70.0}, r"accuracy must be a fraction in \[0, 1\]"),
        ({"accuracy": float("nan"), "latency_ms": 70.0}, "accuracy must be a finite number"),
        ({"accuracy": 0.5, "latency_ms": float("inf")}, "latency_ms must be a finite number"),
        ({"accuracy": 0.5, "latency_ms": 0.0}, "latency_ms must be > 0"),
        ({"accuracy": 0.5}, "latency_ms is required by the 'soft' reward"),
        ({"accuracy": 0.5, "latency_ms": "fast"}, "latency_ms must be a finite number"),
    ],
)
def test_bad_measurements_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MnasNetReward()(**kwargs)


def test_macs_reward_needs_macs_and_accuracy_reward_checks_accuracy():
    with pytest.raises(ValueError, match="macs is required"):
        MacsReward()(accuracy=0.5, latency_ms=10.0)
    with pytest.raises(ValueError, match="accuracy must be a fraction"):
        AccuracyReward()(accuracy=2.0)


def test_reward_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        MnasNetReward()(0.5, 70.0)
