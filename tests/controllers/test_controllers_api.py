"""Controller API: registry, configs, sampling contract (log p really is log p), refusal of bad input."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import controllers
from controllers import Sample, build, list_controllers, register_controller
from controllers.base import Controller, PolicyDiverged

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NAMES = ["evolution", "lstm_ppo", "lstm_reinforce", "random"]
SMALL = [3, 2, 4]


def test_registry_lists_all_and_refuses_duplicates_and_unknown_names():
    assert list_controllers() == NAMES
    with pytest.raises(ValueError, match="already registered"):
        register_controller("lstm_ppo")(type("Other", (controllers.RandomController,), {}))
    assert list_controllers() == NAMES
    with pytest.raises(ValueError, match="unknown controller 'lstm'.*lstm_ppo"):
        build("lstm", SMALL)


@pytest.mark.parametrize("name", NAMES)
def test_hydra_config_instantiates_with_the_search_loop_call(name):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name=None, overrides=[f"+controller={name}"])
    ctl = instantiate(cfg.controller, num_choices=[4, 2, 3], seed=7)
    assert isinstance(ctl, Controller) and ctl.name == name and ctl.num_choices == (4, 2, 3)
    # Every hyper-parameter a controller accepts is spelled out in its config (the config is the documentation).
    assert set(cfg.controller) - {"_target_", "name"} == set(controllers.hyperparameters(name))


@pytest.mark.parametrize("name", NAMES)
def test_sample_contract(name):
    ctl = build(name, SMALL, seed=1)
    sample = ctl.sample(5)
    assert isinstance(sample, Sample) and len(sample) == 5
    assert len(sample.log_probs) == len(sample.entropies) == 5
    for seq, lp, ent in zip(sample.tokens, sample.log_probs, sample.entropies):
        assert len(seq) == 3 and all(isinstance(x, int) and 0 <= x < k for x, k in zip(seq, SMALL))
        assert lp <= 0 and ent >= 0 and math.isfinite(lp)
    assert Sample.from_dict(sample.to_dict()) == sample
    stats = ctl.update(sample.tokens, [0.1, 0.2, 0.3, 0.4, 0.5])
    assert all(isinstance(v, float) for v in stats.values())
    if name.startswith("lstm"):
        assert {"loss", "entropy", "baseline"} <= set(stats)
    if name == "lstm_ppo":
        assert {"kl", "epochs_run"} <= set(stats) and stats["epochs_run"] == 4.0
    if name == "random":
        assert stats == {}


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_samples_and_external_generator_leaves_own_rng_alone(name):
    a, b = build(name, SMALL, seed=3), build(name, SMALL, seed=3)
    assert a.sample(8).tokens == b.sample(8).tokens
    external = a.sample(8, generator=torch.Generator().manual_seed(99)).tokens
    assert external == b.sample(8, generator=torch.Generator().manual_seed(99)).tokens
    assert a.sample(8).tokens == b.sample(8).tokens  # own RNG untouched by the external draws
    assert build(name, SMALL, seed=4).sample(16).tokens != build(name, SMALL, seed=3).sample(16).tokens


def _all_sequences(num_choices):
    return [list(s) for s in itertools.product(*(range(k) for k in num_choices))]


@pytest.mark.parametrize("name", ["lstm_ppo", "lstm_reinforce"])
def test_lstm_log_prob_is_a_normalised_log_probability_matching_the_sampler(name):
    ctl = build(name, SMALL, seed=0, hidden_size=16, temperature=0.5, tanh_constant=2.5, init_range=1.0)
    everything = _all_sequences(SMALL)
    probs = [math.exp(lp) for lp in ctl.log_prob(everything)]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    sample = ctl.sample(20000)
    assert ctl.log_prob(sample.tokens[:50]) == pytest.approx(sample.log_probs[:50], abs=1e-4)
    counts = Counter(map(tuple, sample.tokens))
    for seq, p in zip(everything, probs):  # empirical frequencies follow exp(log p); 5 sigma
        assert abs(counts[tuple(seq)] / 20000 - p) < 5 * math.sqrt(p * (1 - p) / 20000) + 1e-3
    # The reported entropy along a path: decision-wise, so for the first decision it is exact.
    assert min(sample.entropies) > 0


def test_lstm_policy_differs_from_uniform_after_strong_init():
    ctl = build("lstm_ppo", SMALL, seed=0, init_range=1.0)
    lps = ctl.log_prob(_all_sequences(SMALL))
    assert max(lps) - min(lps) > 0.1


def test_random_log_prob_and_frequencies_are_uniform():
    ctl = build("random", SMALL, seed=0)
    sample = ctl.sample(12000)
    assert sample.log_probs[0] == pytest.approx(-math.log(24)) and sample.entropies[0] == pytest.approx(math.log(24))
    counts = Counter(map(tuple, sample.tokens))
    assert len(counts) == 24 and all(abs(c - 500) < 5 * math.sqrt(500) for c in counts.values())


def test_evolution_is_random_until_the_population_fills_then_mutates_one_token_of_the_fittest():
    ctl = build("evolution", [5] * 6, seed=0, population_size=4, tournament_size=4)
    first = ctl.sample(4)
    assert first.log_probs[0] == pytest.approx(-6 * math.log(5))
    ctl.update(first.tokens[:3], [0.1, 0.2, 0.3])
    assert ctl.sample(2).log_probs[0] == pytest.approx(-6 * math.log(5))  # 3 < 4: still random
    ctl.update([first.tokens[3]], [0.9])
    children = ctl.sample(50)
    for child, lp in zip(children.tokens, children.log_probs):  # tournament of all 4 -> always the 0.9 one
        assert sum(a != b for a, b in zip(child, first.tokens[3])) == 1
        assert lp == pytest.approx(-math.log(6) - math.log(4))
    assert children.entropies[0] == pytest.approx(math.log(6) + math.log(4))
    ctl.update(children.tokens[:2], [0.5, 0.6])  # aging: the two oldest die, not the two worst
    assert [r for _, r in ctl.population] == [0.3, 0.9, 0.5, 0.6]


def test_evolution_with_single_choice_decisions_never_mutates_them():
    ctl = build("evolution", [1, 3, 1], seed=0, population_size=2, tournament_size=1)
    ctl.update(ctl.sample(2).tokens, [0.0, 1.0])
    assert all(t[0] == 0 and t[2] == 0 for t in ctl.sample(20).tokens)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_choices": []}, "num_choices must not be empty"),
        ({"num_choices": [3, 0]}, r"num_choices\[1\] must be >= 1"),
        ({"num_choices": "abc"}, "num_choices must be a list"),
        ({"num_choices": [2.5]}, r"num_choices\[0\] must be an int"),
        ({"num_choices": [2], "lr": -1.0, "name": "lstm_ppo"}, r"lr must be a number in \(0, 1\]"),
        ({"num_choices": [2], "lr": 1e38, "name": "lstm_reinforce"}, r"lr must be a number in \(0, 1\]"),
        ({"num_choices": [2], "clip_epsilon": 1.5, "name": "lstm_ppo"}, "clip_epsilon must be in"),
        ({"num_choices": [2], "epochs": 0, "name": "lstm_ppo"}, "epochs must be an int >= 1"),
        ({"num_choices": [2], "temperature": 0, "name": "lstm_reinforce"}, "temperature must be"),
        ({"num_choices": [2], "baseline_decay": 1.0, "name": "lstm_reinforce"}, "baseline_decay must be"),
        ({"num_choices": [2], "hidden_size": 0, "name": "lstm_reinforce"}, "hidden_size must be"),
        ({"num_choices": [2], "tournament_size": 100, "name": "evolution"}, "tournament_size must be"),
        ({"num_choices": [2], "clip_epsilon": 0.2, "name": "lstm_reinforce"}, "unknown hyper-parameter.*clip_eps"),
        ({"num_choices": [2], "hiden_size": 9, "name": "lstm_ppo"}, r"hiden_size \(did you mean hidden_size\?\)"),
        ({"num_choices": [2], "seed": "x", "name": "random"}, "seed must be an int"),
        # True is an int to Python: every int hyper-parameter refuses it by name
        ({"num_choices": [2], "hidden_size": True, "name": "lstm_reinforce"}, "hidden_size must be an int >= 1"),
        ({"num_choices": [2], "hidden_size": True, "name": "lstm_ppo"}, "hidden_size must be an int >= 1"),
        ({"num_choices": [2], "minibatch_size": True, "name": "lstm_ppo"}, "minibatch_size must be null or an int"),
        ({"num_choices": [2], "epochs": True, "name": "lstm_ppo"}, "epochs must be an int >= 1"),
        ({"num_choices": [2], "population_size": True, "name": "evolution"}, "population_size must be"),
        ({"num_choices": [2], "tournament_size": True, "name": "evolution"}, "tournament_size must be"),
        ({"num_choices": [2], "seed": True, "name": "random"}, "seed must be an int"),
        # torch's generator overflowed on a seed >= 2**64 with a message naming no field
        ({"num_choices": [2], "seed": 2**64, "name": "lstm_ppo"}, r"seed must be an integer in \[0, 2\*\*64\)"),
        ({"num_choices": [2], "seed": -1, "name": "random"}, r"seed must be an integer in \[0, 2\*\*64\)"),
        # accepted, then a torch.multinomial traceback at the first sample: float32 overflows to inf logits
        ({"num_choices": [2, 3], "init_range": 1e38, "name": "lstm_ppo"}, "init_range 1e.38 .* not finite"),
        ({"num_choices": [2, 3], "temperature": 1e-45, "name": "lstm_reinforce"},
         "temperature 1e-45 give the policy logits that are not finite"),
    ],
)
def test_bad_configuration_is_refused_with_the_field_named(kwargs, match):
    kwargs = dict(kwargs)
    name = kwargs.pop("name", "random")
    with pytest.raises(ValueError, match=match):
        build(name, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_bad_sample_and_update_input_is_refused(name):
    ctl = build(name, SMALL, seed=0)
    good = ctl.sample(2).tokens
    with pytest.raises(ValueError, match="n .* must be an int >= 1"):
        ctl.sample(0)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        ctl.sample(2, generator=42)
    with pytest.raises(ValueError, match="2 token sequences but 1 rewards"):
        ctl.update(good, [1.0])
    with pytest.raises(ValueError, match=r"tokens\[1\] has 2 decisions, the controller has 3"):
        ctl.update([good[0], good[1][:2]], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"tokens\[0\]\[2\] = 4 is out of range 0..3"):
        ctl.update([[0, 0, 4]], [1.0])
    with pytest.raises(ValueError, match=r"rewards\[1\] must be finite"):
        ctl.update(good, [1.0, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        ctl.update([], [])


@settings(max_examples=25, deadline=None)
@given(
    num_choices=st.lists(st.integers(1, 5), min_size=1, max_size=8),
    name=st.sampled_from(NAMES),
    n=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_space_samples_in_range_and_updates(num_choices, name, n, seed):
    extra = {"hidden_size": 8} if name.startswith("lstm") else {}
    if name == "evolution":
        extra = {"population_size": 2, "tournament_size": 2}
    ctl = build(name, num_choices, seed=seed, **extra)
    for _ in range(3):  # evolution: random, then mutations
        sample = ctl.sample(n)
        assert all(len(t) == len(num_choices) and all(0 <= x < k for x, k in zip(t, num_choices))
                   for t in sample.tokens)
        if name.startswith("lstm"):
            assert ctl.log_prob(sample.tokens) == pytest.approx(sample.log_probs, abs=1e-4)
        ctl.update(sample.tokens, [float(sum(t)) for t in sample.tokens])


@pytest.mark.parametrize("name", ["lstm_reinforce", "lstm_ppo"])
def test_a_diverged_policy_is_named_not_a_multinomial_traceback(name):
    ctl = build(name, SMALL, seed=0)
    with torch.no_grad():
        ctl.policy.head_bias.fill_(float("nan"))  # what an update that blew up leaves behind
    with pytest.raises(PolicyDiverged, match="controller policy diverged: the logits of decision 0 are not finite"):
        ctl.sample(2)
