"""The accuracy-latency Pareto front: a batch mask for exports and an incremental front for the live search.

Higher accuracy and lower latency are better. A point is dominated when another is at least as good in both and
strictly better in one; of exact duplicates only the first is kept on the front.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np


def front_mask(accuracy: Sequence[float], latency: Sequence[float]) -> np.ndarray:
    """Boolean mask of the non-dominated points."""
    acc = np.asarray(accuracy, dtype=float)
    lat = np.asarray(latency, dtype=float)
    if acc.shape != lat.shape:
        raise ValueError(f"accuracy and latency differ in length ({acc.size} vs {lat.size})")
    order = np.lexsort((-acc, lat))  # by latency ascending, ties: higher accuracy first
    mask = np.zeros(acc.size, dtype=bool)
    best = -math.inf
    for i in order:
        if acc[i] > best:
            mask[i] = True
            best = acc[i]
    return mask


def hypervolume(accuracy: Sequence[float], latency: Sequence[float], latency_ref: float) -> float:
    """Area dominated by the front above accuracy 0 and below ``latency_ref`` (ms x accuracy)."""
    acc = np.asarray(accuracy, dtype=float)
    lat = np.asarray(latency, dtype=float)
    keep = front_mask(acc, lat) & (lat < latency_ref)
    points = sorted(zip(lat[keep], acc[keep]))
    area, prev_acc = 0.0, 0.0
    for lat_i, acc_i in points:
        area += (latency_ref - lat_i) * (acc_i - prev_acc)
        prev_acc = acc_i
    return float(area)


class ParetoFront:
    """The front of the points added so far, kept sorted by latency (accuracy then rises strictly).

    ``add`` is a binary search plus the removal of the points the new one dominates: a search of 8,000 children
    never recomputes the front from scratch.
    """

    def __init__(self) -> None:
        self._latency: list[float] = []
        self._accuracy: list[float] = []
        self._keys: list[object] = []

    def __len__(self) -> int:
        return len(self._latency)

    def dominated(self, accuracy: float, latency: float) -> bool:
        """Whether the front already has a point at least as good in both (an exact duplicate included)."""
        i = bisect.bisect_right(self._latency, latency) - 1
        return i >= 0 and self._accuracy[i] >= accuracy

    def add(self, accuracy: float, latency: float, key: object = None) -> bool:
        """Add a point; returns whether it entered the front."""
        if self.dominated(accuracy, latency):
            return False
        i = bisect.bisect_left(self._latency, latency)
        j = i
        while j < len(self._latency) and self._accuracy[j] <= accuracy:
            j += 1  # slower (or as fast) and no more accurate: dominated by the new point
        self._latency[i:j] = [latency]
        self._accuracy[i:j] = [accuracy]
        self._keys[i:j] = [key]
        return True

    def points(self) -> list[tuple[float, float, object]]:
        """``(latency, accuracy, key)`` by latency."""
        return list(zip(self._latency, self._accuracy, self._keys))


class RunningStats:
    """Best reward and counts over all children so far, updated per child (no re-reading of the store)."""

    def __init__(self) -> None:
        self.children = 0
        self.failed = 0
        self.best_reward = -math.inf
        self.best: object = None
        self.best_top1 = -math.inf
        self.archs: set[str] = set()

    def add(self, child) -> None:
        self.children += 1
        self.failed += not child.ok
        self.archs.add(child.arch)
        if child.reward is not None and child.reward > self.best_reward:
            self.best_reward, self.best = child.reward, child
        if child.ok and child.top1 is not None:
            self.best_top1 = max(self.best_top1, child.top1)
