"""Reading untrusted model output: reasoning blocks, the last tag pair, truncation, judges, ratings."""

import pytest

from reasonrl.data.sand import parse


def test_only_the_text_after_the_last_reasoning_block_is_read():
    text = "<think>draft: <Q>wrong</Q> <S>no</S></think> more <think>again</think>\n<Q> What is 2+2? </Q><S>\\boxed{4}</S>"
    assert parse.problem_and_solution(text, "stop") == (("What is 2+2?", "\\boxed{4}"), None)
    # tags only inside the reasoning: nothing after it to read
    assert parse.problem_and_solution("<think><Q>a</Q><S>b</S></think>done", "stop") == (None, "no <Q> tag")


def test_the_last_complete_pair_wins_and_tags_are_case_insensitive():
    text = "<Q>first</Q><S>s1</S> Let me fix that. <q>second</q><s>s2</s> <Q>unclosed"
    assert parse.problem_and_solution(text, "stop") == (("second", "s2"), None)


@pytest.mark.parametrize("text, finish, reason", [
    ("<Q>x</Q><S>y</S>", "length", "truncated (max_tokens reached)"),
    ("", "stop", "empty output"),
    ("   \n", None, "empty output"),
    ("<think>still thinking <Q>x</Q><S>y</S>", "stop", "unclosed reasoning block"),
    ("Here is a problem: x", "stop", "no <Q> tag"),
    ("<Q>  </Q><S>y</S>", "stop", "empty <Q>"),
    ("<Q>x</Q> and no solution", "stop", "no <S> tag"),
    ("</Q>x<Q>", "stop", "no <Q> tag"),
])
def test_unreadable_problems_say_why(text, finish, reason):
    assert parse.problem_and_solution(text, finish) == (None, reason)


def test_non_string_output_never_raises():
    assert parse.problem_and_solution(None, "stop")[0] is None
    assert parse.yes_no(12, "stop")[0] is None
    assert parse.score(["x"], None)[0] is None


@pytest.mark.parametrize("text, verdict", [
    ("<C>yes</C>", True), ("<c> No. </c>", False), ("<think><C>no</C></think><C>Yes</C>", True),
    ("**<C>yes</C>**", True),
])
def test_judge_verdicts(text, verdict):
    assert parse.yes_no(text, "stop") == (verdict, None)


@pytest.mark.parametrize("text, reason", [
    ("yes", "no <C> tag"), ("<C>maybe</C>", "<C> is neither yes nor no"), ("<C>yes</C>", "truncated (max_tokens reached)"),
])
def test_unreadable_judges(text, reason):
    finish = "length" if "truncated" in reason else "stop"
    assert parse.yes_no(text, finish) == (None, reason)


@pytest.mark.parametrize("text, value, reason", [
    ("<S>sum</S><D>5.5</D><R>r</R>", 5.5, None), ("<D> 7 </D>", 7.0, None), ("<D>about 4/10</D>", None,
                                                                               "<D> does not hold one number"),
    ("<D>11</D>", None, "<D> out of [1, 10]"), ("<D>0.5</D>", None, "<D> out of [1, 10]"),
    ("<D>hard</D>", None, "<D> does not hold one number"), ("rating: 5", None, "no <D> tag"),
])
def test_ratings(text, value, reason):
    assert parse.score(text, "stop") == (value, reason)


def test_snap_to_half_steps():
    assert [parse.snap(x) for x in (5.0, 5.24, 5.25, 5.74, 5.75, 1.1, 9.99)] == [5.0, 5.0, 5.5, 5.5, 6.0, 1.0, 10.0]
    assert parse.snap((5 + 5.5 + 6) / 3) == 5.5
