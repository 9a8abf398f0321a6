"""Tool calls in model output, in the Hermes format that Qwen2.5's chat template teaches:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

`parse` reads them out of a finished text (the text before the first call is the message's
content), `ToolStream` does the same as text streams in (content up to a possible call start goes
out at once, each call once its block closes), and `call_constraint` is the grammar that makes an
output exactly such calls (OpenAI's tool_choice "required" or a named function). Model output is
untrusted: a block that is not a JSON object with a string "name" and object "arguments" is not a
call, and nothing here raises on it.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from reasonrl.engine.structured import JSON_OPTIONS, StructuredOutput

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def call_constraint(tools: list[dict[str, Any]], name: str | None = None, parallel: bool = True) -> StructuredOutput:
    """A grammar whose outputs are tool calls: one call of `name`, or one or more (one when not
    `parallel`) calls of any of `tools` ({"name", "parameters"} dicts, OpenAI's function objects)."""
    chosen = [t for t in tools if name is None or t["name"] == name]
    schema = {"anyOf": [_call_schema(t) for t in chosen]} if len(chosen) > 1 else _call_schema(chosen[0])
    schema["x-guidance"] = JSON_OPTIONS  # json.dumps' separators, as the chat template writes calls
    call = f'"{_lark_text(OPEN)}\\n" %json {json.dumps(schema)} "\\n{_lark_text(CLOSE)}"'
    repeat = ' ("\\n" call)*' if parallel and name is None else ""
    return StructuredOutput(grammar=f"start: call{repeat}\ncall: {call}\n")


def _call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    params = tool.get("parameters") or {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": tool["name"]}, "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False}


def _lark_text(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def parse(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, OpenAI tool_calls) of a finished output. Without a valid call the whole text is content."""
    at = text.find(OPEN)
    calls = _calls(text[at:], final=True) if at >= 0 else []
    if not calls:
        return text, []
    return (text[:at] if text[:at].strip() else None), calls


def _calls(text: str, final: bool) -> list[dict[str, Any]]:
    """The valid calls of the blocks in `text`; when `final`, an unclosed last block counts too."""
    bodies, pos = [], 0
    while (start := text.find(OPEN, pos)) >= 0 and (end := _block_end(text, start + len(OPEN))) is not None:
        bodies.append(text[start + len(OPEN): end])
        pos = end + len(CLOSE)
    tail = text[pos:]
    if final and OPEN in tail:
        bodies.append(tail[tail.index(OPEN) + len(OPEN):])
    return [c for c in map(_call, bodies) if c is not None]


_JSON, _SPACE = json.JSONDecoder(), re.compile(r"\s*")


def _block_end(text: str, at: int) -> int | None:
    """Where the block whose body starts at `at` closes: after the JSON object there when one parses
    and CLOSE follows it (an argument may hold CLOSE's text inside a string), else at the first CLOSE
    after that object, or after `at` when none parses (None: not closed). Each scan stops at its
    own value's end or first error: linear overall."""
    try:
        _, after = _JSON.raw_decode(text, _SPACE.match(text, at).end())
    except (ValueError, RecursionError):
        after = None
    if after is not None:
        close = _SPACE.match(text, after).end()
        if text.startswith(CLOSE, close):
            return close
    end = text.find(CLOSE, at if after is None else after)  # never inside an object that parsed
    return end if end >= 0 else None


def _call(body: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the decoder's stack
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, dict):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)}}


class ToolStream:
    """One streamed choice: what to send as the text grows. Content goes out up to the point where a
    call may start; each call goes out once its block is closed (or the output ends)."""

    def __init__(self):
        self.content_sent = 0
        self.calls: list[dict[str, Any]] = []

    def push(self, text: str, final: bool) -> tuple[str, list[dict[str, Any]]]:
        """(new content, new calls) for the text so far."""
        at = text.find(OPEN)
        if at < 0:
            end = len(text) if final else len(text) - _partial_suffix(text, OPEN)
        else:
            end = at
        new_calls = _calls(text[at:], final)[len(self.calls):] if at >= 0 else []
        self.calls += new_calls
        if final and at >= 0 and not self.calls:  # no valid call after all: the rest is content
            end = len(text)
        content = text[self.content_sent:end] if end > self.content_sent else ""
        self.content_sent = max(self.content_sent, end)
        return content, new_calls


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
