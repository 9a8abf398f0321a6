"""Reading answers out of untrusted model text."""

import time

import pytest

from reasonrl.envs.ttt.verify import MAX_CHARS, extract_answer, score

OTTT = "ABCDEFGHI"
STTT = "ABCDEFGHIJKLMNOPQRSTUVWXY"


@pytest.mark.parametrize("text,want", [
    ("so the answer is \\boxed{E}", "E"),
    ("\\boxed{\\text{E}}", "E"),
    ("\\boxed{\\textbf{Position E}}", "E"),
    ("\\boxed{ \\mathrm{ E } }", "E"),
    ("\\boxed{e}", "E"),
    ("\\boxed{\\text{Bob should play at I}}", "I"),
    ("\\boxed{A} wait, no. \\boxed{C}", "C"),  # the last box decides
    ("\\boxed{\\{G\\}}", "G"),
    ("\\fbox{H}", "H"),
    ("Final answer: **D**", "D"),
    ("Bob should play at E.", "E"),
    ("I think the best move is B.", "B"),
    ("A fork is coming. Alice must play position C", "C"),
    ("The answer:\n\n**F**\n", "F"),
    ("- G\n", "G"),
    ("Answer: I", "I"),
    ("Bob threatens I, so play at I.", "I"),
    ("Position I is the best move.", "I"),  # the label, followed by lowercase words
    ("The best move is I because it blocks the column.", "I"),
    ("Bob must take I to block.", "I"),
])
def test_reads_the_committed_label(text, want):
    assert extract_answer(text, OTTT) == want


@pytest.mark.parametrize("text", [
    "",
    "I think A good move exists. I am sure.",  # capitals of ordinary prose
    "The move I recommend is E.",  # after a cue word, I before a lowercase word is the pronoun (was read as I)
    "So the answer I would give is C.",
    "\\boxed{}",
    "\\boxed{A or B}",  # two labels: no answer
    "\\boxed{J}",  # not an oTTT label
    "\\boxed{Position}",
    "\\boxed{E",  # unclosed, and no other answer
    "play at Ｅ",  # full-width letter
    "I'm going with the centre.",
    "The move is a fork.",
    "position E5",
])
def test_no_answer(text):
    assert extract_answer(text, OTTT) is None


def test_a_box_that_merely_contains_a_lowercase_letter_names_no_label():
    """Every non-letter was dropped before the single-letter rule: \\boxed{1e5} read as E, \\frac{a}{2} as A."""
    for text in ("\\boxed{1e5}", "\\boxed{2.5e3}", "\\boxed{\\frac{a}{2}}", "\\boxed{-e}", "\\boxed{e^2}"):
        assert extract_answer(text, OTTT) is None, text
    for text in ("\\boxed{e}", "\\boxed{ \\text{ e } }", "\\boxed{\\mathrm{e}}"):
        assert extract_answer(text, OTTT) == "E", text


def test_box_beats_prose_and_an_unclosed_box_falls_back():
    assert extract_answer("play at A. \\boxed{B}", OTTT) == "B"
    assert extract_answer("\\boxed{C} and later \\boxed{D", OTTT) == "C"  # last complete box
    assert extract_answer("\\boxed{\\boxed{\\boxed{E}}}", OTTT) == "E"
    assert extract_answer("So play at X.", STTT) == "X"
    assert extract_answer("So play at X.", OTTT) is None


def test_score_is_one_only_for_a_solution_label():
    assert score("\\boxed{G}", ["G"], OTTT) == 1.0
    assert score("\\boxed{G}", ["A", "G"], OTTT) == 1.0
    assert score("\\boxed{H}", ["G"], OTTT) == 0.0
    assert score("nothing here", ["G"], OTTT) == 0.0
    assert score(None, ["G"], OTTT) == 0.0
    assert score(b"\\boxed{G}", ["G"], OTTT) == 0.0
    assert score("\\boxed{G}", None, OTTT) == 0.0  # a broken prompt must not raise either


@pytest.mark.parametrize("text", [
    "{" * 200_000,
    "\\boxed{" * 50_000,
    "}" * 100_000 + "\\boxed{E}",
    "at " * 100_000,
    " " * 200_000 + "E",
    "\n" * 100_000,
    "answer is" + " " * 100_000 + "E",
    ("\\boxed{" + "x" * 10) * 20_000,
    "A" * 300_000,
    "é" * 100_000 + " play at E",
    "\x00\ud800" * 10_000,
])
def test_adversarial_inputs_are_fast_and_safe(text):
    start = time.perf_counter()
    result = score(text, ["E"], OTTT)
    assert result in (0.0, 1.0)
    assert time.perf_counter() - start < 1.0


def test_only_the_tail_is_read():
    assert extract_answer("\\boxed{E}" + "." * MAX_CHARS, OTTT) is None
    assert extract_answer("." * (10 * MAX_CHARS) + "\\boxed{E}", OTTT) == "E"
