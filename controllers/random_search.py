"""Uniform random search: the baseline every NAS result must beat on the same budget (Lindauer & Hutter)."""

from __future__ import annotations

import math

import torch

from controllers.base import Controller, Sample
from controllers.registry import register_controller


def uniform_tokens(num_choices: tuple[int, ...], n: int, generator: torch.Generator) -> list[list[int]]:
    """``n`` sequences drawn uniformly, one decision at a time, from ``generator``."""
    columns = [torch.randint(k, (n,), generator=generator) for k in num_choices]
    return torch.stack(columns, dim=1).tolist()


@register_controller("random")
class RandomController(Controller):
    """Every decision uniform and independent: log p = -sum(log k), entropy = sum(log k). Learns nothing."""

    asynchronous = True

    def __init__(self, num_choices, *, seed: int = 0) -> None:
        super().__init__(num_choices, seed=seed)
        self._log_size = sum(math.log(k) for k in self.num_choices)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Sample:
        n = self._check_n(n)
        tokens = uniform_tokens(self.num_choices, n, self._rng(generator))
        return Sample(tokens=tokens, log_probs=[-self._log_size] * n, entropies=[self._log_size] * n)

    def update(self, tokens: list[list[int]], rewards: list[float]) -> dict[str, float]:
        self._check_batch(tokens, rewards)
        return {}

    def state_dict(self) -> dict:
        return self._base_state()

    def load_state_dict(self, state: dict) -> None:
        self._apply_base_state(self._check_base_state(state))
