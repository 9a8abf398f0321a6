import pytest

from reasonrl.vision.world import read_answer, score_answer


@pytest.mark.parametrize("response, answer, answer_type", [
    ("3", "3", "number"), ("three", "3", "number"), ("\\boxed{Three}", "3", "number"),
    ("I count them.\nAnswer: 3 objects.", "3", "number"), ("There are 03 stars", "3", "number"),
    ("none", "0", "number"), ("\\boxed{0}", "0", "number"),
    ("RED", "red", "colour"), ("  The stripes are pink. ", "pink", "colour"), ("Violet", "purple", "colour"),
    ("circles", "circle", "shape"), ("\\boxed{\\text{Cross}}", "cross", "shape"),
    ("Yes, there is.", "yes", "yes_no"), ("no", "no", "yes_no"), ("No, no.", "no", "yes_no"),
    ("Answer: no, it is not", "no", "yes_no"),
    ("To the LEFT.", "left", "direction"), ("It is below the square", "below", "direction"),
    ("striped", "striped", "texture"), ("It has stripes", "striped", "texture"), ("plain", "solid", "texture"),
])
def test_answers_are_read_whatever_their_case_spacing_and_form(response, answer, answer_type):
    assert score_answer(response, answer, answer_type) == 1.0


@pytest.mark.parametrize("response, answer, answer_type", [
    ("4", "3", "number"), ("3 or 4", "3", "number"), ("3.5", "3", "number"), ("red or blue", "red", "colour"),
    ("blue", "red", "colour"), ("yes and no", "yes", "yes_no"), ("", "yes", "yes_no"),
    ("the answer is in the picture", "red", "colour"), ("left, or maybe above", "left", "direction"),
    # a negated value names the opposite: "no stripes" was read as striped (the LVR reward's family)
    ("\\boxed{no stripes}", "striped", "texture"), ("\\boxed{It has no stripes}", "striped", "texture"),
    ("\\boxed{not striped}", "striped", "texture"), ("\\boxed{not red}", "red", "colour"),
    # yes/no too: "not true" was read as yes
    ("\\boxed{Not true}", "yes", "yes_no"), ("\\boxed{not yes}", "yes", "yes_no"),
    ("\\boxed{Not false}", "no", "yes_no"), ("Answer: that is not true.", "yes", "yes_no"),
    ("It isn't true", "yes", "yes_no"), ("not no", "no", "yes_no"),
])
def test_wrong_or_hedged_answers_score_zero(response, answer, answer_type):
    assert score_answer(response, answer, answer_type) == 0.0


@pytest.mark.parametrize("response, answer, answer_type", [
    ("\\boxed{-3}", "3", "number"), ("\\boxed{+3}", "3", "number"), ("\\boxed{3+}", "3", "number"),
    ("\\boxed{< 3}", "3", "number"), ("\\boxed{\\le 3}", "3", "number"), ("\\boxed{fewer than 3}", "3", "number"),
    ("\\boxed{more than 3}", "3", "number"), ("Answer: at least 3", "3", "number"), ("\\boxed{about 3}", "3", "number"),
    ("\\boxed{nothing is red}", "red", "colour"), ("\\boxed{none of them is red}", "red", "colour"),
    ("Answer: red, blue", "red", "colour"),
])
def test_a_signed_compared_or_quantified_value_is_no_answer(response, answer, answer_type):
    """-3, "fewer than 3" and "more than 3" scored 1 against 3, "nothing is red" against red."""
    assert score_answer(response, answer, answer_type) == 0.0


def test_qualifying_words_that_are_values_or_answer_yes_no_still_read():
    assert read_answer("Yes, more than one", "yes_no") == "yes"
    assert read_answer("\\boxed{none}", "number") == "0"
    assert read_answer("It is above the circle", "direction") == "above"
    assert read_answer("Answer: I think the answer is red", "colour") == "red"


def test_the_final_answer_wins_over_words_in_the_reasoning():
    response = "The circle looks red at first, but the stripes are blue.\nAnswer: blue"
    assert read_answer(response, "colour") == "blue"
    assert read_answer("I think it is red, then \\boxed{blue}", "colour") == "blue"
    long_line = "A long line that names red somewhere in it, far too long to be a bare answer " * 2
    assert read_answer(long_line, "colour") is None


@pytest.mark.parametrize("garbage", [
    None, 3, b"red", ["red"], "\\boxed{", "\\boxed{" * 10_000, "}" * 50_000, "\x00\xff" * 1000,
    "9" * 5000, "\\boxed{" + "9" * 900 + "}", "Answer: " + "red " * 100_000, "\n" * 100_000,
])
def test_garbage_scores_zero_and_never_raises(garbage):
    for answer_type in ("number", "colour", "shape", "yes_no", "direction", "texture", "no_such_type"):
        assert score_answer(garbage, "3", answer_type) == 0.0


@pytest.mark.parametrize("response, answer_type, answer", [
    ("The square above the circle is red.", "colour", "red"),  # a position word near a colour
    ("Answer: red (the one above the circle)", "colour", "red"),
    ("The answer is circle, the shape above.", "shape", "circle"),
    ("There are 2 shapes above the line.", "number", "2"),  # a position word is no bound on a count
    ("It is the most common colour: red", "colour", "red"),  # "most" bounds counts only
])
def test_comparison_words_bound_counts_only(response, answer_type, answer):
    """The refusal of bounded or guessed values ("fewer than 3") refused these correct answers too."""
    assert read_answer(response, answer_type) == answer
