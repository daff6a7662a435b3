"""What each LSTM update does to the policy: direction, baseline, PPO's KL stop, logit squashing."""

from __future__ import annotations

import math

import pytest

from controllers import build

CHOICES = [3, 2, 4, 2]
GOOD, BAD = [2, 1, 3, 0], [0, 0, 0, 1]


@pytest.mark.parametrize("name", ["lstm_ppo", "lstm_reinforce"])
def test_update_moves_probability_towards_the_rewarded_sequence(name):
    ctl = build(name, CHOICES, seed=0, hidden_size=16, lr=0.01)
    before = ctl.log_prob([GOOD, BAD])
    for _ in range(5):
        ctl.update([GOOD, BAD, GOOD, BAD], [1.0, 0.0, 1.0, 0.0])
    after = ctl.log_prob([GOOD, BAD])
    assert after[0] > before[0] + 0.1 and after[1] < before[1] - 0.1


@pytest.mark.parametrize("name", ["lstm_ppo", "lstm_reinforce"])
def test_equal_rewards_without_entropy_bonus_leave_the_policy_alone(name):
    ctl = build(name, CHOICES, seed=0, hidden_size=16, entropy_weight=0.0)
    ctl.update([GOOD, BAD], [0.5, 0.5])  # first batch: baseline = mean, advantages all zero
    before = ctl.log_prob([GOOD, BAD])
    ctl.update([GOOD, BAD], [0.5, 0.5])
    assert ctl.log_prob([GOOD, BAD]) == before


@pytest.mark.parametrize("n, baseline", [(6, 0.43), (8, 0.6), (5, 0.1)])
def test_ppo_leaves_the_policy_alone_when_a_batch_has_one_reward_whatever_the_baseline(n, baseline):
    """Equal advantages normalised in float32 left a rounding step over a std of ~1e-8: a full-size advantage of
    either sign, so a batch of failed children (reward 0) could make them more likely."""
    ctl = build("lstm_ppo", CHOICES, seed=0, hidden_size=16, entropy_weight=0.0)
    ctl.baseline = baseline
    tokens = ([GOOD, BAD] * n)[:n]
    before = ctl.log_prob([GOOD, BAD])
    ctl.update(tokens, [0.0] * n)
    assert all(abs(a - b) < 1e-6 for a, b in zip(ctl.log_prob([GOOD, BAD]), before))


def test_baseline_is_a_moving_average_of_batch_means():
    ctl = build("lstm_reinforce", CHOICES, seed=0, baseline_decay=0.9)
    assert ctl.update([GOOD, BAD], [0.2, 0.4])["baseline"] == pytest.approx(0.3)
    stats = ctl.update([GOOD, BAD], [1.0, 1.0])
    assert stats["baseline"] == pytest.approx(0.9 * 0.3 + 0.1 * 1.0)
    assert stats["advantage_mean"] == pytest.approx(0.7)  # against the baseline before this batch


def test_ppo_runs_all_epochs_unless_the_kl_stop_fires():
    kw = {"hidden_size": 16, "lr": 0.05, "epochs": 6}
    assert build("lstm_ppo", CHOICES, seed=0, **kw).update([GOOD, BAD], [1.0, 0.0])["epochs_run"] == 6.0
    stats = build("lstm_ppo", CHOICES, seed=0, target_kl=1e-6, **kw).update([GOOD, BAD], [1.0, 0.0])
    assert stats["epochs_run"] == 1.0 and stats["kl"] > 1.5e-6


def test_ppo_clipping_limits_how_far_one_batch_pushes_the_policy():
    kw = {"hidden_size": 16, "lr": 0.05, "epochs": 20, "seed": 0}
    tight = build("lstm_ppo", CHOICES, clip_epsilon=0.01, **kw)
    loose = build("lstm_ppo", CHOICES, clip_epsilon=0.9, **kw)
    before = tight.log_prob([GOOD])[0]
    for ctl in (tight, loose):
        ctl.update([GOOD, BAD], [1.0, 0.0])
    assert loose.log_prob([GOOD])[0] - before > 2 * (tight.log_prob([GOOD])[0] - before) > 0


def test_tanh_constant_bounds_how_far_from_uniform_the_policy_can_be():
    squashed = build("lstm_ppo", CHOICES, seed=0, init_range=3.0, tanh_constant=0.05)
    free = build("lstm_ppo", CHOICES, seed=0, init_range=3.0)
    uniform = -sum(math.log(k) for k in CHOICES)
    # each decision's logits lie in [-c, c]: log p >= -2c - log k per decision
    assert all(lp >= uniform - 2 * 0.05 * len(CHOICES) - 1e-5 for lp in squashed.sample(200).log_probs)
    assert min(free.sample(200).log_probs) < uniform - 1.0


@pytest.mark.parametrize("normalize", [True, False])
def test_ppo_baseline_shapes_the_update_only_without_advantage_normalisation(normalize):
    """What configs/controller/lstm_ppo.yaml says of baseline_decay: the batch mean subtracted by the normalisation
    cancels the baseline (up to float rounding), so only normalize_advantages=false feels it."""
    after = []
    for baseline in (0.0, 0.9):
        ctl = build("lstm_ppo", CHOICES, seed=0, hidden_size=16, lr=0.05, normalize_advantages=normalize)
        ctl.baseline = baseline
        ctl.update([GOOD, BAD, GOOD], [1.0, 0.0, 0.5])
        after.append(ctl.log_prob([GOOD, BAD]))
    moved = max(abs(a - b) for a, b in zip(*after))
    assert (moved < 1e-5) if normalize else (moved > 1e-2)
