"""The Responses API's shapes (POST /v1/responses, text): the response object, and its stream of
typed events, each sent as `event: TYPE` + `data: {..., "sequence_number": k}`:

    response.created, response.in_progress, response.output_item.added, response.content_part.added,
    response.output_text.delta (one per step with new text), response.output_text.done,
    response.content_part.done, response.output_item.done, then response.completed (or
    response.incomplete when max_output_tokens ended it)

Text that may still turn out to start a stop string is held back, as on the chat stream.
"""

from __future__ import annotations

from typing import Any

from reasonrl.engine.sequence import RequestOutput


def response_object(out: RequestOutput, model: str, created: int, body, prompt_tokens: int,
                    status: str | None = None) -> dict[str, Any]:
    """The Responses API's object for one text answer (`status` overrides the one its output implies)."""
    o = out.outputs[0]
    status = status or ("incomplete" if o.finish_reason == "length" else "completed")
    text = o.text if status != "in_progress" else ""
    message = _message(out.request_id, text, status)
    return {"id": f"resp_{out.request_id}", "object": "response", "created_at": created, "model": model,
            "status": status, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "output": [message] if status != "in_progress" else [], "parallel_tool_calls": False,
            "tool_choice": "auto", "tools": [], "temperature": body.temperature, "top_p": body.top_p,
            "usage": None if status == "in_progress" else {
                "input_tokens": prompt_tokens, "output_tokens": len(o.token_ids),
                "total_tokens": prompt_tokens + len(o.token_ids)}}


def _message(request_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "message", "id": f"msg_{request_id}", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


class ResponseStream:
    """The events of one streamed response, as its output grows."""

    def __init__(self, model: str, created: int, body, prompt_tokens: int, holdback: int):
        self.model, self.created, self.body, self.prompt_tokens = model, created, body, prompt_tokens
        self.holdback = holdback
        self.number = 0  # sequence_number of the next event
        self.sent = 0  # characters of text sent
        self.started = False

    def events(self, out: RequestOutput) -> list[dict[str, Any]]:
        o = out.outputs[0]
        events = [] if self.started else self._start(out)
        self.started = True
        end = len(o.text) if o.finish_reason else max(self.sent, len(o.text) - self.holdback)
        item = {"item_id": f"msg_{out.request_id}", "output_index": 0, "content_index": 0}
        if end > self.sent:
            events.append({"type": "response.output_text.delta", **item, "delta": o.text[self.sent:end], "logprobs": []})
            self.sent = end
        if o.finish_reason:
            final = self._object(out)
            part = final["output"][0]["content"][0]
            events += [{"type": "response.output_text.done", **item, "text": o.text, "logprobs": []},
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
        return response_object(out, self.model, self.created, self.body, self.prompt_tokens, status)

    def _numbered(self, event: dict[str, Any]) -> dict[str, Any]:
        event["sequence_number"] = self.number
        self.number += 1
        return event

    def error(self, message: str, status: int) -> dict[str, Any]:
        return self._numbered({"type": "error", "code": str(status), "message": message, "param": None})
