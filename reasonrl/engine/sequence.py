"""`Sequence`: the engine's state for one sample of one request, and the outputs it reports."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import TYPE_CHECKING

from reasonrl.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from reasonrl.engine.latent import Latents


class SeqStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each token under the distribution it was sampled from
    text: str
    finish_reason: str | None  # "stop", "length", "abort", "error" or None while running
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    top_logprobs: list[dict[int, float]] | None = None
    seed: int = 0  # the seed this sample was drawn with: resubmit with it (n=1) to resume exactly
    latents: Latents | None = None  # the input embeddings of its latent positions (engine/latent.py)


@dataclass
class RequestOutput:
    request_id: str
    prompt_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    prompt_logprobs: list[float | None] | None = None  # each prompt token's log-prob (None for the first)
    prompt_top_logprobs: list[dict[int, float] | None] | None = None  # the top-n at each prompt position
    prompt_ranks: list[int | None] | None = None  # each prompt token's rank in the model's distribution (1 = likeliest)
    error: str | None = None  # why the engine failed this request (finish_reason "error"); others went on


class Sequence:
    def __init__(self, seq_id: int, request_id: str, index: int, prompt_ids: list[int], params: SamplingParams,
                 seed: int, output_ids: list[int] | None = None, output_logprobs: list[float] | None = None):
        self.seq_id = seq_id
        self.request_id = request_id
        self.index = index  # position among the request's n samples
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.seed = seed
        # A resumed request arrives with tokens already generated: they are re-prefilled, and their
        # log-probs are kept as they were (the behaviour policy's), never recomputed.
        self.output_ids: list[int] = list(output_ids or [])
        self.output_logprobs: list[float] = list(output_logprobs or [])
        # a resumed request's given tokens have no top log-probs: an empty entry each keeps the list
        # aligned with output_ids (the i-th entry is the i-th token's)
        self.top_logprobs: list[dict[int, float]] | None = [{} for _ in self.output_ids] if params.logprobs else None
        self.reuse_before: int | None = None  # the prefix cache may serve only tokens before this index
        # Prompt log-probs (params.prompt_logprobs), filled at prefill; only the request's first sample
        # computes them, and it computes its whole prompt (no prefix cache reuse).
        self.prompt_logprobs: list[float | None] | None = None
        self.prompt_top_logprobs: list[dict[int, float] | None] | None = None
        self.prompt_ranks: list[int | None] | None = None
        if params.prompt_logprobs is not None and index == 0:
            self.prompt_logprobs = [None] * len(prompt_ids)
            self.prompt_ranks = [None] * len(prompt_ids)
            self.prompt_top_logprobs = [None] * len(prompt_ids) if params.prompt_logprobs else None
            self.reuse_before = 0
        self.num_resumed = len(self.output_ids)
        self.status = SeqStatus.WAITING
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.text = ""
        self.decoder = None  # IncrementalDecoder when the engine has a tokenizer
        self.guide = None  # engine/grammar.py's matcher when params.structured constrains the output
        self.block_table: list[int] = []
        self.num_computed = 0  # tokens whose keys/values have been computed
        self.num_cached = 0  # of those, served by the prefix cache at admission
        self.prompt_cached: int | None = None  # prompt tokens the prefix cache served at the first admission
        self.num_evicted = 0  # of those, dropped from the cache by token eviction (engine/eviction.py)
        # Constraints an engine feature puts on scheduling (the scheduler knows no feature):
        self.chunk_boundary: int | None = None  # no prefill chunk crosses this token index
        # its blocks are its own: the prefix cache neither serves its tokens nor takes its blocks (token
        # eviction's re-prefill, which must compact them: engine/eviction.py)
        self.private_blocks = False
        # A prompt with images (engine/images.py): the prompt, and what its placeholder tokens hold
        self.mm = None  # MultimodalPrompt: images, M-RoPE positions; None for token ids
        self.content_keys: list[tuple[int, int, bytes]] = []  # (start, stop, key): tokens start..stop-1 hold
        # content their ids do not show (an image's digest); the prefix cache keys blocks by it too
        self.latent = None  # LatentTrack when the engine runs latent reasoning (engine/latent.py)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def cache_len(self) -> int:
        """Cache entries the sequence holds. Token i sits at cache index i, or, once the prompt has been
        evicted, a token after the prompt at i - num_evicted (the kept prompt entries come first)."""
        return self.num_computed - self.num_evicted

    @property
    def num_pending(self) -> int:
        """Tokens whose keys/values are still to be computed (prompt chunks, or the last sample)."""
        return self.num_tokens - self.num_computed

    def token(self, i: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[i] if i < n else self.output_ids[i - n]

    def tokens(self, start: int, end: int) -> list[int]:
        n = len(self.prompt_ids)
        if end <= n:
            return self.prompt_ids[start:end]
        if start >= n:
            return self.output_ids[start - n:end - n]
        return self.prompt_ids[start:] + self.output_ids[:end - n]

    def block_content(self, start: int, end: int) -> tuple:
        """What the prefix cache keys tokens start..end-1 by: their ids, and the keys of what they hold."""
        tokens = tuple(self.tokens(start, end))
        keys = tuple(key for lo, hi, key in self.content_keys if lo < end and hi > start)
        return (*tokens, keys) if keys else tokens

    @property
    def finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    def finish(self, reason: str, stop_reason: int | str | None = None) -> None:
        self.status = SeqStatus.FINISHED
        self.finish_reason = reason
        self.stop_reason = stop_reason

    def output(self) -> CompletionOutput:
        return CompletionOutput(self.index, list(self.output_ids), list(self.output_logprobs), self.text,
                                self.finish_reason, self.stop_reason,
                                None if self.top_logprobs is None else list(self.top_logprobs), self.seed,
                                None if self.latent is None else self.latent.output())
