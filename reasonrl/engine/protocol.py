"""Request bodies of the OpenAI-compatible API, validated strictly.

Nothing is coerced (a boolean is true or false, never "yes" or 1), numbers must be finite and
lists and strings have bounds that keep per-token work small. An explicit null means the field's
default, as the OpenAI spec allows. Unknown top-level fields are collected in `model_extra`: the
server ignores them with a logged warning, as vLLM does (newer OpenAI fields such as `store` or
`metadata`, other servers' extensions), or refuses them under `--strict-api`; so do `stream_options`
and a chat tool with fields of their own (`include_obfuscation`, `continuous_usage_stats`,
`cache_control`): `unknown_fields()` lists them all. Output constraints
(engine/grammar.py): OpenAI's `response_format` (json_object, json_schema), vLLM's `guided_json`,
`guided_regex`, `guided_choice`, `guided_grammar` and `structured_outputs`, and on chat OpenAI's
`tools` with `tool_choice` "required" or a named function (engine/tool_calls.py). The legacy
`functions`/`function_call` would constrain the output too and are refused, never ignored: an
unconstrained answer to a constrained request would be silently wrong. Extensions:
top_k, min_p, min_tokens, repetition_penalty, skip_special_tokens,
ignore_eos, stop_token_ids, include_stop_str_in_output, request_id, return_token_ids, and
`resume` (token ids and log-probs already generated, for APRIL partial rollouts), `prompt_logprobs`
(vLLM's: each prompt token's log-prob, rank and the top-n, per choice). `echo` on completions
returns the prompt before the completion, with the prompt tokens' log-probs when `logprobs` is set.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from reasonrl.config import RENDER_ARGUMENTS
from reasonrl.engine.output_constraints import GUIDED, NamedToolChoice, Tool, structured_output
from reasonrl.engine.sampling_params import INT64_MAX, ParamError, SamplingParams
from reasonrl.engine.structured import StructuredOutput
from reasonrl.engine.tool_calls import call_constraint

MAX_N = 128
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
OPEN = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)  # unknown fields kept aside, see above
LEGACY = {"functions": "tools", "function_call": "tool_choice"}
"""OpenAI's legacy function-calling fields, which would constrain the output: refused, never ignored,
with the field that replaces each."""
TokenId = Annotated[int, Field(ge=0, le=INT64_MAX)]
StopString = Annotated[str, Field(min_length=1, max_length=1024)]
Stop = StopString | Annotated[list[StopString], Field(max_length=16)] | None  # 16 strings at most, not 16 characters


class Resume(BaseModel):
    model_config = STRICT
    token_ids: list[TokenId]
    logprobs: list[float]

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.token_ids) != len(self.logprobs):
            raise ParamError("logprobs", "resume.logprobs must have one entry per resume.token_ids entry")
        return self


class StreamOptions(BaseModel):
    model_config = OPEN  # the SDK's include_obfuscation, vLLM's continuous_usage_stats: ignored, see above
    include_usage: bool = False


class ChatTool(Tool):
    model_config = OPEN  # e.g. cache_control: ignored, see above


class _Common(BaseModel):
    model_config = OPEN
    model: str | None = Field(None, max_length=1024)
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float = Field(1.0, ge=0, le=100)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1, le=INT64_MAX)
    min_p: float = Field(0.0, ge=0, le=1)
    seed: int | None = Field(None, ge=0, le=INT64_MAX)
    stop: Stop = None
    stop_token_ids: list[TokenId] = Field(default_factory=list, max_length=256)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=1024)
    request_id: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")
    return_token_ids: bool = False
    resume: Resume | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0, le=100)
    min_tokens: int = Field(0, ge=0)
    logit_bias: dict[str, float] = Field(default_factory=dict, max_length=1024)
    skip_special_tokens: bool = True
    response_format: dict[str, Any] | None = None
    """OpenAI's: {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}}."""
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    """vLLM's: a Lark or GBNF grammar."""
    guided_decoding_backend: str | None = None
    """vLLM's; accepted and unused (this server has one backend, llguidance)."""
    structured_outputs: dict[str, Any] | None = None
    """vLLM's newer form: one of json, regex, choice, grammar, or json_object: true."""
    functions: Any = None
    function_call: Any = None
    """OpenAI's legacy function calling (LEGACY): a 400 naming the field and its replacement."""

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data):
        """An explicit null is the default (prompt and messages stay required)."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k in ("prompt", "messages")}
        return data

    @field_validator(*LEGACY)
    @classmethod
    def _legacy(cls, value, info: ValidationInfo):
        raise ValueError(f"the legacy function-calling fields are not supported; use {LEGACY[info.field_name]!r} "
                         "(chat completions) instead")

    @model_validator(mode="after")
    def _checks(self):
        if self.resume is not None and self.n != 1:
            raise ParamError("n", "resume needs n=1 (resume one sample at a time)")
        bad = [k for k in self.logit_bias if not (k.isascii() and k.isdigit())]  # "²" and "١" are digits to isdigit
        if bad:
            raise ParamError("logit_bias", f"logit_bias keys must be token ids, got {bad[0]!r}")
        given = self.constraint_fields()
        if len(given) > 1:
            raise ParamError(given[1], f"{given[1]}: give one output constraint, not {' and '.join(given)}")
        return self

    def unknown_fields(self) -> list[str]:
        """The fields this server does not know, dotted (`stream_options.include_obfuscation`)."""
        names = list(self.model_extra or {})
        if self.stream_options is not None:
            names += [f"stream_options.{k}" for k in self.stream_options.model_extra or {}]
        return sorted(names)

    def constraint_fields(self) -> list[str]:
        return [n for n in GUIDED if getattr(self, n) is not None and getattr(self, n) != {"type": "text"}]

    def structured(self) -> StructuredOutput | None:
        """The output constraint the request asks for; a ParamError naming the request's field."""
        given = self.constraint_fields()
        if not given:
            return None
        try:
            return structured_output(given[0], getattr(self, given[0]))
        except ParamError as exc:
            raise ParamError(given[0], f"{given[0]}: {exc}") from None

    def sampling_params(self, max_tokens: int, logprobs: int, prompt_logprobs: int | None = None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              min_p=self.min_p, seed=self.seed, max_tokens=max_tokens, stop=stop,
                              min_tokens=self.min_tokens, presence_penalty=self.presence_penalty,
                              frequency_penalty=self.frequency_penalty, repetition_penalty=self.repetition_penalty,
                              logit_bias={int(k): v for k, v in self.logit_bias.items()},
                              skip_special_tokens=self.skip_special_tokens,
                              stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos,
                              include_stop_str_in_output=self.include_stop_str_in_output, logprobs=logprobs,
                              prompt_logprobs=prompt_logprobs, structured=self.structured())


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    prompt_logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = None
    suffix: None = None

    @model_validator(mode="after")
    def _prompt(self):
        if isinstance(self.prompt, list) and not self.prompt:
            raise ParamError("prompt", "prompt is empty")
        if self.best_of not in (None, self.n):
            raise ParamError("best_of", "best_of is not supported (leave it unset or equal to n)")
        if self.resume is not None and len(self.prompts()) != 1:
            raise ParamError("resume", "resume needs a single prompt")
        return self

    def prompt_logprobs_wanted(self) -> int | None:
        """Top-n prompt log-probs the response needs: `prompt_logprobs`, or `logprobs` when echoing."""
        if self.prompt_logprobs is not None:
            return self.prompt_logprobs
        return self.logprobs if self.echo and self.logprobs is not None else None

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or isinstance(p[0], int):
            return [p]
        return list(p)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"message content part of type {part.get('type')!r} is not supported (text only)")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[ChatTool] | None = Field(None, max_length=256)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    """OpenAI's: "auto" (the default with tools) lets the model call tools, "required" or a named
    function makes the output such calls (a grammar), "none" leaves the output as text."""
    parallel_tool_calls: bool = True
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    add_generation_prompt: bool = True
    """vLLM's: open an assistant turn after the messages (the chat template's generation prompt)."""
    continue_final_message: bool = False
    """vLLM's: continue the last (assistant) message instead of starting a new turn."""

    @model_validator(mode="after")
    def _unsupported(self):
        taken = sorted(set(self.chat_template_kwargs) & RENDER_ARGUMENTS)
        if taken:
            raise ParamError("chat_template_kwargs",
                             f"chat_template_kwargs may not set {', '.join(taken)} (the server sets them)")
        if self.continue_final_message and (self.add_generation_prompt or self.messages[-1].role != "assistant"):
            raise ParamError("continue_final_message",
                             "continue_final_message needs add_generation_prompt=false and an assistant message last")
        if self.top_logprobs is not None and not self.logprobs:  # as OpenAI and vLLM refuse it
            raise ParamError("top_logprobs", "top_logprobs needs logprobs: true")
        return self

    @model_validator(mode="after")
    def _tools(self):
        forced = self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)
        if forced and not self.tools:
            raise ParamError("tool_choice", "tool_choice: a required or named tool choice needs tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in self.tool_names():
            raise ParamError("tool_choice", f"tool_choice: no tool is named {self.tool_choice.function.name!r}")
        if forced and self.constraint_fields():
            field = self.constraint_fields()[0]
            raise ParamError(field, f"{field}: a required or named tool_choice already constrains the output")
        return self

    def unknown_fields(self) -> list[str]:
        return sorted([*super().unknown_fields(),
                       *(f"tools.{i}.{k}" for i, t in enumerate(self.tools or []) for k in t.model_extra or {})])

    def tool_names(self) -> list[str]:
        return [t.function.name for t in self.tools or []]

    @property
    def calls_tools(self) -> bool:
        """The output is read for tool calls (tools given and tool_choice is not "none")."""
        return bool(self.tools) and self.tool_choice != "none"

    def structured(self) -> StructuredOutput | None:
        if self.tools and (self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)):
            name = self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None
            return call_constraint([t.function.model_dump() for t in self.tools], name, self.parallel_tool_calls)
        return super().structured()


class AbortRequest(BaseModel):
    model_config = STRICT
    request_id: str | None = Field(None, min_length=1, max_length=256)
    all: bool = False

    @model_validator(mode="after")
    def _one(self):
        if (self.request_id is None) == (not self.all):
            raise ValueError("give either request_id or all=true")
        return self


class LoadWeightsRequest(BaseModel):
    model_config = STRICT
    path: str = Field(min_length=1, max_length=4096, pattern=r"^[^\x00]+$")


class TokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's): a prompt, or chat messages rendered with the chat template."""

    model_config = STRICT
    model: str | None = Field(None, max_length=1024)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self


class DetokenizeRequest(BaseModel):
    model_config = STRICT
    model: str | None = Field(None, max_length=1024)
    tokens: list[TokenId] = Field(max_length=1 << 20)
