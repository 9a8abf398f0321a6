"""POST /v1/responses' request body: text in and out, with function tools. `input` is a string
(one user message) or a list of items: messages (`{"role", "content"}`, content a string or
`input_text`/`output_text` parts), `function_call` items (a call the model made) and
`function_call_output` items (its result). `instructions` becomes a system message. The request
runs as the equivalent chat completion (`chat_body()`); unknown fields (store, metadata, ...) are
ignored with a warning, as on the other endpoints. `previous_response_id` and `conversation` name a
conversation stored on the server, which this one does not keep: refused, never ignored (the answer
would be to a conversation the client did not send)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reasonrl.engine.protocol import OPEN, STRICT
from reasonrl.engine.sampling_params import ParamError

FORMATS = '{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "name": ..., "schema": {...}}'
"""The `text.format` values the Responses API takes (the schema at the top, not in chat's `json_schema`)."""


class ResponsesTool(BaseModel):
    """The Responses API's function tool: the function's fields at the top level. Fields of its own
    (`cache_control`) are ignored with a warning, as a chat tool's are, and never reach the template."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponsesNamedChoice(BaseModel):
    model_config = STRICT
    type: Literal["function"]
    name: str


class ResponsesRequest(BaseModel):
    model_config = OPEN
    model: str | None = Field(None, max_length=1024)
    input: str | list[dict[str, Any]] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=100)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    tools: list[ResponsesTool] | None = Field(None, max_length=256)
    tool_choice: Literal["none", "auto", "required"] | ResponsesNamedChoice | None = None
    parallel_tool_calls: bool = True
    text: dict[str, Any] | None = None
    """{"format": {"type": "text" | "json_object"}} or {"format": {"type": "json_schema", "schema": ...}}."""
    previous_response_id: Any = None
    conversation: Any = None

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data):
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k == "input"}
        return data

    @field_validator("previous_response_id", "conversation")
    @classmethod
    def _stored(cls, value):
        raise ValueError("stored conversations are not supported (this server keeps no responses): send the "
                         "whole conversation as `input`")

    @field_validator("text")
    @classmethod
    def _format(cls, text):
        fmt = text.get("format")
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if fmt is not None and kind not in ("text", "json_object") and \
                not (kind == "json_schema" and isinstance(fmt.get("schema"), dict)):
            raise ParamError("format", f"format must be {FORMATS}")
        return text

    def unknown_fields(self) -> list[str]:
        """The fields this server does not know (ignored with a warning, refused under --strict-api)."""
        return sorted([*(self.model_extra or {}),
                       *(f"tools.{i}.{k}" for i, t in enumerate(self.tools or []) for k in t.model_extra or {})])

    def chat_body(self) -> dict[str, Any]:
        """The same request as a chat completion's body (ValueError naming a malformed input item)."""
        messages = [{"role": "user", "content": self.input}] if isinstance(self.input, str) else chat_messages(self.input)
        if self.instructions:
            messages.insert(0, {"role": "system", "content": self.instructions})
        choice = self.tool_choice
        if isinstance(choice, ResponsesNamedChoice):
            choice = {"type": "function", "function": {"name": choice.name}}
        tools = [{"type": "function", "function": t.model_dump(exclude={"type", *(t.model_extra or ())}, exclude_none=True)}
                 for t in self.tools] if self.tools else None  # a tool's unknown fields (cache_control) ignored
        fields = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_output_tokens,
                  "stream": self.stream, "tools": tools, "tool_choice": choice,
                  "parallel_tool_calls": self.parallel_tool_calls, "response_format": self._response_format()}
        return {"model": self.model, "messages": messages, **{k: v for k, v in fields.items() if v is not None}}


    def _response_format(self) -> dict[str, Any] | None:
        """`text.format` as chat's response_format (a json_schema format carries its schema at the top)."""
        fmt = (self.text or {}).get("format")
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            return fmt
        return {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input items -> chat messages: consecutive function calls become one assistant
    message's tool_calls, each output a tool message. A ValueError names a malformed item."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "function_call":
            call = {"id": _text(item, "call_id", i), "type": "function",
                    "function": {"name": _text(item, "name", i), "arguments": _text(item, "arguments", i)}}
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _text(item, "call_id", i), "content": _text(item, "output", i)})
        elif kind == "message":
            messages.append({"role": item.get("role"), "content": _content(item.get("content"), i)})
        else:
            raise ValueError(f"input.{i}: items of type {kind!r} are not supported (message, function_call, "
                             "function_call_output)")
    return messages


def _text(item: dict, key: str, i: int) -> str:
    if not isinstance(item.get(key), str):
        raise ValueError(f"input.{i}.{key} must be a string")
    return item[key]


def _content(content: Any, i: int) -> str | None:
    """A message's content: a string, or input_text/output_text/text parts joined."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"input.{i}.content must be a string or a list of text parts")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text") \
                or not isinstance(part.get("text"), str):
            raise ValueError(f"input.{i}.content: only text parts are supported")
        texts.append(part["text"])
    return "".join(texts)
