"""Verdicts that need no SymPy: the verifier's quick path, run in the trainer's process.

`quick_verdict(pred, gold)` returns 1.0 or 0.0 only where math-verify could not disagree, and
None (ask math-verify) everywhere else:
- equal normal forms -> 1 (normalisation only drops spacing, `\\left`/`\\right`, `$..$`, a
  trailing period, joins digit groups spaced as thousands (`10\\,000`, see `join_digit_groups`),
  and maps `\\dfrac`/`\\tfrac` to `\\frac`);
- plain numbers (integer, decimal, a/b, \\frac{a}{b}): equal values -> 1; unequal -> 0 only when
  neither is a decimal, since math-verify compares decimals after rounding (0.333333 = 1/3);
- flat sets `\\{..\\}`, intervals and tuples of plain numbers and +-\\infty, with the same
  brackets and length: equal (as sets for sets) -> 1, unequal and all exact -> 0; two
  non-empty intervals with exact endpoints and different brackets -> 0;
- "x = <answer>" against a reference without "=": 1 when <answer> is quick-equal (math-verify
  reads the last side of a predicted equation), otherwise undecided.
Everything is bounded: numbers have at most 40 digits.
"""

from __future__ import annotations

import re
from fractions import Fraction

from .extract import strip_math

_DIGIT_GROUP_SPACING = re.compile(r"(?<=\d)(?:\\[,;:! ]|[ ~])(?=\d{3}(?!\d))", re.ASCII)
_SPACING = re.compile(r"\\[,;:! ]|\\left\b|\\right\b")
_SPACE_INSIDE_WORDS = re.compile(r"(?<=\w)\s+(?=\w)")  # "\pi r", "2 3": one space, kept
_SPACE = re.compile(r"\s+")


def join_digit_groups(answer: str) -> str:
    """`10\\,000` -> `10000`: spacing (`\\,` `\\;` `\\:` `\\!` `\\ `, a space, `~`) between a digit and a
    group of exactly three is a thousands separator. math-verify reads `10\\,000` as 10*000 = 0."""
    return _DIGIT_GROUP_SPACING.sub("", answer)


