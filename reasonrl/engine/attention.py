"""Attention over the paged KV cache: the metadata of one step, and the callable the model runs.

`PagedAttention` is what the model's layers call during inference (see `models/model.py`): it
writes the new tokens' keys and values into the cache, then lets the KV format attend. Writes for
every sequence happen before any attention, so a sequence may read prefix blocks another
sequence fills in the same step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (N,) cache slot (block * block_size + offset) of each new token
    query_start: list[int]  # (B + 1,) sequence b's new tokens are rows query_start[b]:query_start[b + 1]
    context_lens: list[int]  # (B,) tokens in the cache for sequence b once this step's are written
    block_tables: torch.Tensor  # (B, max_blocks) int32, padded with 0
    context_lens_t: torch.Tensor  # (B,) int32, context_lens on the device
    masks: list[torch.Tensor | None] | None = None
    """Per sequence, an optional (q_len, q_len) bool mask among its new tokens (True = may attend),
    e.g. a draft tree; None is causal. Tokens already in the cache are always visible."""

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)

    @property
    def decode_only(self) -> bool:
        return self.query_start[-1] == self.num_seqs and not any(m is not None for m in self.masks or ())

    def q_len(self, b: int) -> int:
        return self.query_start[b + 1] - self.query_start[b]


class PagedAttention:
    def __init__(self, kv, meta: AttentionMetadata):
        self.kv, self.meta = kv, meta

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.kv.write(layer, self.meta.slot_mapping, k, v)
        return self.kv.attend(layer, q, self.meta)


def causal_mask(q_len: int, ctx_len: int, mask: torch.Tensor | None, device) -> torch.Tensor:
    """(q_len, ctx_len) bool: the new tokens are the last q_len of the context."""
    full = torch.ones(q_len, ctx_len, dtype=torch.bool, device=device)
    new = mask if mask is not None else torch.ones(q_len, q_len, dtype=torch.bool, device=device).tril()
    full[:, ctx_len - q_len:] = new
    return full
