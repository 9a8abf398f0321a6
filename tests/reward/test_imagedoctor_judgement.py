"""ImageDoctor's look-think-predict text: rendered judgements parse back exactly; garbage,
truncated and adversarial strings score 0 and never raise (fuzzed)."""

import random

import pytest

from reasonrl.reward.imagedoctor.judgement import (ASPECTS, MAX_CHARS, format_reward, parse_judgement,
                                                   render_judgement, score_reward)

SCORES = {"alignment": 0.75, "aesthetics": 0.6, "plausibility": 0.9, "overall": 0.7}
GOOD = render_judgement(SCORES, [(10, 20, 110, 220), (5, 5, 40, 60)], "The dog is missing; the hand is blurred.")


def test_a_rendered_judgement_parses_back():
    j = parse_judgement(GOOD)
    assert j.scores == SCORES and j.boxes == [(10, 20, 110, 220), (5, 5, 40, 60)]
    assert j.locations == {"misalignment": True, "artifact": True} and j.well_formed
    assert score_reward(j, SCORES) == 1.0 and format_reward(j) == 1.0


def test_score_reward_is_one_minus_three_times_the_error_floored_at_zero():
    j = parse_judgement(GOOD)
    truth = {**SCORES, "alignment": 0.65, "overall": 0.1}  # errors 0.1 and 0.6
    assert score_reward(j, truth) == pytest.approx((0.7 + 1 + 1 + 0) / 4)


@pytest.mark.parametrize("text,why", [
    (GOOD.replace("Aesthetic score: 0.60", "Aesthetic score: 1.60"), "out of range"),
    (GOOD.replace("Aesthetic score: 0.60", "Aesthetic score: nan"), "not a number"),
    (GOOD.replace("Aesthetic score: 0.60", "Aesthetic score: 0.6e3"), "exponent"),
    (GOOD.replace("Aesthetic score: 0.60;", "Aesthetic score: 0.60; Aesthetic score: 0.1;"), "two values"),
    (GOOD.replace("Aesthetic score: 0.60;", ""), "missing"),
])
def test_an_unreadable_score_is_none_and_scores_zero(text, why):
    j = parse_judgement(text)
    assert j.scores["aesthetics"] is None, why
    assert not j.well_formed
    assert score_reward(j, SCORES) == pytest.approx(3 / 4)  # the other three are exact


def test_structure_matters():
    assert not parse_judgement(GOOD.replace("<|artifact|>", "")).well_formed  # no task token in its field
    answer_first = GOOD[GOOD.index("<answer>"):] + GOOD[:GOOD.index("<answer>")]
    assert parse_judgement(answer_first).scores == dict.fromkeys(ASPECTS)  # the answer must follow the thinking
    assert parse_judgement(GOOD.replace("</answer>", "")).scores == dict.fromkeys(ASPECTS)  # truncated
    assert parse_judgement("[1,2,3] [4,4,2,2] [1,1,5,5]").boxes == []  # boxes are read inside <think> only
    assert parse_judgement("<think>[0,0,5,5];[5,5,1,1];[1,2,3]</think>").boxes == [(0, 0, 5, 5)]  # empty boxes dropped


@pytest.mark.parametrize("value", [None, 3, b"<answer>", ["<think>"], {"a": 1}, float("nan")])
def test_non_strings_score_zero(value):
    j = parse_judgement(value)
    assert score_reward(j, SCORES) == 0 and format_reward(j) == 0


def test_fuzzed_strings_never_raise_and_truncations_never_score_more_than_whole():
    rng = random.Random(0)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "score:", " score: ", "Aesthetic", "Semantic Alignment",
              "Overall Impression", "Plausibility", "Locations:", "<|artifact|>", "<|misalignment|>", "[", "]", ",", ";",
              "\n", "0.5", "1", "-3", "1e9", "\x00", "é", "9" * 40, " " * 50, "[1,2,3,4]"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
        j = parse_judgement(text)
        assert 0 <= score_reward(j, SCORES) <= 1 and format_reward(j) in (0, 1)
        assert all(v is None or 0 <= v <= 1 for v in j.scores.values())
    for cut in range(len(GOOD)):
        assert score_reward(parse_judgement(GOOD[:cut]), SCORES) == 0  # no closed answer block, no score
    huge = "<think>" + "[1,1,2,2];" * 100_000 + "</think>" + GOOD
    assert len(parse_judgement(huge).boxes) <= 32 and score_reward(parse_judgement(huge), SCORES) == 0  # cut at MAX_CHARS
    assert len(huge) > MAX_CHARS


def test_the_cold_start_target_parses_to_its_scores_and_is_not_a_whole_judgement():
    from reasonrl.reward.imagedoctor.judgement import render_scores

    truth = {"alignment": 0.5, "aesthetics": 0.41, "plausibility": 0.875, "overall": 0.7}
    parsed = parse_judgement(render_scores(truth))
    assert parsed.scores == {"alignment": 0.5, "aesthetics": 0.41, "plausibility": 0.88, "overall": 0.7}
    assert not parsed.well_formed and parsed.boxes == [] and not any(parsed.locations.values())
