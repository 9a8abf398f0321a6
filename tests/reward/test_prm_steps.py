"""Step segmentation and the `sums` environment's exact step labels."""

import pytest

from reasonrl.envs.sums import SumsEnvironment
from reasonrl.reward.prm.steps import StepFormat, split_steps, step_texts

SPACE = StepFormat(delimiter=" ")


def test_delimiter_steps_and_their_ends():
    response = "4+7=11 11+2=13  \\boxed{13}"
    steps = split_steps(response, SPACE)
    assert [s.text for s in steps] == ["4+7=11", "11+2=13", "\\boxed{13}"]
    assert [response[:s.end] for s in steps] == ["4+7=11", "4+7=11 11+2=13", response]


def test_blank_line_is_the_default_delimiter():
    assert step_texts("First.\n\nSecond.\n\n\n\nThird.", StepFormat()) == ["First.", "Second.", "Third."]


def test_tags():
    fmt = StepFormat(split="tags")
    text = "<step>a</step> junk <step> </step><step>b"
    steps = split_steps(text, fmt)
    assert [s.text for s in steps] == ["a", "b"]  # empty tag dropped, unclosed last tag kept
    assert text[:steps[0].end] == "<step>a</step>"


@pytest.mark.parametrize("response, expected", [
    ("<step></step>", []), ("<step>  </step>trailing", []), ("<step>", []),  # tags, all empty: no step
    ("no tags here", ["no tags here"]), ("</step> only a close", ["</step> only a close"]),
])
def test_tags_that_hold_nothing_are_no_step(response, expected):
    """Empty tag pairs fell back to "no tag at all" and made the raw markup one step."""
    assert step_texts(response, StepFormat(split="tags")) == expected


@pytest.mark.parametrize("response, expected", [
    ("no delimiter here", ["no delimiter here"]),
    ("", []), ("   ", []), (None, []), ("\x00\x01garbage", ["\x00\x01garbage"]),
])
def test_untrusted_responses_never_raise(response, expected):
    assert step_texts(response, StepFormat()) == expected


def test_bad_format_is_refused():
    with pytest.raises(ValueError, match="delimiter"):
        StepFormat(delimiter="")
    with pytest.raises(ValueError, match="split"):
        StepFormat(split="lines")


def _prompt(terms):
    env = SumsEnvironment()
    p = env.prompts(1)[0]
    p.messages = [{"role": "user", "content": "Add: " + " + ".join(map(str, terms))}]
    p.answer = str(sum(terms))
    return env, p


@pytest.mark.parametrize("response, labels", [
    ("4+7=11 11+2=13 \\boxed{13}", [1, 1, 1]),
    ("4+7=12 12+2=14 \\boxed{14}", [0, 0, 0]),           # an arithmetic slip makes every later step wrong
    ("4+7=11 11+3=14 \\boxed{13}", [1, 0, 0]),           # wrong term
    ("4+7=11 \\boxed{13}", [1, 1]),                      # skipping to the right answer is right
    ("\\boxed{13}", [1]), ("\\boxed{12}", [0]),          # a guess
    ("4+7=11 11+2=13 \\boxed{13} \\boxed{13}", [1, 1, 1, 0]),  # nothing after a box is right
    ("4+7=11 hello 11+2=13", [1, 0, 0]),
    ("4+7=11 11+2=13 13+1=14 \\boxed{14}", [1, 1, 0, 0]),  # a step past the last term
])
def test_sums_exact_step_labels(response, labels):
    env, prompt = _prompt([4, 7, 2])
    assert env.step_labels(prompt, step_texts(response, SPACE)) == labels
    # the final box is right exactly when the outcome reward is 1 (and every step before it is)
    if labels and response.rstrip().endswith("}") and all(labels):
        assert env.reward(prompt, response) == 1.0


def test_sums_min_terms_gives_a_hard_split():
    env = SumsEnvironment(max_terms=12, min_terms=7)
    assert all(p.metadata["terms"] >= 7 for p in env.prompts(50, split="eval"))
    with pytest.raises(ValueError, match="min_terms"):
        SumsEnvironment(max_terms=5, min_terms=7)
