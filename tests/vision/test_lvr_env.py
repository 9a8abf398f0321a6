"""The `lvr` environment: shapes detail questions, accuracy + format reward, never raising; the
rollout decodes its responses with their special tokens so the format can be seen."""

import pytest

from reasonrl.envs.registry import load_environment
from reasonrl.vision.lvr.env import LVRShapesEnvironment, format_reward

SPAN = "<|lvr_start|>" + "<|lvr|>" * 3 + "<|lvr_end|>"


@pytest.fixture(scope="module")
def env():
    return load_environment("lvr:?max_objects=3&format_weight=0.5&image_size=112")


def test_prompts_are_detail_questions_with_regions(env):
    prompts = env.prompts(6, split="eval")
    assert {p.metadata["family"] for p in prompts} == {"detail"}
    problems = env.problems(6, split="eval")
    assert all(p.row["roi"] is not None and p.row["objects"][p.row["targets"][0]]["size"] == "small" for p in problems)
    assert env.prompts(6, split="eval")[0].id == prompts[0].id != env.prompts(6)[0].id  # reproducible, disjoint splits


@pytest.mark.parametrize("text, expected", [
    (SPAN + "\\boxed{red}<|im_end|>", 1.0),
    (SPAN + " \\boxed{striped}", 1.0),
    ("\\boxed{red}<|im_end|>", 0.0),  # no latent span
    ("<|lvr_start|><|lvr_end|>\\boxed{red}", 0.0),  # an empty span
    (SPAN + "\\boxed{red} because", 0.0),  # text after the answer
    (SPAN + "red", 0.0),  # not boxed
    (SPAN + "\\boxed{red}" + SPAN, 0.0),
    ("", 0.0), (None, 0.0), (SPAN * 1000 + "\\boxed{" * 50, 0.0),
])
def test_format_reward(text, expected):
    assert format_reward(text) == expected


def test_reward_is_accuracy_plus_weighted_format_and_metrics_count_right_answers(env):
    prompt = env.prompts(1)[0]
    right, wrong = f"\\boxed{{{prompt.answer}}}", "\\boxed{nothing}"
    assert env.reward(prompt, SPAN + right + "<|im_end|>") == 1.5
    assert env.reward(prompt, right) == 1.0
    assert env.reward(prompt, SPAN + wrong) == 0.5
    assert env.reward(prompt, None) == 0.0
    metrics = env.metrics([prompt] * 3, [SPAN + right, SPAN + wrong, right], [1.5, 0.5, 1.0])
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["format"] == pytest.approx(2 / 3)
    assert env.special_tokens_in_responses and not load_environment("shapes:").special_tokens_in_responses


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="lvr"):
        load_environment("lvr:?colour=red")
    assert isinstance(load_environment("lvr:"), LVRShapesEnvironment)


@pytest.mark.parametrize("options, named", [
    ("format_weight=-1", "lvr.format_weight must be >= 0"),
    ("size=0", "lvr.size must be a positive integer"),
    ("min_objects=5&max_objects=2", "min_objects and max_objects"),  # the world's own check (it caps at 8)
    ("max_objects=9", "min_objects and max_objects"),
])
def test_out_of_range_options_are_refused_naming_the_option(options, named):
    """format_weight=-1 (a reward for breaking the format) and size=0 were accepted."""
    with pytest.raises(ValueError, match=named):
        load_environment("lvr:?" + options)
