"""The unbiased pass@k estimator.

Paper: Chen et al. 2021, "Evaluating Large Language Models Trained on Code" (arXiv 2107.03374),
section 2.1. With n samples of a problem of which c are correct, the probability that at least
one of k samples drawn without replacement is correct is

    pass@k = 1 - C(n - c, k) / C(n, k)

and the benchmark's pass@k is its mean over problems. The binomials overflow floats for large n,
so, as in the paper's listing, the ratio is computed as a product:

    C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)

Departure: none in the formula; we raise on k > n (the paper's code returns 1.0 or fails on
it), because a pass@k from fewer than k samples is not an estimate of anything.
"""

from __future__ import annotations

from typing import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `c` correct out of `n` samples."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"pass_at_k: {name} must be an integer, got {value!r}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k} with n={n} samples")
    if n - c < k:  # every draw of k samples contains a correct one
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float | None:
    """Mean pass@k over problems given as (n, c); problems with fewer than k samples are left
    out. None when no problem has k samples."""
    values = [pass_at_k(n, c, k) for n, c in counts if n >= k]
    return sum(values) / len(values) if values else None
