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


@pytest.mark.parametrize("text,want", [
    # the reviewer's probe: the last cue was Bob's move in a line of play (read as I)
    ("Alice must block the diagonal, so I will play at C. If Bob then plays at I, I win with G.", "C"),
    ("Alice should take C. If the opponent plays at I, Alice wins.", "C"),  # was I
    ("The answer is E.\n\nIf Bob plays at D, Alice wins.", "E"),  # was D
    ("Alice must play at E; otherwise Bob plays at D and wins.", "E"),  # was D
    ("So Alice must block at G. Then the opponent takes D.", "G"),  # was D
    ("Play at B, and they will answer at H.", "B"),  # was H
    ("Alice should play at C, because if she doesn't, Bob plays at C and wins.", "C"),
    ("If Bob plays at E, Alice wins.", None),  # was E
])
def test_a_line_of_play_after_the_answer_is_not_the_answer(text, want):
    """Rule 3 takes the last cue whose subject is not another player (Alice is to move)."""
    assert extract_answer(text, OTTT, "Alice") == want


@pytest.mark.parametrize("text,mover,want", [
    ("Alice plays at C, then Bob plays at I.", "Alice", "C"),  # was I
    ("Alice plays at C, then Bob plays at I.", "Bob", "I"),
    ("Bob should play at E.", "Bob", "E"),
    ("Bob should play at E.", "Alice", None),  # was E: Bob's move, but Alice is to move
    ("I think Bob will play at G.", "Alice", None),  # was G
    ("He should play at E.", "Bob", "E"),
    ("He should play at E.", "Alice", None),  # was E
    ("Bob threatens I, so play at I.", "Alice", "I"),  # no subject before the cue: the mover's
    ("Alice must block Bob at G.", "Alice", "G"),  # Bob is the object, not the subject
    ("Bob's best reply is I, so Alice plays at C.", "Alice", "C"),
])
def test_a_named_player_other_than_the_mover_is_not_the_answer(text, mover, want):
    assert extract_answer(text, OTTT, mover) == want


