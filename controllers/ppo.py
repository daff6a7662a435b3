"""PPO (Schulman et al. 2017), MnasNet's choice for its controller: a clipped surrogate optimised for several
epochs over each batch, so one expensive batch of evaluated children teaches the policy more than once.

Each sequence is one action (its log-probability is the sum over decisions). Advantages are reward minus the
moving-average baseline ``b`` (``baseline_decay``); with ``normalize_advantages`` (the default) they are then
centred on the batch mean and divided by the batch std. Subtracting the batch mean removes any constant, ``b``
included, so the baseline only shapes the update with ``normalize_advantages=false`` (or in a batch of one child,
which is not normalised); it is logged as ``controller/baseline`` either way. Kept as it is: the published
benchmark figures were made with it. An optional approximate-KL early stop ends the epochs when the policy has
moved too far from the one that sampled the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mnas_common.checks import is_int, is_number

from controllers.base import check_param
from controllers.lstm import LSTMController
from controllers.registry import register_controller


@register_controller("lstm_ppo")
class PPOController(LSTMController):
    def __init__(
        self,
        num_choices: Sequence[int],
        *,
        clip_epsilon: float = 0.2,
        epochs: int = 4,
        minibatch_size: int | None = None,
        normalize_advantages: bool = True,
        target_kl: float | None = None,
        lr: float = 0.002,
        **lstm_kwargs,
    ) -> None:
        """``lstm_kwargs``: the policy/optimizer hyper-parameters of ``LSTMController`` (seed, hidden_size, ...)."""
        super().__init__(num_choices, lr=lr, **lstm_kwargs)
        check_param("clip_epsilon", clip_epsilon, is_number(clip_epsilon) and 0 < clip_epsilon < 1, "in (0, 1)")
        # is_int refuses bools: True is an int to Python, and minibatch_size=True would mean minibatches of one
        check_param("epochs", epochs, is_int(epochs) and epochs >= 1, "an int >= 1")
        check_param("minibatch_size", minibatch_size, minibatch_size is None
                    or is_int(minibatch_size) and minibatch_size >= 1, "null or an int >= 1")
        check_param("normalize_advantages", normalize_advantages, isinstance(normalize_advantages, bool),
                    "true or false")
        check_param("target_kl", target_kl, target_kl is None or is_number(target_kl) and target_kl > 0,
                    "null or a number > 0")
        self.clip_epsilon = float(clip_epsilon)
        self.epochs = int(epochs)
        self.minibatch_size = None if minibatch_size is None else int(minibatch_size)
        self.normalize_advantages = normalize_advantages
        self.target_kl = None if target_kl is None else float(target_kl)

    def _train(self, tokens: torch.Tensor, rewards: torch.Tensor) -> dict[str, float]:
        n = len(rewards)
        advantage = rewards - self._advance_baseline(rewards)
        if self.normalize_advantages and n > 1:
            # in float64: in float32 the mean of equal advantages can be one rounding step off, and that step over
            # a std of ~1e-8 became a full-size advantage of either sign (a batch of failed children, reward 0,
            # pushed the policy towards them about half the time)
            a = advantage.double()
            advantage = ((a - a.mean()) / (a.std(unbiased=False) + 1e-8)).to(advantage.dtype)
        with torch.no_grad():
            old_log_prob, _ = self.policy.evaluate(tokens)
        size = n if self.minibatch_size is None else min(self.minibatch_size, n)
        eps = self.clip_epsilon
        epochs_run, kl, losses, entropies, clipped = 0, 0.0, [], [], []
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=self.generator) if size < n else torch.arange(n)
            for start in range(0, n, size):
                idx = order[start:start + size]
                log_prob, entropy = self.policy.evaluate(tokens[idx])
                ratio = torch.exp(log_prob - old_log_prob[idx])
                adv = advantage[idx]
                surrogate = torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
                loss = -surrogate.mean() - self.entropy_weight * entropy.mean()
                self._step(loss)
                losses.append(float(loss.detach()))
                entropies.append(float(entropy.detach().mean()))
                clipped.append(float(((ratio - 1).abs() > eps).float().mean()))
            epochs_run += 1
            with torch.no_grad():
                kl = float((old_log_prob - self.policy.evaluate(tokens)[0]).mean())
            if self.target_kl is not None and kl > 1.5 * self.target_kl:
                break
        return {"loss": sum(losses) / len(losses), "entropy": sum(entropies) / len(entropies), "kl": kl,
                "clip_fraction": sum(clipped) / len(clipped), "epochs_run": float(epochs_run)}
