"""load_state_dict: a refused state changes nothing, the configured lr wins, a misfit names its parameter."""

from __future__ import annotations

import pytest
import torch

from controllers import build

CHOICES = [4, 2, 2, 3, 2, 3]
SETTINGS = {
    "lstm_ppo": {"hidden_size": 16, "lr": 0.01},
    "lstm_reinforce": {"hidden_size": 16, "lr": 0.01},
    "evolution": {"population_size": 4, "tournament_size": 2},
    "random": {},
}


def run(ctl, steps, batch=5):
    trace = []
    for _ in range(steps):
        sample = ctl.sample(batch)
        stats = ctl.update(sample.tokens, [sum(sample.tokens[i]) / 10 for i in range(batch)])
        trace.append((sample.tokens, sample.log_probs, stats))
    return trace


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def other_state(name, **changes):
    """A valid state from another run of the same controller (another RNG, weights, moments), then ``changes``."""
    donor = build(name, CHOICES, seed=77, **SETTINGS[name])
    run(donor, 2)
    return {**donor.state_dict(), **changes}


def lstm_policy_of_size(hidden_size):
    return build("lstm_ppo", CHOICES, hidden_size=hidden_size).state_dict()["policy"]


def lstm_optimizer_of_size(hidden_size):
    donor = build("lstm_ppo", CHOICES, hidden_size=hidden_size)
    run(donor, 1)  # Adam has moments only after a step
    return donor.state_dict()["optimizer"]


REFUSED = [
    ("lstm_ppo", lambda: other_state("lstm_ppo", policy=lstm_policy_of_size(8)), "policy does not fit"),
    ("lstm_reinforce", lambda: other_state("lstm_reinforce", policy=lstm_policy_of_size(8)), "policy does not fit"),
    ("lstm_ppo", lambda: other_state("lstm_ppo", optimizer={"state": {}, "param_groups": []}),
     "optimizer does not fit"),
    # Adam itself would take moments of another shape and fail only at the first step
    ("lstm_reinforce", lambda: other_state("lstm_reinforce", optimizer=lstm_optimizer_of_size(8)),
     "optimizer does not fit"),
    ("lstm_ppo", lambda: other_state("lstm_ppo", baseline="high"), "baseline"),
    ("lstm_reinforce", lambda: other_state("lstm_reinforce", updates=-1), "updates"),
    ("evolution", lambda: {k: v for k, v in other_state("evolution").items() if k != "population"},
     "missing 'population'"),
    ("evolution", lambda: other_state("evolution", population=[([0, 0, 0, 0, 0, 9], 1.0)]), "out of range"),
    ("random", lambda: other_state("random", seed="x"), "seed"),
    ("random", lambda: other_state("random", rng=torch.zeros(3, dtype=torch.uint8)), "rng"),
]


@pytest.mark.parametrize("name, make_state, match", REFUSED, ids=[f"{n}-{m}" for n, _, m in REFUSED])
def test_a_refused_load_leaves_the_controller_exactly_as_it_was(name, make_state, match):
    """The RNG used to be replaced before the policy, optimizer or population were checked: a refused load left
    a half-loaded controller (another controller's generator with this one's weights)."""
    ctl = build(name, CHOICES, seed=3, **SETTINGS[name])
    twin = build(name, CHOICES, seed=3, **SETTINGS[name])
    run(ctl, 2), run(twin, 2)
    before = ctl.state_dict()
    with pytest.raises(ValueError, match=match):
        ctl.load_state_dict(make_state())
    assert same(ctl.state_dict(), before)
    assert same(ctl.generator.get_state(), twin.generator.get_state())
    assert run(ctl, 2) == run(twin, 2)


@pytest.mark.parametrize("name", ["lstm_ppo", "lstm_reinforce"])
def test_the_configured_lr_wins_over_the_saved_one(name):
    """Adam keeps lr in its state: a controller configured with lr=0.05 trained at the saved run's 0.002."""
    saved = build(name, CHOICES, seed=1, hidden_size=16, lr=0.002)
    run(saved, 2)
    state = saved.state_dict()
    ctl = build(name, CHOICES, seed=1, hidden_size=16, lr=0.05)
    ctl.load_state_dict(state)
    assert [g["lr"] for g in ctl.optimizer.param_groups] == [0.05]
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.002  # the state itself is left alone
    # and it trains as a controller that had lr=0.05 all along with the same weights, moments and RNG
    reference = build(name, CHOICES, seed=1, hidden_size=16, lr=0.05)
    reference.load_state_dict(state)
    for group in reference.optimizer.param_groups:
        group["lr"] = 0.05
    assert run(ctl, 2) == run(reference, 2)


def test_a_policy_that_does_not_fit_is_named_with_its_shapes():
    """The message kept only torch's header line ("Error(s) in loading state_dict for LSTMPolicy:")."""
    ctl = build("lstm_ppo", CHOICES, hidden_size=16)
    with pytest.raises(ValueError) as info:
        ctl.load_state_dict(build("lstm_ppo", CHOICES, hidden_size=8).state_dict())
    assert str(info.value) == ("state policy does not fit this controller: head_weight shape [6, 4, 8] in the state "
                               "vs [6, 4, 16] here (hidden_size?)")


def test_adam_moments_that_do_not_fit_are_named_with_their_shapes():
    ctl = build("lstm_ppo", CHOICES, hidden_size=16)
    state = dict(ctl.state_dict(), optimizer=lstm_optimizer_of_size(8))
    with pytest.raises(ValueError, match=r"^state optimizer does not fit this controller: exp_avg of head_weight "
                                         r"shape \[6, 4, 8\] in the state vs \[6, 4, 16\] here \(hidden_size\?\)$"):
        ctl.load_state_dict(state)
