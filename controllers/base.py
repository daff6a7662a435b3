"""What every controller shares: the ``Sample`` it returns, input validation, and the RNG plumbing.

A controller only ever sees the number of choices per decision (``num_choices``), never a model: the search
loop decodes tokens to architecture strings with the search space. Every random draw goes through one
``torch.Generator`` owned by the controller, so ``state_dict()`` captures the whole sampling state and a resumed
search continues bit-for-bit where it stopped.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mnas_common.checks import is_seed
from mnas_common.errors import first_line


@dataclass(frozen=True)
class Sample:
    """A batch of proposals. ``log_probs[i]`` is log p(tokens[i]) under the proposal distribution (a real
    log-probability, <= 0), ``entropies[i]`` the sum over decisions of the entropy of each decision's
    distribution along the sampled path (nats)."""

    tokens: list[list[int]]
    log_probs: list[float]
    entropies: list[float]

    def __len__(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Sample:
        return cls(tokens=[list(map(int, t)) for t in data["tokens"]],
                   log_probs=[float(x) for x in data["log_probs"]],
                   entropies=[float(x) for x in data["entropies"]])


class PolicyDiverged(ValueError):
    """The policy's logits are not finite (NaN or inf): sampling from it would draw from garbage."""


def check_num_choices(num_choices: Sequence[int]) -> tuple[int, ...]:
    """A non-empty sequence of positive ints (one per decision); anything else is refused by name."""
    if isinstance(num_choices, (str, bytes, int)) or not hasattr(num_choices, "__iter__"):
        raise ValueError(f"num_choices must be a list of positive ints, got {num_choices!r}")
    values = list(num_choices)
    if not values:
        raise ValueError("num_choices must not be empty (one entry per decision)")
    out = []
    for i, k in enumerate(values):
        if isinstance(k, bool) or not hasattr(k, "__index__"):
            raise ValueError(f"num_choices[{i}] must be an int, got {k!r}")
        k = int(k)
        if k < 1:
            raise ValueError(f"num_choices[{i}] must be >= 1, got {k}")
        out.append(k)
    return tuple(out)


def check_param(name: str, value: Any, ok: bool, requirement: str) -> None:
    """One-line ValueError naming the hyper-parameter, for bad config values."""
    if not ok:
        raise ValueError(f"{name} must be {requirement}, got {value!r}")


class Controller(ABC):
    """Strategy interface used by the search loop (see the README's "Controllers and rewards" section)."""

    name: str = "controller"
    #: True when ``update`` may take children one at a time, in any order, while others are still being evaluated
    #: (the steady-state schedule); on-policy learners (REINFORCE, PPO) need the whole batch they sampled.
    asynchronous: bool = False

    def __init__(self, num_choices: Sequence[int], *, seed: int = 0) -> None:
        self.num_choices = check_num_choices(num_choices)
        check_param("seed", seed, is_seed(seed), "an integer in [0, 2**64)")
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def num_decisions(self) -> int:
        return len(self.num_choices)

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> Sample:
        """Propose ``n`` token sequences."""

    @abstractmethod
    def update(self, tokens: list[list[int]], rewards: list[float]) -> dict[str, float]:
        """Learn from evaluated proposals; returns training statistics (empty when nothing is learnt)."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: parameters, optimizer, RNG. Picklable, ``torch.save``-able."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``; refuses a state from another controller or search space.

        A refused state leaves the controller exactly as it was: implementations check every field first
        (``_check_base_state`` and their own) and only then change anything (``_apply_base_state``)."""

    # -- helpers shared by the implementations ---------------------------------------------------------

    def _rng(self, generator: torch.Generator | None) -> torch.Generator:
        if generator is None:
            return self.generator
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        return generator

    @staticmethod
    def _check_n(n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (number of samples) must be an int >= 1, got {n!r}")
        return n

    def _check_batch(self, tokens: list[list[int]], rewards: list[float]) -> tuple[list[list[int]], list[float]]:
        """Validate an update batch: same lengths, full-length sequences, tokens in range, finite rewards."""
        tokens = list(tokens)
        rewards = list(rewards)
        if len(tokens) != len(rewards):
            raise ValueError(f"update got {len(tokens)} token sequences but {len(rewards)} rewards")
        if not tokens:
            raise ValueError("update needs at least one (tokens, reward) pair")
        seqs = []
        for i, seq in enumerate(tokens):
            seq = list(seq)
            if len(seq) != self.num_decisions:
                raise ValueError(f"tokens[{i}] has {len(seq)} decisions, the controller has {self.num_decisions}")
            for t, (tok, k) in enumerate(zip(seq, self.num_choices)):
                if isinstance(tok, bool) or not hasattr(tok, "__index__") or not 0 <= int(tok) < k:
                    raise ValueError(f"tokens[{i}][{t}] = {tok!r} is out of range 0..{k - 1}")
            seqs.append([int(x) for x in seq])
        values = []
        for i, r in enumerate(rewards):
            try:
                r = float(r)
            except (TypeError, ValueError):
                raise ValueError(f"rewards[{i}] must be a number, got {r!r}") from None
            if not math.isfinite(r):
                raise ValueError(f"rewards[{i}] must be finite, got {r!r}")
            values.append(r)
        return seqs, values

    def _base_state(self) -> dict:
        return {"name": self.name, "num_choices": list(self.num_choices), "seed": self.seed,
                "rng": self.generator.get_state().clone()}

    def _check_base_state(self, state: dict) -> tuple[torch.Tensor, int]:
        """Check the fields every controller state holds, changing nothing; returns (rng, seed) for
        ``_apply_base_state``, to be called only once the subclass has checked its own fields too."""
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        missing = [k for k in ("name", "num_choices", "rng") if k not in state]
        if missing:
            raise ValueError(f"state is missing {', '.join(missing)}; is it a controller state_dict()?")
        if state["name"] != self.name:
            raise ValueError(f"state is from controller '{state['name']}', this is '{self.name}'")
        if tuple(state["num_choices"]) != self.num_choices:
            raise ValueError(
                f"state num_choices {list(state['num_choices'])} differ from this controller's {list(self.num_choices)}"
            )
        seed = state.get("seed", self.seed)
        check_param("state seed", seed, is_seed(seed), "an integer in [0, 2**64)")
        rng = state["rng"]
        try:
            torch.Generator().set_state(rng)  # a scratch generator: torch checks type and size
        except (TypeError, RuntimeError, ValueError) as exc:
            raise ValueError(f"state rng is not a torch.Generator state: {first_line(exc)}") from None
        return rng.clone(), int(seed)

    def _apply_base_state(self, checked: tuple[torch.Tensor, int]) -> None:
        rng, seed = checked
        self.generator.set_state(rng)
        self.seed = seed
