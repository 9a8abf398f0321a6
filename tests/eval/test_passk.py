"""The unbiased pass@k estimator (Chen et al. 2021) against exact enumeration and exact integers."""

import itertools
import math
from fractions import Fraction

import pytest

from reasonrl.eval.passk import mean_pass_at_k, pass_at_k


def brute_force(n: int, c: int, k: int) -> float:
    """The share of all k-subsets of n samples (c of them correct) that hold a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_1_is_the_share_correct():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8, abs=1e-15)


def test_edges():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(10, 1, 10) == 1.0  # n - c < k: every draw holds the correct one
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 2, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 2, 0)
    with pytest.raises(TypeError):
        pass_at_k(4.0, 2, 1)


def test_stable_where_binomials_overflow_floats():
    n, c, k = 5000, 7, 1000
    with pytest.raises(OverflowError):
        float(math.comb(n, k))  # the naive formula cannot even be evaluated in floats
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_mean_leaves_out_problems_with_fewer_than_k_samples():
    assert mean_pass_at_k([(4, 1), (4, 0), (2, 2)], 4) == pytest.approx(0.5)
    assert mean_pass_at_k([(4, 1), (2, 2)], 1) == pytest.approx((0.25 + 1.0) / 2)
    assert mean_pass_at_k([(2, 1)], 4) is None
