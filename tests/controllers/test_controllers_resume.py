"""Resume: a controller restored from state_dict() continues exactly as the uninterrupted one (bit-for-bit)."""

from __future__ import annotations

import pickle

import pytest
import torch

from controllers import build

NAMES = ["evolution", "lstm_ppo", "lstm_reinforce", "random"]
CHOICES = [4, 2, 2, 3, 2, 3] * 3
# Small but not trivial settings: minibatches and a KL stop exercise the RNG inside PPO's update too.
SETTINGS = {
    "lstm_ppo": {"hidden_size": 24, "minibatch_size": 3, "target_kl": 0.5, "lr": 0.01},
    "lstm_reinforce": {"hidden_size": 24, "lr": 0.01},
    "evolution": {"population_size": 8, "tournament_size": 3},
    "random": {},
}


def reward(tokens):
    return sum(t == i % 3 for i, t in enumerate(tokens)) / len(tokens)


def run(ctl, steps, batch=7):
    """Sample/update ``steps`` times; everything observable, for exact comparison."""
    trace = []
    for _ in range(steps):
        sample = ctl.sample(batch)
        stats = ctl.update(sample.tokens, [reward(t) for t in sample.tokens])
        trace.append((sample.tokens, sample.log_probs, sample.entropies, stats))
    return trace


@pytest.mark.parametrize("via", ["torch.save", "pickle", "in-memory"])
@pytest.mark.parametrize("name", NAMES)
def test_resume_continues_bit_for_bit(name, via, tmp_path):
    uninterrupted = build(name, CHOICES, seed=5, **SETTINGS[name])
    reference = run(uninterrupted, 6)

    first = build(name, CHOICES, seed=5, **SETTINGS[name])
    head = run(first, 3)
    state = first.state_dict()
    if via == "torch.save":
        torch.save(state, tmp_path / "controller.pt")
        state = torch.load(tmp_path / "controller.pt", weights_only=True)  # plain data: safe loading works
    elif via == "pickle":
        state = pickle.loads(pickle.dumps(state))
    run(first, 2)  # the saved state must not alias the live object: training on must not change it
    resumed = build(name, CHOICES, seed=999, **SETTINGS[name])  # the seed comes from the state
    resumed.load_state_dict(state)
    tail = run(resumed, 3)
    assert head + tail == reference


def test_resume_restores_optimizer_moments_not_only_weights():
    a = build("lstm_reinforce", CHOICES, seed=1, hidden_size=16)
    run(a, 2)
    state = a.state_dict()
    b = build("lstm_reinforce", CHOICES, seed=1, hidden_size=16)
    b.load_state_dict(state)
    fresh_adam = dict(state, optimizer=build("lstm_reinforce", CHOICES, hidden_size=16).optimizer.state_dict())
    c = build("lstm_reinforce", CHOICES, seed=1, hidden_size=16)
    c.load_state_dict(fresh_adam)  # same weights and RNG, Adam moments lost: later steps must differ
    trace_b, trace_c = run(b, 3), run(c, 3)
    assert trace_b == run(a, 3)
    assert trace_b[0][0] == trace_c[0][0] and trace_b != trace_c


@pytest.mark.parametrize("name", NAMES)
def test_load_refuses_foreign_state(name):
    ctl = build(name, CHOICES, seed=0, **SETTINGS[name])
    other = "random" if name != "random" else "evolution"
    with pytest.raises(ValueError, match=f"state is from controller '{other}', this is '{name}'"):
        ctl.load_state_dict(build(other, CHOICES).state_dict())
    with pytest.raises(ValueError, match="num_choices"):
        ctl.load_state_dict(build(name, CHOICES[:-1], **SETTINGS[name]).state_dict())
    with pytest.raises(ValueError, match="missing"):
        ctl.load_state_dict({"name": name})
    with pytest.raises(ValueError, match="must be a dict"):
        ctl.load_state_dict([1, 2])


def test_load_refuses_a_policy_of_another_size():
    small = build("lstm_ppo", CHOICES, hidden_size=8)
    with pytest.raises(ValueError, match="hidden_size"):
        build("lstm_ppo", CHOICES, hidden_size=16).load_state_dict(small.state_dict())
