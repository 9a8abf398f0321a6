"""In-process consistency of the shortcuts with math-verify (reasonrl/envs/math/quick.py and
`refuted` in equivalence.py): each shortcut may only return what math-verify would."""

import random

from reasonrl.envs.math.equivalence import _math_verify, _parse_gold, math_verify_equal, refuted
from reasonrl.envs.math.quick import quick_verdict
from test_math_extract import QUICK


def _random_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        a, b, c = rng.randint(-30, 30), rng.randint(1, 12), rng.randint(-30, 30)
        pairs.append(rng.choice([
            (str(a), str(rng.choice([a, c]))),
            (f"\\frac{{{a * b}}}{{{b}}}", str(rng.choice([a, c]))),
            (f"{a}/{b}", f"\\dfrac{{{rng.choice([a, c])}}}{{{b}}}"),
            (f"{a / 4}", f"\\frac{{{a}}}{{4}}"),
            (f"\\{{{a}, {c}\\}}", f"\\{{{c},{rng.choice([a, b])}\\}}"),
            (f"[{min(a, c) - 1}, {max(a, c)}]", f"{rng.choice('[(')}{min(a, c) - 1},{max(a, c)}{rng.choice(')]')}"),
            (f"y = {a}", str(a)),
        ]))
    return pairs


def test_quick_path_agrees_with_math_verify():
    """Every verdict the quick path decides is the one math-verify gives."""
    pairs = [(p, g) for p, g, _ in QUICK if p] + _random_pairs(60)
    decided = [(p, g, quick_verdict(p, g)) for p, g in pairs]
    decided = [(p, g, v) for p, g, v in decided if v is not None]
    assert len(decided) >= 60 and {v for *_, v in decided} == {0.0, 1.0}
    for pred, gold, verdict in decided:
        assert math_verify_equal(pred, gold) == bool(verdict), (pred, gold)


def test_digit_groups_spaced_as_thousands_parse_as_one_number():
    """math-verify alone reads 10\\,000 as 10*000 = 0."""
    assert math_verify_equal("10\\,000\\,\\text{m}", "10000") and not math_verify_equal("10\\,000\\,\\text{m}", "0")
    assert math_verify_equal("2\\,500", "2500") and not math_verify_equal("10\\,000", "0")
    assert math_verify_equal("5000", "5\\,000")  # the reference is read the same way
    assert math_verify_equal("\\frac{1}{2}\\,\\text{cm}", "\\frac{1}{2}") and math_verify_equal("2\\,x", "2x")


def _expression(rng: random.Random) -> str:
    a, b, k = rng.randint(1, 9), rng.randint(1, 9), rng.randint(2, 7)
    return rng.choice([
        f"x^2+{a}x+{b}", f"(x+{a})(x+{b})", f"(x+{a})^2", f"{a}\\sqrt{{{k}}}", f"\\sqrt{{{a * a * k}}}",
        f"\\frac{{{a}\\pi}}{{{k}}}", f"\\frac{{{a}}}{{{k}}}\\pi", f"{a}x+{b}y", f"{b}y+{a}x", f"e^{{{a}}}",
        f"\\sin(\\frac{{\\pi}}{{{k}}})", f"{a}^{{{k}}}", str(a**k), f"\\frac{{{a}x}}{{{a * b}}}", f"\\frac{{x}}{{{b}}}",
        "\\cos(0)", "1", f"{a}+{b}i", f"{b}i+{a}", f"{a}.5", f"{a}\\%", "\\text{east}", "x=2", "[1, 2)",
    ])


def test_refutation_never_contradicts_verify():
    """`refuted` (one numeric evaluation) is only ever True where verify() is False; equal forms
    are never refuted."""
    math_verify, config = _math_verify()
    rng = random.Random(0)
    pairs = [(_expression(rng), _expression(rng)) for _ in range(100)]
    pairs += [("(x+3)^2", "x^2+6x+9"), ("\\sqrt{12}", "2\\sqrt{3}"), ("\\frac{3}{2}\\pi", "\\frac{3\\pi}{2}"),
              ("e^{2}", "e^2"), ("\\cos(0)", "1"), ("2^{10}", "1024"), ("4+3i", "3i+4"), ("0.5", "\\frac{1}{2}")]
    fired = 0
    for pred, gold in pairs:
        gold_parsed = _parse_gold(gold)
        pred_parsed = math_verify.parse("\\boxed{" + pred + "}", extraction_config=config, parsing_timeout=None)
        if gold_parsed and pred_parsed and refuted(gold_parsed, pred_parsed):
            fired += 1
            assert not math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None), (pred, gold)
    assert fired >= 40  # the shortcut is exercised, not skipped
    for pred, gold in pairs[-8:]:
        assert math_verify_equal(pred, gold), (pred, gold)
