"""Regularized (aging) evolution, Real et al. 2019, in the batch API of the search loop.

``sample(n)`` proposes ``n`` children: uniformly random while the population is not yet full, afterwards each
child is a one-token mutation of the winner of a tournament (``tournament_size`` members drawn without
replacement from the population). ``update`` appends the evaluated children to the population and removes the
oldest members beyond ``population_size`` -- age, not fitness, decides who dies, which is what regularizes.

``log_probs`` of a mutated child is the log-probability of the mutation given its parent,
-log(M) - log(k_t - 1) where M is the number of decisions with more than one choice and t the mutated decision
(the tournament draw is not included); random children report the uniform log p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from controllers.base import Controller, Sample, check_param
from controllers.random_search import uniform_tokens
from controllers.registry import register_controller


@register_controller("evolution")
class EvolutionController(Controller):
    asynchronous = True  # Real et al. 2019 run aging evolution asynchronously: each child joins when it returns

    def __init__(
        self,
        num_choices: Sequence[int],
        *,
        seed: int = 0,
        population_size: int = 64,
        tournament_size: int = 16,
    ) -> None:
        super().__init__(num_choices, seed=seed)
        check_param("population_size", population_size, isinstance(population_size, int)
                    and not isinstance(population_size, bool) and population_size >= 2, "an int >= 2")
        check_param("tournament_size", tournament_size, isinstance(tournament_size, int)
                    and not isinstance(tournament_size, bool) and 1 <= tournament_size <= population_size,
                    f"an int in [1, population_size={population_size}]")
        self.population_size = population_size
        self.tournament_size = tournament_size
        self.population: list[tuple[list[int], float]] = []  # oldest first
        self._mutable = [t for t, k in enumerate(self.num_choices) if k > 1]
        self._log_size = sum(math.log(k) for k in self.num_choices)
        m = len(self._mutable)
        self._mutation_entropy = (
            math.log(m) + sum(math.log(self.num_choices[t] - 1) for t in self._mutable) / m if m else 0.0
        )

    def _mutate(self, parent: list[int], rng: torch.Generator) -> tuple[list[int], float]:
        if not self._mutable:
            return list(parent), 0.0
        t = self._mutable[int(torch.randint(len(self._mutable), (1,), generator=rng))]
        k = self.num_choices[t]
        shift = 1 + int(torch.randint(k - 1, (1,), generator=rng))  # any other value, uniformly
        child = list(parent)
        child[t] = (parent[t] + shift) % k
        return child, -math.log(len(self._mutable)) - math.log(k - 1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Sample:
        n = self._check_n(n)
        rng = self._rng(generator)
        if len(self.population) < self.population_size:
            tokens = uniform_tokens(self.num_choices, n, rng)
            return Sample(tokens=tokens, log_probs=[-self._log_size] * n, entropies=[self._log_size] * n)
        tokens, log_probs = [], []
        for _ in range(n):
            contenders = torch.randperm(len(self.population), generator=rng)[: self.tournament_size].tolist()
            parent = max(contenders, key=lambda i: (self.population[i][1], i))  # ties: the younger wins
            child, log_prob = self._mutate(self.population[parent][0], rng)
            tokens.append(child)
            log_probs.append(log_prob)
        return Sample(tokens=tokens, log_probs=log_probs, entropies=[self._mutation_entropy] * n)

    def update(self, tokens: list[list[int]], rewards: list[float]) -> dict[str, float]:
        seqs, values = self._check_batch(tokens, rewards)
        self.population.extend(zip(seqs, values))
        del self.population[: max(0, len(self.population) - self.population_size)]
        fitness = [r for _, r in self.population]
        return {"population": float(len(fitness)), "population_best": max(fitness),
                "population_mean": sum(fitness) / len(fitness)}

    def state_dict(self) -> dict:
        state = self._base_state()
        state.update(population=[(list(t), float(r)) for t, r in self.population],
                     population_size=self.population_size, tournament_size=self.tournament_size)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore population and RNG; ``population_size`` and ``tournament_size`` are this controller's (a
        population larger than ``population_size`` keeps its youngest members). A refused state changes nothing."""
        base = self._check_base_state(state)
        if "population" not in state:
            raise ValueError("state is missing 'population'; is it an 'evolution' state_dict()?")
        entries = state["population"]
        if not isinstance(entries, (list, tuple)) or not all(
            isinstance(e, (list, tuple)) and len(e) == 2 for e in entries
        ):
            raise ValueError("state population must be a list of (tokens, reward) pairs")
        population = []
        if entries:
            try:
                population = list(zip(*self._check_batch([t for t, _ in entries], [r for _, r in entries])))
            except ValueError as exc:
                raise ValueError(f"state population: {exc}") from None
        self._apply_base_state(base)
        self.population = population[max(0, len(population) - self.population_size):]  # a smaller config
