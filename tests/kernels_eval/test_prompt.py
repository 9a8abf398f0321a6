"""extract_code: code is found in the shapes models write it in; nothing else raises or matches."""

import pytest

from reasonrl.envs.kernels.prompt import SYSTEM_PROMPT, extract_code, messages
from reasonrl.envs.kernels.suite import get_task

CODE = "import triton\n\n@triton.jit\ndef k(x):\n    pass\n\ndef add(x, y):\n    return x\n"


@pytest.mark.parametrize("text,expected", [
    (f"Here it is:\n```python\n{CODE}```\nDone.", CODE),
    (f"```py\n{CODE}```", CODE),
    (f"```\n{CODE}```", CODE),
    (f"<think>```python\nwrong = 1\n```</think>\n```python\n{CODE}```", CODE),
    # the prompt opened the reasoning (Qwen3-Thinking-2507's template, R1-Distill's newer one): a draft in it was graded
    ("```python\nwrong = 1\n```</think>\nNo kernel this time.", None),
    (f"```python\nwrong = 1\n```\n</think>\n```python\n{CODE}```", CODE),
    (f"```python\nhelper = 1\n```\n```python\n{CODE}```\n```python\nprint('usage')\n```", CODE),  # the block with add
    (f"```python\n{CODE}", CODE),  # truncated: the fence never closes
    ('{"thought": "tile it", "code": "import triton\\n@triton.jit\\ndef k(x):\\n    pass\\n"}',
     "import triton\n@triton.jit\ndef k(x):\n    pass\n"),
    (CODE, CODE),  # bare code that parses and has a kernel
    ("I cannot help with that.", None),
    ("def add(x, y): return x + y", None),  # no fence, no kernel: not taken as an answer
    ("", None),
    ("{" * 100_000, None),
    (None, None),
    (12, None),
])
def test_extract_code(text, expected):
    assert extract_code(text, "add") == expected


def test_messages_carry_the_format_and_the_signature():
    task = get_task("softmax")
    system, user = messages(task)
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert task.signature in user["content"] and task.instruction in user["content"]
    assert [m["role"] for m in messages(task, system=None)] == ["user"]