# The review of the clause rule (rev 25): answers the reader before it got right and the clause
# rule dropped, for conditions or for a person named earlier in the clause (Alice or Bob to move).
@pytest.mark.parametrize("text,mover,want", [
    ("Alice should play at C because if she doesn't, Bob wins.", "Alice", "C"),
    ("Bob's best move is E.", "Bob", "E"),
    ("bob's best move is E.", "Bob", "E"),
    ("alice should play at C.", "Alice", "C"),
    ("To block the opponent Alice should play at E.", "Alice", "E"),
    ("The only way to stop the opponent's fork is to play at E.", "Alice", "E"),
    ("Bob's threat on the diagonal means Alice must play at C.", "Alice", "C"),
    ("To stop Bob from winning Alice must play at E.", "Alice", "E"),
    ("Blocking Bob's diagonal requires Alice to play at C.", "Alice", "C"),
    ("After Bob played A the best move for Alice is to play at E.", "Alice", "E"),
    ("Therefore, if Alice wants to win, she should play at E.", "Alice", "E"),
    ("If Alice plays at E, she creates a fork, so the best move is E.", "Alice", "E"),
    ("If she plays E she wins immediately, so Alice should play at E.", "Alice", "E"),
    ("Whatever Bob does next, the answer is G.", "Alice", "G"),
    ("Even if Bob blocks, Alice wins by playing at G.", "Alice", "G"),
    ("To win, Alice must play at E.", "Alice", "E"),
    ("Since Bob threatens C, Alice must play at C.", "Alice", "C"),
    ("Bob threatens C. Alice must play at C.", "Alice", "C"),
    ("The opponent threatens C; the answer is C.", "Alice", "C"),
    ("Her best move is E.", "Alice", "E"),
    ("His best move is E.", "Bob", "E"),
    ("Alice's best move is E.", "Alice", "E"),
    ("To stop her fork, Bob should take E.", "Bob", "E"),
    ("To stop her fork Bob should take E.", "Bob", "E"),
    ("Given their two threats the best move is E.", "Alice", "E"),
    ("Given that he has two threats the answer is E.", "Alice", "E"),
    ("In this position he cannot be stopped unless Alice plays at E.", "Alice", "E"),
    ("Alice must play at E, otherwise Bob wins at D.", "Alice", "E"),  # the reader before: D
    ("Alice must play at E, otherwise Bob plays at D.", "Alice", "E"),  # the reader before: D
    ("Playing at E, which is what Bob would want too, is best.", "Alice", "E"),
    ("**Answer:** Alice should play at **E**.", "Alice", "E"),
    ("Final answer: E", "Bob", "E"),
    ("We play at E.", "Bob", "E"),
    ("The opponent, Bob, just played A. Alice's move: E", "Alice", "E"),
    ("So, assuming optimal play, the answer is E.", "Alice", "E"),
    ("Assuming optimal play by both sides, Alice should play at E.", "Alice", "E"),
    ("Unless I'm mistaken, the answer is E.", "Alice", "E"),
    ("If I'm not mistaken, the best move is E.", "Alice", "E"),
    ("Alice wins if she plays at E.", "Alice", "E"),
    ("Alice can force a win if she takes E.", "Alice", "E"),
    ("She should play at E, and then whatever he does she wins.", "Alice", "E"),
    ("He will lose if Alice plays at E.", "Alice", "E"),
    ("Alice could play at C, but that loses. Alice wins if she plays at E.", "Alice", "E"),
    ("I must stop him at C.", "Alice", "C"),
    ("I'll block her at G.", "Bob", "G"),
    ("Block their diagonal at C.", "Alice", "C"),
    ("Block the opponent at C.", "Alice", "C"),
    ("We need to block Bob's row at C.", "Alice", "C"),
    ("Need to block Bob's row at C.", "Alice", "C"),
    ("The best move is to block his row at C.", "Alice", "C"),
    ("Bob has two in a row, A and B, so Alice must block at C.", "Alice", "C"),
    ("Bob has A and B; block at C.", "Alice", "C"),
    ("Bob threatens A-B-C so block at C.", "Alice", "C"),
    ("Bob threatens the top row; Alice should place her stone at C.", "Alice", "C"),
    ("Alice places her stone at C.", "Alice", "C"),
    ("Bob places his stone at C.", "Bob", "C"),
    ("Bob places his stone at C.", "Alice", None),  # the reader before: C
])
def test_only_another_player_as_the_subject_skips_a_cue(text, mover, want):
    assert extract_answer(text, OTTT, mover) == want


@pytest.mark.parametrize("text,mover,want", [
    ("I will play at C. If Bob then plays at I, I win with G.", "Alice", "C"),
    ("If Alice then plays at I, I win with G. So I take C.", "Bob", "C"),
    ("Play at C. If the opponent plays at I, Alice wins.", None, "C"),
    ("Alice takes C. Then the opponent takes D.", None, "C"),
    ("Alice takes C, and then they'll answer at H.", None, "C"),
    ("Bob takes C. Then she would instead play at D.", "Bob", "C"),
    ("Take C. The opponent will then place a black stone at D.", None, "C"),
    ("Bob should play E.", "Alice", None),
    ("the opponent must just take E", None, None),
])
def test_the_subject_may_be_followed_by_auxiliaries_and_a_move_verb(text, mover, want):
    assert extract_answer(text, OTTT, mover) == want


@pytest.mark.parametrize("text", ["I play at E.", "My move: E", "I will place my stone at E.", "I choose E.",
                                  "Answer: E", "We should take E, and then Bob is stuck."])
def test_a_first_person_answer_without_a_box_is_read(text):
    for mover in (None, "Alice", "Bob"):
        assert extract_answer(text, OTTT, mover) == "E", (text, mover)


def test_many_rejected_cues_are_skipped():
    """Every cue but the first is Bob's (or theirs): all of them are walked back over."""
    assert extract_answer("Alice plays at C. " + "If Bob plays at E, Alice wins. " * 600, OTTT, "Alice") == "C"
    assert extract_answer("Alice plays at C, " + "Bob plays at E, " * 1200, OTTT, "Alice") == "C"
    assert extract_answer("they play at E " * 1300, OTTT) is None  # under MAX_CHARS
    assert score("Bob plays at E, " * 1200, ["E"], OTTT, "Alice") == 0.0
    assert extract_answer("if " + "play at E " * 1500, OTTT) == "E"  # a condition word alone skips nothing


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
