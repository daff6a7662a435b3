"""REINFORCE (Williams 1992) as in NASNet/ENAS: advantage = reward - moving-average baseline, entropy bonus."""

from __future__ import annotations

import torch

from controllers.lstm import LSTMController
from controllers.registry import register_controller


@register_controller("lstm_reinforce")
class ReinforceController(LSTMController):
    """One gradient step per batch on  -mean((R - b) * log p(tokens)) - entropy_weight * mean(H)."""

    def _train(self, tokens: torch.Tensor, rewards: torch.Tensor) -> dict[str, float]:
        advantage = rewards - self._advance_baseline(rewards)
        log_prob, entropy = self.policy.evaluate(tokens)
        loss = -(advantage * log_prob).mean() - self.entropy_weight * entropy.mean()
        grad_norm = self._step(loss)
        return {"loss": float(loss.detach()), "entropy": float(entropy.detach().mean()), "advantage_mean": float(advantage.mean()),
                "grad_norm": grad_norm}
