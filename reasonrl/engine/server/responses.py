"""The Responses API's shapes (POST /v1/responses): the response object, and its stream of typed
events, each sent as `event: TYPE` + `data: {..., "sequence_number": k}`:

    response.created, response.in_progress, response.output_item.added, response.content_part.added,
    response.output_text.delta (one per step with new text), then per tool call
    response.output_item.added, response.function_call_arguments.delta / .done,
    response.output_item.done; at the end response.output_text.done, response.content_part.done,
    response.output_item.done, and response.completed (or response.incomplete when
    max_output_tokens or an abort ended it)

The output is the assistant's message (always the first item, its text possibly empty when the
model only called tools), then one `function_call` item per call (engine/tool_calls.py reads them;
the text before the first call is the message). Text that may still turn out to start a stop
string or a tool call is held back, as on the chat stream.
"""

from __future__ import annotations

from typing import Any

from reasonrl.engine.sequence import RequestOutput
from reasonrl.engine.tool_calls import ToolStream


INCOMPLETE = {"length": "max_output_tokens", "abort": "aborted"}
"""Finish reasons that leave a response incomplete, and the reason its incomplete_details gives
("aborted": stopped by /v1/abort; an aborted answer was reported "completed")."""


def response_object(out: RequestOutput, model: str, created: int, body, prompt_tokens: int, status: str | None = None,
                    text: str | None = None, calls: list[dict] = ()) -> dict[str, Any]:
    """The Responses API's object for one answer: its message `text` (default: the whole output) and
    `calls` (OpenAI tool calls); `status` overrides the one the output implies."""
    o = out.outputs[0]
    cut = INCOMPLETE.get(o.finish_reason)
    status = status or ("incomplete" if cut else "completed")
    done = status != "in_progress"
    output = [_message(out.request_id, o.text if text is None else text, status), *map(_function_call, calls)]
    return {"id": f"resp_{out.request_id}", "object": "response", "created_at": created, "model": model,
            "status": status, "error": None,
            "incomplete_details": {"reason": cut} if status == "incomplete" else None,
            "output": output if done else [], "parallel_tool_calls": body.parallel_tool_calls,
            "tool_choice": _tool_choice(body.tool_choice), "tools": _tools(body.tools),
            "temperature": body.temperature, "top_p": body.top_p,
            "usage": None if not done else {
                "input_tokens": prompt_tokens, "output_tokens": len(o.token_ids), "total_tokens": prompt_tokens + len(o.token_ids),
                # the SDK's ResponseUsage requires these; every output token is visible text here (none hidden),
                # and the prompt tokens computed (not served by the prefix cache) are what enters it
                "input_tokens_details": {"cached_tokens": out.num_cached_tokens,
                                         "cache_write_tokens": prompt_tokens - out.num_cached_tokens},
                "output_tokens_details": {"reasoning_tokens": 0}}}


def _message(request_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "message", "id": f"msg_{request_id}", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _function_call(call: dict, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": "fc_" + call["id"].removeprefix("call_"), "call_id": call["id"],
            "name": call["function"]["name"], "arguments": call["function"]["arguments"], "status": status}


def _tool_choice(choice) -> Any:
    if choice is None or isinstance(choice, str):
        return choice or "auto"
    return {"type": "function", "name": choice.function.name}


def _tools(tools) -> list[dict[str, Any]]:
    return [{"type": "function", **t.function.model_dump(exclude_none=True)} for t in tools or []]


class ResponseStream:
    """The events of one streamed response, as its output grows."""

    def __init__(self, model: str, created: int, body, prompt_tokens: int, holdback: int, tools: bool):
        self.model, self.created, self.body, self.prompt_tokens = model, created, body, prompt_tokens
        self.holdback = holdback
        self.tools = ToolStream() if tools else None
        self.number = 0  # sequence_number of the next event
        self.sent = 0  # characters of the output looked at
        self.text = ""  # the message's text sent
        self.started = False

    def events(self, out: RequestOutput) -> list[dict[str, Any]]:
        o = out.outputs[0]
        events = [] if self.started else self._start(out)
        self.started = True
        end = len(o.text) if o.finish_reason else max(self.sent, len(o.text) - self.holdback)
        item = {"item_id": f"msg_{out.request_id}", "output_index": 0, "content_index": 0}
        delta, calls = (o.text[self.sent:end], []) if self.tools is None else \
            self.tools.push(o.text[:end], final=bool(o.finish_reason))
        self.sent = max(self.sent, end)
        if delta:
            self.text += delta
            events.append({"type": "response.output_text.delta", **item, "delta": delta, "logprobs": []})
        first = len(self.tools.calls) - len(calls) if self.tools else 0
        for i, call in enumerate(calls, 1 + first):
            events += _call_events(call, i)
        if o.finish_reason:
            final = self._object(out)
            part = final["output"][0]["content"][0]
            events += [{"type": "response.output_text.done", **item, "text": self.text, "logprobs": []},
                       {"type": "response.content_part.done", **item, "part": part},
                       {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]},
                       {"type": f"response.{final['status']}", "response": final}]
        return [self._numbered(e) for e in events]

    def _start(self, out: RequestOutput) -> list[dict[str, Any]]:
        shell = self._object(out, "in_progress")
        item = {"item_id": f"msg_{out.request_id}", "output_index": 0, "content_index": 0}
        return [{"type": "response.created", "response": shell}, {"type": "response.in_progress", "response": shell},
                {"type": "response.output_item.added", "output_index": 0,
                 "item": {**_message(out.request_id, "", "in_progress"), "content": []}},
                {"type": "response.content_part.added", **item,
                 "part": {"type": "output_text", "text": "", "annotations": []}}]

    def _object(self, out: RequestOutput, status: str | None = None) -> dict[str, Any]:
        text, calls = (None, ()) if self.tools is None else (self.text, self.tools.calls)
        return response_object(out, self.model, self.created, self.body, self.prompt_tokens, status, text, calls)

    def _numbered(self, event: dict[str, Any]) -> dict[str, Any]:
        event["sequence_number"] = self.number
        self.number += 1
        return event

    def error(self, message: str, status: int) -> dict[str, Any]:
        return self._numbered({"type": "error", "code": str(status), "message": message, "param": None})


def _call_events(call: dict, index: int) -> list[dict[str, Any]]:
    """A finished tool call's events: its item, its arguments in one delta, done."""
    item = _function_call(call)
    ids = {"item_id": item["id"], "output_index": index}
    return [{"type": "response.output_item.added", "output_index": index,
             "item": {**_function_call(call, "in_progress"), "arguments": ""}},
            {"type": "response.function_call_arguments.delta", **ids, "delta": item["arguments"]},
            {"type": "response.function_call_arguments.done", **ids, "arguments": item["arguments"]},
            {"type": "response.output_item.done", "output_index": index, "item": item}]
