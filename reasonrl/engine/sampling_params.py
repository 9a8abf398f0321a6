"""`SamplingParams`: how one request is decoded. Validated on construction; errors name the field.

Every number is checked against what the engine can represent, so that no request can make a
step fail: seeds and top-k go into int64 tensors (a per-sample seed is `seed + i`), temperatures
divide float32 logits (a positive temperature below `MIN_TEMPERATURE` can overflow them).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from reasonrl.config import is_number
from reasonrl.engine.structured import StructuredOutput

INT64_MAX = (1 << 63) - 1
MIN_TEMPERATURE = 1e-2
"""Smallest positive temperature: logits / T must stay finite in float32 (vLLM clamps to the same)."""
MAX_TEMPERATURE = 1e4


def stable_seed(*parts, bits: int = 30) -> int:
    """A seed that is a pure function of `parts` (the same on every run, machine and Python: not
    `hash`), below 2**bits; the default 30 bits fit any server's int, with room for `seed + i`."""
    return zlib.crc32(":".join(map(str, parts)).encode()) & ((1 << bits) - 1)


@dataclass(slots=True)
class SamplingParams:
    n: int = 1
    """Samples per prompt. Sample i of a seeded request uses seed `seed + i`."""
    temperature: float = 1.0
    """0 means greedy; otherwise in [0.01, 10000] (a smaller one overflows float32 logits)."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 or -1 keeps all."""
    top_p: float = 1.0
    """Keep the smallest set of most likely tokens whose probability reaches top_p; 1.0 keeps all."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the most likely token's."""
    seed: int | None = None
    """Per-request seed: outputs then do not depend on batching, preemption or abort/resume. Unset (the
    default), the engine draws the request's seed from its generator, seeded with EngineConfig.seed (0
    unless set): the same requests sent in the same order repeat their outputs, but each one depends
    on its place in that order."""
    max_tokens: int = 256
    """Response tokens, counting tokens a resumed request already carries."""
    stop: list[str] = field(default_factory=list)
    """Stop when the text ends with one of these strings (left out of the text)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Stop after one of these token ids (kept in the output's token ids), besides the end-of-sequence
    tokens; a stop token's text is left out of the text, as a stop string's is."""
    ignore_eos: bool = False
    """Keep generating past the end-of-sequence token (until max_tokens)."""
    include_stop_str_in_output: bool = False
    """Keep the matched stop string, or the stop token's text, in the text (vLLM's rule)."""
    min_tokens: int = 0
    """Response tokens before end-of-sequence or a stop token may end it (they are masked until then)."""
    presence_penalty: float = 0.0
    """Subtracted from the logit of every token the response already holds, in [-2, 2] (OpenAI's)."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time the response holds it, in [-2, 2] (OpenAI's)."""
    repetition_penalty: float = 1.0
    """Divides positive (multiplies negative) logits of tokens in the prompt or response; 1 is off (CTRL's)."""
    logit_bias: dict[int, float] = field(default_factory=dict)
    """Token id -> number added to its logit, in [-100, 100]."""
    skip_special_tokens: bool = True
    """Leave special tokens out of the output text."""
    logprobs: int = 0
    """Also return the top-n log-probs per position; the sampled token's log-prob is always returned."""
    prompt_logprobs: int | None = None
    """Also return each prompt token's log-prob under the model (log_softmax of the raw logits, T = 1),
    with the top-n at each prompt position; None skips them. Computed at prefill, so such a request
    does not read the prefix cache (its prompt is computed, not reused)."""
    detokenize: bool = True
    """Build the output text as tokens arrive (off when only token ids are needed)."""
    speculative: bool = True
    """Decode with the engine's draft head, when it has one (the output distribution is the same)."""
    structured: StructuredOutput | None = None
    """Constrain the output to a JSON schema, regex, choice or grammar (engine/grammar.py); None is free text."""

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        _check(_is_int(self.n) and 1 <= self.n <= 1 << 20, "n", self.n, "an integer in [1, 2^20]")
        t = self.temperature
        _check(is_number(t) and (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE), "temperature", t,
               f"0 (greedy) or a number in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE:g}]")
        _check(_is_int(self.top_k) and -1 <= self.top_k <= INT64_MAX, "top_k", self.top_k, "an integer in [-1, 2^63)")
        _check(is_number(self.top_p) and 0 < self.top_p <= 1, "top_p", self.top_p, "in (0, 1]")
        _check(is_number(self.min_p) and 0 <= self.min_p <= 1, "min_p", self.min_p, "in [0, 1]")
        _check(self.seed is None or (_is_int(self.seed) and 0 <= self.seed <= INT64_MAX - (self.n - 1)), "seed",
               self.seed, "a non-negative integer with seed + n - 1 < 2^63")
        _check(_is_int(self.max_tokens) and 1 <= self.max_tokens <= INT64_MAX, "max_tokens", self.max_tokens,
               "an integer >= 1")
        _check(isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop), "stop", self.stop,
               "a list of non-empty strings")
        _check(isinstance(self.stop_token_ids, list) and all(_is_int(t) and 0 <= t <= INT64_MAX for t in self.stop_token_ids),
               "stop_token_ids", self.stop_token_ids, "a list of token ids")
        _check(_is_int(self.min_tokens) and 0 <= self.min_tokens <= self.max_tokens, "min_tokens", self.min_tokens,
               "an integer in [0, max_tokens]")
        for name in ("presence_penalty", "frequency_penalty"):
            _check(is_number(getattr(self, name)) and -2 <= getattr(self, name) <= 2, name, getattr(self, name), "in [-2, 2]")
        _check(is_number(self.repetition_penalty) and 0 < self.repetition_penalty <= 100, "repetition_penalty",
               self.repetition_penalty, "in (0, 100]")
        _check(isinstance(self.logit_bias, dict) and len(self.logit_bias) <= 1024
               and all(_is_int(k) and 0 <= k <= INT64_MAX and is_number(v) and -100 <= v <= 100 for k, v in self.logit_bias.items()),
               "logit_bias", self.logit_bias, "at most 1024 token ids, each mapped to a number in [-100, 100]")
        _check(_is_int(self.logprobs) and 0 <= self.logprobs <= 20, "logprobs", self.logprobs, "an integer in [0, 20]")
        _check(self.prompt_logprobs is None or (_is_int(self.prompt_logprobs) and 0 <= self.prompt_logprobs <= 20),
               "prompt_logprobs", self.prompt_logprobs, "None or an integer in [0, 20]")
        _check(self.structured is None or isinstance(self.structured, StructuredOutput), "structured", self.structured,
               "None or a StructuredOutput")
        # where the constraint's output is complete it allows only the end of sequence, which min_tokens forbids
        _check(self.structured is None or not self.min_tokens, "min_tokens", self.min_tokens,
               "0 with a structured output (the constraint decides where the output ends)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalizes(self) -> bool:
        """Penalties, a bias or min_tokens change the logits before sampling (engine/penalties.py)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias or self.min_tokens)

    @property
    def adjusts_logits(self) -> bool:
        """The logits are changed before sampling: penalties (engine/penalties.py) or a grammar's mask
        (engine/grammar.py). Such a request does not speculate (see engine/spec/speculator.py)."""
        return self.penalizes or self.structured is not None


class ParamError(ValueError):
    """A sampling parameter out of range; `param` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ParamError(name, f"SamplingParams.{name} must be {expected}, got {shown}")
