"""Rank statistics against values computed by hand, ties, bootstrap intervals, top-k overlap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nas.rank_stats import bootstrap_ci, kendall, rankdata, spearman, top_k_overlap


def test_average_ranks_for_ties():
    assert rankdata([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert rankdata([3, 1, 2]).tolist() == [3, 1, 2]
    assert rankdata([5, 5, 5]).tolist() == [2, 2, 2]


def test_spearman_by_hand():
    # ranks (1,2,3,4,5) vs (2,1,4,3,5): d = (-1,1,-1,1,0), sum d^2 = 4, rho = 1 - 6*4/(5*24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear


def test_spearman_with_ties_is_pearson_of_average_ranks():
    # x ranks (1, 2.5, 2.5, 4), y ranks (1, 2, 3, 4): centred (-1.5, 0, 0, 1.5) . (-1.5, -.5, .5, 1.5) = 4.5,
    # |x| = sqrt(4.5), |y| = sqrt(5) -> rho = 4.5 / sqrt(22.5) = 0.948683
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))


def test_kendall_tau_b_by_hand():
    # pairs of (1,2,3,4) vs (1,3,2,4): 5 concordant, 1 discordant -> (5 - 1) / 6
    assert kendall([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert kendall([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties: x = (1,2,2,3), y = (1,2,3,4): 6 pairs, one tied in x; concordant 5, discordant 0
    # tau-b = 5 / sqrt((6 - 1) * (6 - 0)) = 5 / sqrt(30)
    assert kendall([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))


def test_undefined_statistics_are_nan_and_bad_input_raises():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(kendall([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1, 2], [1, 2]))
    with pytest.raises(ValueError, match="equal length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        kendall([1, 2, math.nan], [1, 2, 3])


def test_top_k_overlap():
    truth = [0.9, 0.8, 0.7, 0.6, 0.5]
    assert top_k_overlap(truth, [5, 4, 3, 2, 1], 2) == 1.0
    assert top_k_overlap(truth, [1, 2, 3, 4, 5], 2) == 0.0
    assert top_k_overlap(truth, [5, 1, 4, 2, 3], 2) == 0.5  # best two by score: items 0 and 2
    with pytest.raises(ValueError, match="k"):
        top_k_overlap(truth, truth, 6)


def test_top_k_overlap_with_ties_is_the_same_whatever_the_order():
    """Ties at the cut used to be broken by position: a score with no information (every child at chance) got 0.0
    or 1.0 depending only on the order the architectures were listed in; it gets chance, k/n, now."""
    truth = [0.9, 0.8, 0.7, 0.6, 0.5]
    flat = [0.1] * 5
    assert top_k_overlap(truth, flat, 2) == pytest.approx(2 / 5)
    assert top_k_overlap(truth[::-1], flat, 2) == pytest.approx(2 / 5)
    # item 0 above the cut; items 1, 2, 3 tied at it for the one place left: 1 + 1/3 of the truth's best two
    assert top_k_overlap(truth, [3, 2, 2, 2, 1], 2) == pytest.approx((1 + 1 / 3) / 2)
    assert top_k_overlap(truth, [1, 2, 2, 2, 3], 2) == pytest.approx((1 / 3) / 2)  # item 1: a third of a place
    # averaged over every tie-break, by brute force
    import itertools

    score = [2, 2, 1, 1, 1]
    cuts = [set(sorted(range(5), key=lambda i: (-score[i], rank[i]))[:3]) for rank in itertools.permutations(range(5))]
    exact = sum(len(cut & {0, 1, 2}) for cut in cuts) / len(cuts) / 3  # the truth's best three: items 0, 1, 2
    assert top_k_overlap(truth, score, 3) == pytest.approx(exact)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 200):
        x = rng.normal(size=n)
        y = x + rng.normal(scale=0.7, size=n)
        rho = spearman(x, y)
        lo, hi = bootstrap_ci(spearman, x, y, n_boot=500, seed=0)
        assert lo <= rho <= hi and -1 <= lo < hi <= 1
        widths.append(hi - lo)
        assert bootstrap_ci(spearman, x, y, n_boot=500, seed=0) == (lo, hi)  # deterministic for a seed
    assert widths[1] < widths[0] / 2


def test_bootstrap_skips_undefined_resamples_and_handles_matrix_columns():
    # 2-D column: one row per architecture, one value per seed
    scores = np.array([[1, 1.1], [2, 2.2], [3, 2.9], [4, 4.1]])
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    lo, hi = bootstrap_ci(lambda s, t: spearman(s.mean(1), t), scores, truth, n_boot=200)
    assert lo == hi == 1.0  # every defined resample ranks perfectly; all-equal resamples (NaN) are left out
    assert bootstrap_ci(spearman, [1, 1, 1], [1, 2, 3], n_boot=10) == (pytest.approx(math.nan, nan_ok=True),) * 2
