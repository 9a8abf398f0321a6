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
    "If Bob plays at E, Alice wins.",  # a condition, not an answer (was E)
])
def test_no_answer(text):
    assert extract_answer(text, OTTT) is None


@pytest.mark.parametrize("text,want", [
    # the reviewer's probe: the last cue was Bob's move in a line of play (read as I)
    ("Alice must block the diagonal, so I will play at C. If Bob then plays at I, I win with G.", "C"),
    ("Alice should take C. If the opponent plays at I, Alice answers at G.", "C"),  # was G
    ("The answer is E.\n\nIf Bob plays at I, Alice wins at G.", "E"),  # was G
    ("Alice must play at E; otherwise Bob plays at D and wins.", "E"),  # was D
    ("So Alice must block at G. Then the opponent takes D.", "G"),  # was D
    ("Play at B, and they will answer at H.", "B"),  # was H
    ("Alice should play at C, because if she doesn't, Bob plays at C and wins.", "C"),
])
def test_a_line_of_play_after_the_answer_is_not_the_answer(text, want):
    """Rule 3 takes the last cue that states the mover's own move, not one inside a condition
    nor one said of the opponent."""
    assert extract_answer(text, OTTT) == want


@pytest.mark.parametrize("text,mover,want", [
    ("Alice plays at C, then Bob plays at I.", "Alice", "C"),  # was I
    ("Alice plays at C, then Bob plays at I.", "Bob", "I"),
    ("Bob should play at E.", "Bob", "E"),
    ("Bob should play at E.", "Alice", None),  # was E: Bob's move, but Alice is to move
    ("I think Bob will play at G.", "Alice", None),  # was G
    ("He should play at E.", "Bob", "E"),
    ("He should play at E.", "Alice", None),  # was E
    ("Bob threatens I, so play at I.", "Alice", "I"),  # a clause naming no one is the mover's
    ("Alice must block Bob at G.", "Alice", "G"),  # the first person the clause names is its subject
    ("Bob's best reply is I, so Alice plays at C.", "Alice", "C"),
])
def test_a_named_player_other_than_the_mover_is_not_the_answer(text, mover, want):
    assert extract_answer(text, OTTT, mover) == want


@pytest.mark.parametrize("text", ["I play at E.", "My move: E", "I will place my stone at E.", "I choose E.",
                                  "Answer: E", "We should take E, and then Bob is stuck."])
def test_a_first_person_answer_without_a_box_is_read(text):
    for mover in (None, "Alice", "Bob"):
        assert extract_answer(text, OTTT, mover) == "E", (text, mover)


def test_many_rejected_cues_are_skipped():
    """Every cue but the first is in a condition (or Bob's): all sentences are walked back over."""
    assert extract_answer("Alice plays at C. " + "If Bob plays at E, Alice wins. " * 600, OTTT) == "C"
    assert extract_answer("Alice plays at C, " + "Bob plays at E, " * 1200, OTTT, "Alice") == "C"
    assert extract_answer("if " + "play at E " * 1500, OTTT) is None  # one sentence, under MAX_CHARS
    assert score("Bob plays at E, " * 1200, ["E"], OTTT, "Alice") == 0.0


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
