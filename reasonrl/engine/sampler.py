"""Sampling: greedy, temperature, top-k, top-p and min-p sampling with per-sequence seeds.

Sampling is the Gumbel-max trick, argmax(logits / T + g), with the noise g drawn from a
counter-based hash of (sequence seed, output position, token id) rather than a stateful
generator. A token therefore depends only on its sequence's logits, seed and position: not on
what else is in the batch, on preemption, or on an abort followed by a resume.

Reported log-probs are of the distribution the token was drawn from before truncation:
log_softmax(logits / T) (T = 1 for greedy). That is what a trainer computes from the same logits
at the same temperature; top-k/top-p/min-p change which tokens can be drawn, not the reported
values (keep them off for RL rollouts, whose importance ratios assume the full distribution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_M32 = 0xFFFFFFFF


@dataclass
class SamplingBatch:
    """Per-row sampling parameters, as tensors on the logits' device (None in an all-greedy batch:
    `greedy`)."""

    temperature: torch.Tensor | None  # (S,) float, 0 = greedy
    top_k: torch.Tensor | None  # (S,) long, 0 = off
    top_p: torch.Tensor | None  # (S,) float
    min_p: torch.Tensor | None  # (S,) float
    seeds: torch.Tensor | None  # (S,) long
    steps: torch.Tensor | None  # (S,) long: index of the token being sampled within the response
    num_top: int = 0  # top-n log-probs to return
    any_filter: bool = False
    all_greedy: bool | None = None  # known on the host (saves reading `temperature` back); None: look

    @classmethod
    def greedy(cls, num_top: int = 0) -> SamplingBatch:
        """Every row greedy: nothing per row is needed (no host-to-device copy, no noise)."""
        return cls(None, None, None, None, None, None, num_top=num_top, all_greedy=True)


def _fmix(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _M32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _M32
    return x ^ (x >> 16)


def _key(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """(S,) a 32-bit hash of each (seed, step): the root of every random draw at that step. Seed and
    step go through different salted functions: with one and the same (fmix, whose fixed point is
    0), a seed below 2^32 made the key symmetric, (a, b) drawing as (b, a) and (s, s) always as 0,
    so the samples of a request with n > 1 (seeds s, s + 1, ...) shared their noise."""
    seed_part = _fmix(_fmix(((seeds >> 32) & _M32) ^ 0x243F6A88) ^ (seeds & _M32))
    step_part = _fmix((steps * 0x9E3779B9 + 0x7F4A7C15) & _M32)
    return _fmix(seed_part ^ step_part)


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """(S, V) float32 standard Gumbel noise, a pure function of (seed, step, token id)."""
    key = _key(seeds, steps)[:, None]  # (S, 1)
    idx = torch.arange(vocab, device=seeds.device, dtype=torch.int64)[None, :]
    bits = _fmix(key ^ _fmix((idx * 0x9E3779B9) & _M32))
    bits = _fmix(bits ^ key)  # a second round decorrelates neighbouring token ids
    u = (bits.double() + 0.5) / 4294967296.0  # in (0, 1)
    return (-torch.log(-torch.log(u))).float()


def uniform(seeds: torch.Tensor, steps: torch.Tensor, salt: int) -> torch.Tensor:
    """(S,) float64 uniforms in (0, 1), a pure function of (seed, step, salt); independent of the
    Gumbel noise of the same (seed, step) for salt > 0 (speculative decoding's acceptance coins)."""
    key = _key(seeds, steps)
    bits = _fmix(_fmix(key ^ _fmix((0x7F4A7C15 * (salt + 1)) & _M32)) ^ key)
    return (bits.double() + 0.5) / 4294967296.0


def filter_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Mask to -inf what top-k, top-p and min-p exclude. logits (S, V) are already temperature-scaled.
    As vLLM and transformers do: top-k keeps every token tied with the k-th, and top-p is taken over
    the distribution renormalised after top-k (min-p, relative to the top token, is the same either way)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    k = torch.where(batch.top_k > 0, batch.top_k, logits.shape[1]).clamp(max=logits.shape[1])[:, None]
    drop = sorted_logits < sorted_logits.gather(1, k - 1)  # below the k-th largest
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
    # top-p keeps the smallest prefix whose mass reaches p (the token crossing p is kept); p = 1 keeps
    # everything (a float32 cumulative sum reaches 1 before the tail, which would drop it, and then a
    # row without filters would depend on a neighbour that has one)
    drop |= ((probs.cumsum(-1) - probs) >= batch.top_p[:, None]) & (batch.top_p[:, None] < 1)
    drop |= probs < batch.min_p[:, None] * probs[:, :1]
    drop[:, 0] = False  # the most likely token always survives
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def sample(logits: torch.Tensor, batch: SamplingBatch):
    """logits (S, V) -> token ids (S,), their log-probs (S,), and (ids, log-probs) of the top-n or None."""
    logits = logits.float()
    tokens = logits.argmax(-1)
    if batch.all_greedy:  # known on the host: log-probs at T = 1, the same values as dividing by 1
        logprobs = logits.log_softmax(-1)
    else:
        greedy = batch.temperature == 0
        temp = torch.where(greedy, torch.ones_like(batch.temperature), batch.temperature)[:, None]
        scaled = logits / temp
        logprobs = scaled.log_softmax(-1)
        if batch.all_greedy is False or not bool(greedy.all()):  # None: read the rows
            candidates = filter_logits(scaled, batch) if batch.any_filter else scaled
            drawn = (candidates + gumbel_noise(batch.seeds, batch.steps, logits.shape[1])).argmax(-1)
            tokens = torch.where(greedy, tokens, drawn)
    token_logprobs = logprobs.gather(1, tokens[:, None])[:, 0]
    top = logprobs.topk(batch.num_top, dim=-1) if batch.num_top else None
    return tokens, token_logprobs, (None if top is None else (top.indices, top.values))
