"""Parsers of model output stay linear on adversarial text: each input below took from seconds to
minutes through the quadratic patterns these parsers used before (a regex anchored at the end over a
run of spaces, a lazy match rescanning from every unclosed tag, two blank runs side by side). Run in
a subprocess with a deadline: a regex holds the interpreter, so only a process can be timed out."""

import subprocess
import sys

import pytest

from reasonrl.data.sand.parse import after_reasoning
from reasonrl.engine.tool_calls import parse
from reasonrl.envs.kernels.prompt import extract_code, without_thinking
from reasonrl.vision.lvr.env import format_reward

SPAN = "<|lvr_start|><|lvr|><|lvr|><|lvr_end|>"

ADVERSARIAL = """
from reasonrl.data.sand.parse import after_reasoning
from reasonrl.engine.tool_calls import parse
from reasonrl.envs.kernels.prompt import extract_code
from reasonrl.vision.lvr.env import _without_end_tokens
n = 800_000
assert _without_end_tokens(" " * n + "x" + " " * n) == " " * n + "x"
assert _without_end_tokens("<|a|>" * (n // 5) + "x<|a|>") == "<|a|>" * (n // 5) + "x"
assert extract_code("```" + " " * n) is None
assert extract_code("<think>" * (n // 7)) is None
assert parse("<tool_call>" * (n // 11)) == ("<tool_call>" * (n // 11), [])
assert parse(("<tool_call>" + '"' + "a" * 20 + "</tool_call>") * (n // 40))[1] == []
assert parse("<tool_call>" + "[" * n + "</tool_call>")[1] == []  # deeper than the JSON decoder's stack: was a RecursionError
assert after_reasoning("</thin" * (n // 6)) == ("</thin" * (n // 6), None)
print("ok")
"""


def test_adversarial_model_output_is_read_in_linear_time():
    done = subprocess.run([sys.executable, "-c", ADVERSARIAL], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("text, expected", [
    (SPAN + "\\boxed{red} <|im_end|>\n<|endoftext|>  ", 1.0),
    (SPAN + "\\boxed{red}<|lvr|>", 0.0),  # a latent token is not an end-of-turn token
    (SPAN + "\\boxed{red}<|im_end|>x", 0.0),
    (SPAN + "\\boxed{red}" + " " * 30_000, 0.0),  # longer than any well-formed response
])
def test_lvr_format_ends_with_end_of_turn_tokens_only(text, expected):
    assert format_reward(text) == expected


def test_the_linear_parsers_read_what_the_patterns_read():
    assert without_thinking("a<think>b</think>c<think>d</think>e<think>f") == "ace<think>f"
    assert extract_code("```   \nx = 1\n```") == "x = 1\n" and extract_code("``` python3 \nx = 2\n```") == "x = 2\n"
    assert parse('<tool_call>{"name": "f"}</tool_call> and <tool_call>{"name": "g"}</tool_call>')[1][1]["function"]["name"] == "g"
    # SAND: the cut is made in the text itself (lowering U+0130 makes it two characters: an index in
    # the lowered text cut the original three characters late)
    assert after_reasoning("İİİ<think>x</think><C>yes</C>") == ("<C>yes</C>", None)
    assert after_reasoning("<THINK>a</Think>b</think>c") == ("c", None)
    assert after_reasoning("<Think>unclosed") == (None, "unclosed reasoning block")
