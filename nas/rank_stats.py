"""Rank statistics for proxy fidelity: Spearman, Kendall tau-b, bootstrap confidence intervals, top-k overlap.

Plain numpy (no scipy dependency) and small on purpose: the benchmark compares a few dozen architectures, so the
O(n^2) Kendall is instant. Ties get average ranks (Spearman) and the tau-b correction (Kendall), the conventions
of ``scipy.stats.spearmanr`` / ``kendalltau``. A statistic that is undefined (fewer than two distinct values on a
side, fewer than 3 points) is NaN, never an exception: a bootstrap resample can draw one architecture many times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "kendall", "rankdata", "spearman", "top_k_overlap"]


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"rank statistics need two 1-D sequences of equal length, got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("rank statistics need finite values (drop failed children first)")
    return a, b


def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n; tied values share the average of the ranks they span ([10, 20, 20, 30] -> [1, 2.5, 2.5, 4])."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=float)
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the (average) ranks."""
    a, b = _pair(x, y)
    if len(a) < 3:
        return math.nan
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denom if denom > 0 else math.nan


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y)) over all pairs."""
    a, b = _pair(x, y)
    if len(a) < 3:
        return math.nan
    i, j = np.triu_indices(len(a), k=1)
    dx, dy = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n0 = len(i)
    ties_x, ties_y = int((dx == 0).sum()), int((dy == 0).sum())
    denom = math.sqrt((n0 - ties_x) * (n0 - ties_y))
    return float((dx * dy).sum()) / denom if denom > 0 else math.nan


def top_k_overlap(truth: Sequence[float], score: Sequence[float], k: int) -> float:
    """Share of the ``k`` best by ``truth`` that are also among the ``k`` best by ``score`` (higher is better).

    Ties at the cut are broken at random, independently on each side, and the expected overlap is returned: an item
    above a side's cut is in its top k for sure, one tied at the cut with the share of the cut's remaining places
    (so a score with no information gets chance, k/n, not 0 or 1 by the order the items were listed in).
    """
    a, b = _pair(truth, score)
    if not 1 <= k <= len(a):
        raise ValueError(f"top-k overlap needs 1 <= k <= {len(a)}, got k={k}")
    return float(_in_top_k(a, k) @ _in_top_k(b, k)) / k


def _in_top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Each item's probability of being among the ``k`` largest when ties at the cut are broken at random."""
    cut = np.sort(x)[::-1][k - 1]
    above, tied = x > cut, x == cut
    return above + tied * (k - above.sum()) / tied.sum()


def bootstrap_ci(statistic: Callable[..., float], *columns: Sequence, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*columns)``, resampling rows (architectures) with replacement.

    ``columns`` are sequences of equal length (one row per architecture; a column may hold per-row vectors, such as
    one accuracy per seed). Resamples whose statistic is undefined (NaN) are left out; (nan, nan) if all are.
    """
    if not columns:
        raise ValueError("bootstrap_ci needs at least one column")
    arrays = [np.asarray(c, dtype=float) for c in columns]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("bootstrap_ci: columns must have the same length")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level!r}")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot must be >= 1, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        v = statistic(*(a[idx] for a in arrays))
        if math.isfinite(v):
            values.append(v)
    if not values:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)
