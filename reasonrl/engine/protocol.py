"""Request bodies of the OpenAI-compatible API, validated strictly.

Unknown fields are rejected (a typo must not silently change sampling), nothing is coerced (a
boolean is true or false, never "yes" or 1), numbers must be finite and lists and strings have
bounds that keep per-token work small. OpenAI fields reasonrl does not implement are accepted
only at their neutral value. Extensions: top_k, min_p,
ignore_eos, stop_token_ids, include_stop_str_in_output, request_id, return_token_ids, and
`resume` (token ids and log-probs already generated, for APRIL partial rollouts), `prompt_logprobs`
(vLLM's: each prompt token's log-prob, rank and the top-n, per choice). `echo` on completions
returns the prompt before the completion, with the prompt tokens' log-probs when `logprobs` is set.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from reasonrl.engine.sampling_params import INT64_MAX, SamplingParams

MAX_N = 128
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
TokenId = Annotated[int, Field(ge=0, le=INT64_MAX)]
StopString = Annotated[str, Field(min_length=1, max_length=1024)]


class Resume(BaseModel):
    model_config = STRICT
    token_ids: list[TokenId]
    logprobs: list[float]

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError("resume.logprobs must have one entry per resume.token_ids entry")
        return self


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class _Common(BaseModel):
    model_config = STRICT
    model: str | None = Field(None, max_length=1024)
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float = Field(1.0, ge=0, le=100)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1, le=INT64_MAX)
    min_p: float = Field(0.0, ge=0, le=1)
    seed: int | None = Field(None, ge=0, le=INT64_MAX)
    stop: StopString | list[StopString] | None = Field(None, max_length=16)
    stop_token_ids: list[TokenId] = Field(default_factory=list, max_length=256)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=1024)
    request_id: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")
    return_token_ids: bool = False
    resume: Resume | None = None
    # OpenAI fields without an implementation here: only their neutral values pass
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="after")
    def _neutral(self):
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ValueError(f"{name} is not supported (only 0)")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        if self.resume is not None and self.n != 1:
            raise ValueError("resume needs n=1 (resume one sample at a time)")
        return self

    def sampling_params(self, max_tokens: int, logprobs: int, prompt_logprobs: int | None = None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              min_p=self.min_p, seed=self.seed, max_tokens=max_tokens, stop=stop,
                              stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos,
                              include_stop_str_in_output=self.include_stop_str_in_output, logprobs=logprobs,
                              prompt_logprobs=prompt_logprobs)


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
            raise ValueError("prompt is empty")
        if self.best_of not in (None, self.n):
            raise ValueError("best_of is not supported (leave it unset or equal to n)")
        if self.resume is not None and len(self.prompts()) != 1:
            raise ValueError("resume needs a single prompt")
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
    tools: list | None = None
    tool_choice: Literal["none", "auto"] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unsupported(self):
        if self.tools:
            raise ValueError("tools are not supported")
        taken = sorted(set(self.chat_template_kwargs) & RENDER_ARGUMENTS)
        if taken:
            raise ValueError(f"chat_template_kwargs may not set {', '.join(taken)} (the server sets them)")
        if self.response_format not in (None, {"type": "text"}):
            raise ValueError("response_format is not supported (text only)")
        return self


RENDER_ARGUMENTS = {"messages", "add_generation_prompt", "tokenize", "bos_token", "eos_token"}


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
