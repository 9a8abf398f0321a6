"""Answer equivalence with math-verify; runs inside the verifier's worker processes only.

`math_verify_equal(pred, gold)` wraps both answers in `\\boxed{}`, parses them with math-verify
(LaTeX first, plain expressions as fallback) and calls `verify(gold, pred)` with its default
precision (6 decimals for floats). Both sides use math-verify's default LaTeX normalisation,
with boxed matches first. Departing from the README's reward advice, `malformed_operators`
stays on for predictions: TeX reads `\\frac12` as `\\frac{1}{2}` and models write it.

Departures from calling math-verify directly:
- Its own timeouts (`parsing_timeout`, `timeout_seconds`) are switched off. They use
  `signal.alarm`, which only works in a main thread and cannot interrupt long C calls; the
  pool around us kills the whole process instead (pool.py).
- math_verify is imported on first use, so the trainer process never pays for importing it.
- Digit groups spaced as thousands are joined first (`quick.join_digit_groups`): math-verify
  reads `10\\,000` as 10*000 = 0.
- Parsed references are cached (a GRPO group shares one reference across its samples).
- `refuted` first evaluates plain expressions at one point (~1 ms): values that differ prove
  the answers unequal, which verify() would conclude through `simplify` in ~15-60 ms. It
  never says "equal"; tests/envs/test_math_equivalence.py checks it against verify().

`verify` is asymmetric on purpose (a gold inequality accepts a predicted interval, not the
reverse); the reference is always passed as gold.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from .quick import join_digit_groups


@lru_cache(maxsize=1)
def _math_verify():
    import math_verify

    # With its timeouts off, math-verify warns once per process; the pool is the timeout.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    config = [math_verify.LatexExtractionConfig(boxed_match_priority=0), math_verify.ExprExtractionConfig()]
    return math_verify, config


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    math_verify, config = _math_verify()
    return math_verify.parse("\\boxed{" + join_digit_groups(gold) + "}", extraction_config=config, parsing_timeout=None)


def math_verify_equal(pred: str, gold: str) -> bool:
    """True when the predicted answer equals the reference answer (both bare, unboxed)."""
    math_verify, config = _math_verify()
    gold_parsed = _parse_gold(gold)
    pred_parsed = math_verify.parse("\\boxed{" + join_digit_groups(pred) + "}", extraction_config=config,
                                    parsing_timeout=None)
    if not gold_parsed or not pred_parsed or refuted(gold_parsed, pred_parsed):
        return False
    return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def refuted(gold_parsed: list, pred_parsed: list) -> bool:
    """True when two parsed answers take different values at one point, so `verify` would
    return False; it would get there through `simplify(gold - pred)`, ~20-60 ms for a wrong
    polynomial or radical where this takes ~1 ms.

    Only plain expressions qualify: integers, rationals, symbols, pi, e, + * ^ (integer
    exponents up to 1000), exp, log, sin, cos, tan, and neither side a lone symbol (text
    answers) nor a float or percentage (math-verify rounds those). Anything else, equal
    fallback strings, or a value that is not a finite real number: not refuted."""
    import sympy

    if {x for x in gold_parsed if isinstance(x, str)} & {x for x in pred_parsed if isinstance(x, str)}:
        return False
    exprs = [[x for x in parsed if not isinstance(x, str)] for parsed in (gold_parsed, pred_parsed)]
    if any(len(e) != 1 or not _plain(e[0], sympy) or isinstance(e[0], sympy.Symbol) for e in exprs):
        return False
    (gold,), (pred,) = exprs
    symbols = sorted(gold.free_symbols | pred.free_symbols, key=str)
    point = {s: sympy.Rational(7236 + 5813 * k, 10_000) for k, s in enumerate(symbols)}  # 0.7236, 1.3049, ...
    a, b = gold.evalf(30, subs=point), pred.evalf(30, subs=point)
    if not all(isinstance(v, sympy.Float) and v.is_finite for v in (a, b)):
        return False
    return abs(a - b) > 1e-9 * max(1, abs(a), abs(b))


def _plain(expr, sympy) -> bool:
    allowed = (sympy.Add, sympy.Mul, sympy.Pow, sympy.exp, sympy.log, sympy.sin, sympy.cos, sympy.tan,
               sympy.Rational, sympy.Symbol)
    for node in sympy.preorder_traversal(expr):
        if node is sympy.pi or node is sympy.E:
            continue
        if type(node) not in allowed and not isinstance(node, sympy.Rational):
            return False
        if isinstance(node, sympy.Pow) and not (isinstance(node.exp, sympy.Rational) and abs(node.exp) <= 1000):
            return False
    return True
