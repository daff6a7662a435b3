"""Cheap synthetic objectives for testing and benchmarking controllers with the real reward function.

Evaluating a real child takes minutes; these take microseconds, so a controller's sample efficiency can be
measured over thousands of samples and several seeds. Both map tokens to (accuracy, latency_ms) and score them
with ``rewards.MnasNetReward``, exactly as the search loop does with measured values:

- ``HiddenTarget``: accuracy is the fraction of decisions that match a hidden target sequence, latency a sum
  over a per-choice cost table. A policy must learn every decision; random search is hopeless.
- ``TradeOff``: every choice adds capacity and costs latency (correlated, so some choices are more efficient
  than others); accuracy saturates with capacity, T sits at the latency of an average random architecture.
  The best architecture buys as much capacity as fits under T -- a real accuracy/latency trade-off.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from controllers.base import check_num_choices
from rewards import MnasNetReward


class _Objective(ABC):
    def __init__(self, num_choices: Sequence[int], seed: int) -> None:
        self.num_choices = check_num_choices(num_choices)
        self._rng = torch.Generator().manual_seed(int(seed))
        # Per-decision, per-choice latency cost in ms (0.2 .. 2.0), plus a fixed 5 ms for stem and head.
        self.cost = [(0.2 + 1.8 * torch.rand(k, generator=self._rng, dtype=torch.float64)).tolist()
                     for k in self.num_choices]

    def latency_ms(self, tokens: Sequence[int]) -> float:
        return 5.0 + sum(self.cost[t][j] for t, j in enumerate(tokens))

    @abstractmethod
    def accuracy(self, tokens: Sequence[int]) -> float: ...

    def __call__(self, tokens: Sequence[int]) -> float:
        return self.reward(accuracy=self.accuracy(tokens), latency_ms=self.latency_ms(tokens))

    def mean_random_latency(self) -> float:
        return 5.0 + sum(sum(c) / len(c) for c in self.cost)


class HiddenTarget(_Objective):
    """Accuracy = fraction of tokens equal to a hidden target; soft reward with T = the target's latency."""

    def __init__(self, num_choices: Sequence[int], seed: int = 0) -> None:
        super().__init__(num_choices, seed)
        self.target = [int(torch.randint(k, (1,), generator=self._rng)) for k in self.num_choices]
        self.reward = MnasNetReward(target_ms=self.latency_ms(self.target), alpha=-0.07, beta=-0.07,
                                    name="soft")

    def accuracy(self, tokens: Sequence[int]) -> float:
        return sum(a == b for a, b in zip(tokens, self.target)) / len(self.target)


class TradeOff(_Objective):
    """Accuracy = 0.9 * (1 - exp(-capacity / C0)); hard reward (alpha 0, beta -1), T = mean random latency."""

    def __init__(self, num_choices: Sequence[int], seed: int = 0) -> None:
        super().__init__(num_choices, seed)
        self.gain = [[c * (0.5 + float(torch.rand(1, generator=self._rng, dtype=torch.float64))) for c in row]
                     for row in self.cost]
        self.scale = sum(sum(g) / len(g) for g in self.gain)  # mean capacity of a random architecture
        self.reward = MnasNetReward(target_ms=self.mean_random_latency(), alpha=0.0, beta=-1.0, name="hard")

    def accuracy(self, tokens: Sequence[int]) -> float:
        capacity = sum(self.gain[t][j] for t, j in enumerate(tokens))
        return 0.9 * (1.0 - math.exp(-capacity / self.scale))


OBJECTIVES = {"hidden_target": HiddenTarget, "trade_off": TradeOff}
