"""Answer extraction and the quick path (reasonrl/envs/math/extract.py, quick.py); no processes."""

import time

import pytest

from reasonrl.envs.math.extract import answer_line, extract_answer, last_boxed, reference_answer
from reasonrl.envs.math.quick import normalize, quick_verdict


@pytest.mark.parametrize(
    "response, expected",
    [
        ("so \\boxed{\\frac{1}{\\sqrt{2}}} done", "\\frac{1}{\\sqrt{2}}"),  # nested braces
        ("first \\boxed{1}, then \\boxed{2}", "2"),  # the last box wins
        ("\\boxed{1} and finally \\fbox{x+1}", "x+1"),  # \fbox counts
        ("\\boxed {7}", "7"),  # a space before the brace
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are content, not structure
        ("\\boxed{\\boxed{3}}", "3"),
        ("\\boxed{5} then truncated \\boxed{12", "5"),  # an unclosed last box does not count
        ("Answer: 42", "42"),
        ("lots of work\n**Final Answer:** $\\frac12$", "\\frac12"),
        ("The answer is 7.", "7"),
        ("The answer is 3.\nWait, no. The final answer is 4.", "4"),  # the last line wins
        ("Answer: 5\nso \\boxed{6}", "6"),  # a box beats an Answer: line
        ("Answer: **5**.", "5"),  # markdown around the answer, a full stop after it
        ("answer: `5`", "5"),
        ("no final answer here", None),
        ("\\boxed{}", None),
        ("", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_think_delimiter():
    thought = "<think>maybe \\boxed{1}</think> The result is \\boxed{2}"
    assert extract_answer(thought, think_delimiter="</think>") == "2"
    # the box inside the reasoning does not count once the delimiter is configured
    assert extract_answer("<think>\\boxed{1}</think> no answer", think_delimiter="</think>") is None
    # delimiter configured but absent: no answer at all, even with a box
    assert extract_answer("<think>still thinking \\boxed{2}", think_delimiter="</think>") is None
    assert extract_answer("<think>still thinking \\boxed{2}") == "2"  # not configured: read it all


def test_long_or_hostile_text_is_bounded():
    assert extract_answer("\\boxed{" + "1" * 2000 + "}", max_chars=1000) is None
    start = time.perf_counter()
    assert extract_answer("\\boxed{" * 200_000) is None  # a flood of unclosed boxes
    assert extract_answer("{" * 1_000_000 + "\\boxed{1}" + "}" * 1_000_000) == "1"
    assert extract_answer("answer: " * 100_000) is None
    assert time.perf_counter() - start < 2.0
    assert last_boxed("\\boxed{" + "{" * 5000 + "}" * 5000 + "}", max_chars=1000) is None


def test_a_decorated_answer_line_is_read_in_linear_time():
    """Markdown used to come off a layer per pass, each pass a copy: a megabyte of "*." took 8 s, so these
    8 MB would take minutes (the bound is a loaded machine's, far above the milliseconds they take now)."""
    start = time.perf_counter()
    assert extract_answer("Answer: " + "*." * 4_000_000) is None
    assert extract_answer("Answer: 5" + " *`." * 2_000_000) == "5"
    assert time.perf_counter() - start < 60
    assert answer_line("Answer: " + "1" * 2000) is None  # longer than max_chars, like a box
    assert answer_line("Answer: " + "1" * 2000, max_chars=5000) == "1" * 2000


def test_the_answer_line_fallback_ends_at_its_first_clause():
    """The rest of the line went to math-verify, which reads an equation's right-hand side: "The answer
    is 7 (check: 7 - 4 = 3)" scored 1 against 3 and 0 against 7."""
    assert extract_answer("The answer is 7 (check: 7 - 4 = 3)") == "7"
    assert extract_answer("The answer is 5 because 2+4=6") == "5"
    assert extract_answer("The answer is 5, not 6.") == "5"
    assert extract_answer("The answer is 12 (since 3*4 = 12)") == "12"
    assert extract_answer("The answer is 7. Check: 3 + 4 = 7") == "7"
    assert extract_answer("The answer is $5$; the rest is checking.") == "5"
    assert extract_answer("Final Answer: The final answer is $5$. I hope it is correct.") == "5"
    assert extract_answer("The answer is 5\u3002") == "5"
    # a number, a fraction, a set, an interval, an equation or a list is one answer, whatever its commas
    for kept in ("1,000", "3.5", "\\frac{1}{2}", "\\{1, 2\\}", "[1, 2)", "x = 1, y = 2", "1, 2, 3, ..., 100",
                 "10\\,000", "5!", "x = (1, 2)", "5, or 6"):
        assert extract_answer(f"The answer is {kept}. It checks out.") == kept, kept
    assert extract_answer("The answer is $x = 5$, since 2x = 10.") == "x = 5"
    assert extract_answer("The answer is \\(1, 2\\), as shown.") == "1, 2"
    assert answer_line("The answer is 5, not 6.") == "5, not 6"  # the exact reward reads the whole line
    # a clause that offers a second answer makes a hedge, no answer; an abbreviation's period ends nothing
    for hedge in ("The answer is 5 (or maybe 6).", "The answer is 2 \u2014 or 3.", "The answer is 2 as well as 3"):
        assert extract_answer(hedge) is None, hedge
    assert extract_answer("The answer is approx. 3.14") == "approx. 3.14"
    assert extract_answer("The answer is i.e. 4") == "i.e. 4"


def test_the_last_answer_cue_on_a_line_wins():
    """A cue took the rest of its line, so a later cue on the same line was never found."""
    assert extract_answer("Answer: 6? No wait, the answer is 5.") == "5"
    assert answer_line("Answer: I believe the answer is Paris") == "Paris"
    assert extract_answer("The answer is 3.\nWait, no. The final answer is 4.") == "4"


def test_a_hostile_answer_line_is_cut_in_bounded_time():
    """The clause scan is a Python loop over brackets and dollars: it must stop after max_chars."""
    start = time.perf_counter()
    for hostile in ("(" * 2_000_000, "$" * 2_000_000, "\\" * 2_000_000, ", " * 2_000_000, " " * 2_000_000 + "x"):
        assert extract_answer("Answer: 5" + hostile) is None
    assert extract_answer("Answer: 5, because" + " x" * 1_000_000) == "5"  # too long a line, but a short answer
    assert time.perf_counter() - start < 60  # a loaded machine's bound; it takes well under a second


def test_a_last_box_longer_than_max_chars_is_no_answer():
    """A too-long last box was skipped like an unclosed one, so the earlier guess in the box was scored."""
    long_box = "\\boxed{" + "x+" * 600 + "1}"
    assert extract_answer("First guess \\boxed{5}. Final answer: " + long_box) is None
    assert last_boxed("\\boxed{5} " + long_box) is None
    assert last_boxed("\\boxed{5} then truncated \\boxed{" + "1" * 2000) is None  # open past max_chars: too long
    assert last_boxed("\\boxed{5} then truncated \\boxed{12") == "5"  # a short unclosed box still falls back
    assert last_boxed("\\boxed{5} " + long_box, max_chars=2000) == "x+" * 600 + "1"


@pytest.mark.parametrize(
    "reference, expected",
    [(42, "42"), (0.5, "0.5"), ("$\\frac{1}{2}$", "\\frac{1}{2}"), ("so \\boxed{x+1}.", "x+1"),
     (True, None), (None, None), (float("nan"), None), ([1], None), ("", None),
     # floats in positional notation: repr's 1e-07 reads as Euler's e minus 7 to a math parser
     (1e-07, "0.0000001"), (1e20, "100000000000000000000"), (-2.5e-05, "-0.000025"), (float("inf"), None)],
)
def test_reference_answer(reference, expected):
    assert reference_answer(reference) == expected


def test_normalize_keeps_meaning():
    assert normalize("\\left( 1, 2 \\right)") == "(1,2)"
    assert normalize("$\\dfrac{1}{2}$.") == "\\frac{1}{2}"
    assert normalize("2 3") == "2 3"  # a space between words is kept: 2 3 is not 23
    assert normalize("\\pi r") != normalize("\\pir")


def test_digit_groups_spaced_as_thousands_are_one_number():
    """math-verify reads 10\\,000 as 10*000 = 0: it matched a reference 0 and missed 10000."""
    for spaced in ("10\\,000", "10\\;000", "10\\:000", "10\\!000", "10\\ 000", "10 000", "10~000"):
        assert normalize(spaced) == "10000", spaced
    assert normalize("1\\,234\\,567.5") == "1234567.5"
    # spacing before anything but a group of exactly three digits stays spacing
    assert normalize("2\\,x") == "2 x" and normalize("\\frac{1}{2}\\,\\text{cm}") == "\\frac{1}{2}\\text{cm}"
    assert normalize("1\\,23") == "1 23" and normalize("1\\,2345") == "1 2345"


# (pred, gold, verdict): None means "ask math-verify"
QUICK = [
    ("42", "42", 1.0),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", 1.0),
    ("1/2", "0.5", 1.0),
    ("\\frac{2}{4}", "1/2", 1.0),
    ("-\\frac{1}{2}", "-0.5", 1.0),
    ("12.0", "12", 1.0),
    ("3", "4", 0.0),
    ("\\frac{1}{3}", "\\frac{1}{4}", 0.0),
    ("0.333333", "\\frac{1}{3}", None),  # decimals are math-verify's call (it rounds)
    ("0.5", "0.6", None),
    ("\\{1, 2\\}", "\\{2,1\\}", 1.0),
    ("\\{1, 3\\}", "\\{2,1\\}", 0.0),
    ("[1, \\infty)", "[1,\\infty)", 1.0),
    ("[1, 2]", "[1, 2)", 0.0),
    ("(1, 2)", "(1, 3)", 0.0),
    ("(2, 1)", "[2, 1]", None),  # degenerate intervals are left to math-verify
    ("x = 5", "5", 1.0),
    ("x = 6", "5", None),
    ("1,000", "1000", None),
    ("\\{1,000\\}", "\\{1000\\}", None),
    ("2\\,500", "2500", 1.0),  # thousands separators: math-verify read 10\,000 as 10*000
    ("12\\,345", "12345", 1.0),
    ("1\\;250", "1250", 1.0),
    ("10\\,000", "0", 0.0),
    ("x^2+1", "1+x^2", None),
    ("\\sqrt{8}", "2\\sqrt{2}", None),
    ("", "1", 0.0),
]


@pytest.mark.parametrize("pred, gold, verdict", QUICK)
def test_quick_verdict(pred, gold, verdict):
    assert quick_verdict(pred, gold) == verdict


def test_a_last_box_too_long_does_not_fall_back_to_an_answer_cue():
    """The docs: a last box still open past max_chars gives no answer. An earlier cue was read."""
    ramble = "\\boxed{" + "x" * 1501
    assert extract_answer("The answer is 5.\n" + ramble) is None
    assert extract_answer("The answer is 5.\n" + ramble + "}") is None  # closed, but too long
    assert extract_answer("The answer is 5.\n\\boxed{6") == "5"  # unclosed and short: a truncated box