def normalize(answer: str) -> str:
    """Canonical text of a math answer; two answers with equal normal forms are equal."""
    text = strip_math(_drop_period(join_digit_groups(answer).strip()))
    text = _SPACING.sub(" ", text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _SPACE_INSIDE_WORDS.sub("\x00", text.strip())
    return _drop_period(_SPACE.sub("", text).replace("\x00", " "))


def answer_key(answer: str) -> str:
    """A key equal for answers the verifier calls equal, for votes: the normal form, the value of an
    assignment's right side, and a plain number's value (`\\frac{1}{2}`, `1/2`, `0.5`, `x = 0.5` all
    count for one answer; `1,000`, `1{,}000` and `1000` for another)."""
    text = normalize(answer).replace("{,}", ",")
    assignment = _ASSIGNMENT.fullmatch(text)  # "x = 2" is 2, as the verifier reads it
    text = assignment.group(1) if assignment else text
    if _GROUPED.fullmatch(text):  # "1,000": one number in a vote (the verifier reads it so against 1000)
        text = text.replace(",", "")
    value = as_rational(text)
    return str(value[0]) if value is not None else text


def _drop_period(text: str) -> str:
    """One sentence-ending period; "..." stays (1, 2, ... is not 1, 2)."""
    return text[:-1] if text.endswith(".") and not text.endswith("..") else text


_INT = r"[+-]?\d{1,40}"
_RATIONAL = re.compile(
    rf"(?P<int>{_INT})"
    rf"|(?P<dec>[+-]?\d{{0,40}}\.\d{{1,40}})"
    rf"|(?P<num>{_INT})/(?P<den>\d{{1,40}})"
    rf"|(?P<sign>[+-]?)\\frac\{{(?P<fnum>{_INT})\}}\{{(?P<fden>\d{{1,40}})\}}",
    re.ASCII,  # \d is 0-9 only: other scripts' digits go to math-verify
)
_INFINITY = {"\\infty": "+inf", "+\\infty": "+inf", "-\\infty": "-inf"}
_STRUCTURE = re.compile(r"(\\\{|[\[(])([^\[\](){}]*)(\\\}|[\])])")
_THOUSANDS = re.compile(r"\d,\d{3}(?!\d)", re.ASCII)  # "1,000": a number or a pair? math-verify's call
_ASSIGNMENT = re.compile(r"[A-Za-z]=([^=]+)")
_GROUPED = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", re.ASCII)

Value = tuple[Fraction | str, bool]  # (value, exact); "+inf"/"-inf" are exact


def as_rational(answer: str) -> Value | None:
    """(value, exact) for a plain number; None otherwise. Decimals are not exact."""
    match = _RATIONAL.fullmatch(answer)
    if match is None:
        return None
    group = match.groupdict()
    if group["int"] is not None:
        return Fraction(int(group["int"])), True
    if group["dec"] is not None:
        return Fraction(group["dec"]), False
    num, den = (group["num"], group["den"]) if group["num"] is not None else (group["fnum"], group["fden"])
    if int(den) == 0:
        return None
    value = Fraction(int(num), int(den))
    return (-value if group["sign"] == "-" else value), True


def as_structure(answer: str) -> tuple[str, str, list[Value]] | None:
    """(open bracket, close bracket, elements) of a flat set/interval/tuple of plain numbers."""
    match = _STRUCTURE.fullmatch(answer)
    if match is None or _THOUSANDS.search(answer):
        return None
    elements = []
    for text in match.group(2).split(","):
        value = (_INFINITY[text], True) if text in _INFINITY else as_rational(text)
        if value is None:
            return None
        elements.append(value)
    return match.group(1), match.group(3), elements


def _compare(pred: list[Value], gold: list[Value], as_set: bool) -> float | None:
    values_p, values_g = [v for v, _ in pred], [v for v, _ in gold]
    equal = set(values_p) == set(values_g) if as_set else values_p == values_g
    if equal:
        return 1.0
    return 0.0 if all(exact for _, exact in pred + gold) else None


def _compare_structures(pred, gold) -> float | None:
    (p_open, p_close, p_items), (g_open, g_close, g_items) = pred, gold
    if p_open == g_open == "\\{" and p_close == g_close == "\\}":
        return _compare(p_items, g_items, as_set=True)
    if (p_open, p_close) == (g_open, g_close) and len(p_items) == len(g_items):
        return _compare(p_items, g_items, as_set=False)
    if "\\{" not in (p_open, g_open) and len(p_items) == len(g_items) == 2 and _proper(p_items) and _proper(g_items):
        return 0.0  # intervals differing only in an endpoint's inclusion: [1, 2] is not [1, 2)
    return None


def _proper(items: list[Value]) -> bool:
    """Exact endpoints, left < right: a non-empty interval, never a degenerate one."""
    (a, a_exact), (b, b_exact) = items
    order = {"-inf": -1, "+inf": 1}
    key = lambda v: (order[v], 0) if isinstance(v, str) else (0, v)  # noqa: E731
    return a_exact and b_exact and key(a) < key(b)


def quick_verdict(pred: str, gold: str) -> float | None:
    """1.0 or 0.0 when decided without SymPy (see the module docstring), else None."""
    pred_n, gold_n = normalize(pred), normalize(gold)
    if not pred_n:
        return 0.0
    if pred_n == gold_n:
        return 1.0
    p, g = as_rational(pred_n), as_rational(gold_n)
    if p is not None and g is not None:
        return _compare([p], [g], as_set=False)
    ps, gs = as_structure(pred_n), as_structure(gold_n)
    if ps is not None and gs is not None:
        return _compare_structures(ps, gs)
    assignment = _ASSIGNMENT.fullmatch(pred_n)
    if assignment and "=" not in gold_n and quick_verdict(assignment.group(1), gold_n) == 1.0:
        return 1.0
    return None
