"""What a model is told about a kernel task, and how its answer's code is found in its text.

`extract_code` never raises: model output is untrusted. It takes, in order,

1. the last fenced block (```python, ```py or bare ```) that defines the task's function, else
   the last fenced block; an unclosed fence (a truncated answer) runs to the end of the text;
2. the `code` field of a JSON object ({"thought": ..., "code": ...}, GEAK's answer format);
3. the whole text, when it parses as Python and has a @triton.jit kernel;

after dropping any <think>...</think> reasoning. None when there is no code.
"""

from __future__ import annotations

import ast
import json
import re

SYSTEM_PROMPT = (
    "You are an expert GPU programmer who writes Triton kernels. Answer with one complete Python module in a "
    "single ```python code block: its imports (torch, triton, triton.language as tl), the @triton.jit kernel(s), "
    "and the Python function with exactly the requested name and signature. That function must compute its "
    "result with your Triton kernel(s), allocate outputs on the inputs' device, and leave its inputs unchanged. "
    "Do not call the PyTorch operation you are asked to implement, do not print, do not read or write files."
)
# one run of blanks before the newline whether or not a language is named (two runs side by side
# backtrack quadratically over a fence followed by spaces)
FENCE = re.compile(r"```(?:[ \t]*(?:python3|python|py))?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def user_prompt(task) -> str:
    return task.prompt_text()


def messages(task, system: str | None = SYSTEM_PROMPT) -> list[dict[str, str]]:
    out = [{"role": "user", "content": user_prompt(task)}]
    return [{"role": "system", "content": system}, *out] if system else out


def extract_code(response: object, entry: str = "") -> str | None:
    if not isinstance(response, str):
        return None
    try:
        return _extract(without_thinking(response), entry)
    except Exception:  # never raise on model output (a pathological regex input, a JSON bomb, ...)
        return None


def without_thinking(text: str) -> str:
    """`text` without its closed <think>...</think> blocks, and without everything up to a first
    </think> that no <think> opened (the chat template opened it in the prompt: Qwen3-Thinking-2507's,
    R1-Distill's newer one); in linear time (a lazy regex rescans the rest of the text from every
    unclosed <think>)."""
    close = text.find("</think>")
    if close >= 0 and not 0 <= text.find("<think>") < close:
        text = text[close + len("</think>"):]
    parts, pos = [], 0
    while (start := text.find("<think>", pos)) >= 0 and (end := text.find("</think>", start + 7)) >= 0:
        parts.append(text[pos:start])
        pos = end + len("</think>")
    return "".join(parts) + text[pos:]


def _extract(text: str, entry: str) -> str | None:
    blocks = [b.strip() for b in FENCE.findall(text) if b.strip()]
    if blocks:
        defining = [b for b in blocks if entry and re.search(rf"\bdef\s+{re.escape(entry)}\s*\(", b)]
        return (defining or blocks)[-1] + "\n"
    code = _json_code(text)
    if code:
        return code
    if "@triton.jit" in text and _parses(text):
        return text.strip() + "\n"
    return None


def _json_code(text: str, attempts: int = 32) -> str | None:
    start = text.find("{")
    for _ in range(attempts):  # bounded: a text of a million braces must not take a million parses
        if start < 0:
            return None
        try:
            value, _ = json.JSONDecoder().raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict) and isinstance(value.get("code"), str) and value["code"].strip():
            inner = FENCE.findall(value["code"])
            return (inner[-1] if inner else value["code"]).strip() + "\n"
        start = text.find("{", start + 1)
    return None


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
        return True
    except (SyntaxError, ValueError):
        return False
