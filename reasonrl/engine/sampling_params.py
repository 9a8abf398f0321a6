"""`SamplingParams`: how one request is decoded. Validated on construction; errors name the field."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SamplingParams:
    n: int = 1
    """Samples per prompt. Sample i of a seeded request uses seed `seed + i`."""
    temperature: float = 1.0
    """0 means greedy."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 or -1 keeps all."""
    top_p: float = 1.0
    """Keep the smallest set of most likely tokens whose probability reaches top_p; 1.0 keeps all."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the most likely token's."""
    seed: int | None = None
    """Per-request seed: outputs then do not depend on batching, preemption or abort/resume."""
    max_tokens: int = 256
    """Response tokens, counting tokens a resumed request already carries."""
    stop: list[str] = field(default_factory=list)
    """Stop when the text ends with one of these strings (left out of the text)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Stop after one of these token ids (kept in the output), besides the end-of-sequence tokens."""
    ignore_eos: bool = False
    """Keep generating past the end-of-sequence token (until max_tokens)."""
    include_stop_str_in_output: bool = False
    """Keep the matched stop string in the text."""
    logprobs: int = 0
    """Also return the top-n log-probs per position; the sampled token's log-prob is always returned."""
    detokenize: bool = True
    """Build the output text as tokens arrive (off when only token ids are needed)."""
    speculative: bool = True
    """Decode with the engine's draft head, when it has one (the output distribution is the same)."""

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        _check(isinstance(self.n, int) and self.n >= 1, "n", self.n, "an integer >= 1")
        _check(isinstance(self.temperature, (int, float)) and 0 <= self.temperature < float("inf"),
               "temperature", self.temperature, "a finite number >= 0")
        _check(isinstance(self.top_k, int) and self.top_k >= -1, "top_k", self.top_k, "an integer >= -1")
        _check(isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, "top_p", self.top_p, "in (0, 1]")
        _check(isinstance(self.min_p, (int, float)) and 0 <= self.min_p <= 1, "min_p", self.min_p, "in [0, 1]")
        _check(self.seed is None or (isinstance(self.seed, int) and self.seed >= 0), "seed", self.seed, "a non-negative integer")
        _check(isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens", self.max_tokens, "an integer >= 1")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", self.stop, "a list of non-empty strings")
        _check(all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
               self.stop_token_ids, "a list of token ids")
        _check(isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20, "logprobs", self.logprobs, "an integer in [0, 20]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"SamplingParams.{name} must be {expected}, got {value!r}")
