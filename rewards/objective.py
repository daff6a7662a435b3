"""MnasNet's multi-objective reward and its siblings, as pure functions and small callable objects.

    R(m) = ACC(m) * (COST(m) / T) ** w,   w = alpha if COST(m) <= T else beta        (Tan et al. 2019, eq. 2)

COST is the measured latency in ms (``MnasNetReward``) or the multiply-adds (``MacsReward``, the proxy the
paper argues against, kept for that comparison); ``AccuracyReward`` is plain ACC. Presets: soft
(alpha = beta = -0.07) and hard (alpha = 0, beta = -1), T = 75 ms on a Pixel 1.

A failed child (``accuracy=None``) gets ``reward_for_invalid`` -- an explicit, configured number rather than a
silent 0 or NaN that would poison the controller's baseline (NNI's ``reward_for_invalid``). Everything else
that is not a valid measurement is refused with a ValueError naming the field: no I/O, no hidden state.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_accuracy(accuracy: Any) -> float:
    value = _finite("accuracy", accuracy)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy!r}")
    return value


def cost_factor(cost: float, target: float, alpha: float, beta: float) -> float:
    """(cost / target) ** w with w = alpha if cost <= target else beta: the one copy of the paper's formula."""
    return (cost / target) ** (alpha if cost <= target else beta)


def pareto_reward(accuracy: float, cost: float, target: float, alpha: float, beta: float) -> float:
    """ACC * (cost / target) ** w with w = alpha if cost <= target else beta (no validation: the fast path)."""
    return accuracy * cost_factor(cost, target, alpha, beta)


MAX_FACTOR = 1e6  # (COST/T)^w beyond this: the cost alone decides every reward, and the controllers' float32
# statistics (advantages, Adam's squared gradients) overflow a little further on


class RewardOverflow(ValueError):
    """(COST/T)^w beyond :data:`MAX_FACTOR` (or a float): the target or an exponent is far off the costs searched."""


class AccuracyReward:
    """R = ACC: accuracy alone, the single-objective baseline (ignores latency and MACs)."""

    uses_latency = False
    uses_macs = False
    target = None

    def __init__(self, *, reward_for_invalid: float = 0.0, name: str = "accuracy") -> None:
        self.reward_for_invalid = _finite("reward_for_invalid", reward_for_invalid)
        self.name = str(name)

    def __call__(self, *, accuracy: float | None, latency_ms: float | None = None,
                 macs: float | None = None) -> float:
        if accuracy is None:
            return self.reward_for_invalid
        return check_accuracy(accuracy)

    def describe(self) -> dict:
        return {"name": self.name, "kind": "accuracy", "formula": "ACC",
                "reward_for_invalid": self.reward_for_invalid}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class _ParetoReward(AccuracyReward):
    """ACC * (COST / T) ** w. Subclasses say which measurement is COST."""

    kind = ""
    cost_field = ""
    target_field = ""
    unit = ""

    def __init__(self, *, target: float, alpha: float, beta: float, reward_for_invalid: float, name: str) -> None:
        super().__init__(reward_for_invalid=reward_for_invalid, name=name)
        self._target = _finite(self.target_field, target)
        if self._target <= 0:
            raise ValueError(f"{self.target_field} must be > 0, got {target!r}")
        # A positive exponent would reward slower (bigger) models: always a configuration mistake.
        self.alpha = _finite("alpha", alpha)
        self.beta = _finite("beta", beta)
        for field, value in (("alpha", self.alpha), ("beta", self.beta)):
            if value > 0:
                raise ValueError(f"{field} must be <= 0 (a positive exponent rewards slower models), got {value!r}")

    @property
    def target(self) -> float:
        return self._target

    def __call__(self, *, accuracy: float | None, latency_ms: float | None = None,
                 macs: float | None = None) -> float:
        if accuracy is None:
            return self.reward_for_invalid
        acc = check_accuracy(accuracy)
        cost = {"latency_ms": latency_ms, "macs": macs}[self.cost_field]
        if cost is None:
            raise ValueError(f"{self.cost_field} is required by the '{self.name}' reward, got None")
        cost = _finite(self.cost_field, cost)
        if cost <= 0:
            raise ValueError(f"{self.cost_field} must be > 0, got {cost!r}")
        w = self.alpha if cost <= self._target else self.beta
        try:
            factor = cost_factor(cost, self._target, self.alpha, self.beta)
        except OverflowError:
            factor = math.inf
        if not factor <= MAX_FACTOR:
            exponent = "alpha" if cost <= self._target else "beta"
            raise RewardOverflow(
                f"reward {self.name!r}: ({self.cost_field} {cost:g} / {self.target_field} {self._target:g}) ** "
                f"{exponent} {w:g} = {factor:.3g}, beyond {MAX_FACTOR:g}: the cost would outweigh any accuracy and "
                f"overflow the controller's statistics; set {self.target_field} near the costs searched, or "
                f"{exponent} nearer 0")
        return acc * factor

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind,
                "formula": f"ACC * ({self.unit}/T)^w, w = alpha if {self.unit} <= T else beta",
                self.target_field: self._target, "alpha": self.alpha, "beta": self.beta,
                "reward_for_invalid": self.reward_for_invalid}


class MnasNetReward(_ParetoReward):
    """MnasNet's latency-aware reward; ``target_ms`` is T, the latency target in milliseconds."""

    uses_latency = True
    kind = "latency"
    cost_field = "latency_ms"
    target_field = "target_ms"
    unit = "LAT"

    def __init__(self, *, target_ms: float = 75.0, alpha: float = -0.07, beta: float = -0.07,
                 reward_for_invalid: float = 0.0, name: str = "soft") -> None:
        super().__init__(target=target_ms, alpha=alpha, beta=beta, reward_for_invalid=reward_for_invalid,
                         name=name)


class MacsReward(_ParetoReward):
    """The same trade-off with multiply-adds as the cost (the FLOPs proxy); ``target_macs`` is T."""

    uses_macs = True
    kind = "macs"
    cost_field = "macs"
    target_field = "target_macs"
    unit = "MACs"

    def __init__(self, *, target_macs: float = 300e6, alpha: float = -0.07, beta: float = -0.07,
                 reward_for_invalid: float = 0.0, name: str = "macs") -> None:
        super().__init__(target=target_macs, alpha=alpha, beta=beta, reward_for_invalid=reward_for_invalid,
                         name=name)
