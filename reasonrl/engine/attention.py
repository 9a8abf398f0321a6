"""Attention over the paged KV cache: the metadata of one step, and the callable the model runs.

`PagedAttention` is what the model's layers call during inference (see `models/model.py`): it
writes the new tokens' keys and values into the cache, then lets the KV format attend. Writes for
every sequence happen before any attention, so a sequence may read prefix blocks another
sequence fills in the same step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    cache: dict = field(default_factory=dict, repr=False)
    """What the attention derives from this metadata once per step and reuses in every layer."""

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)

    @property
    def decode_only(self) -> bool:
        return self.query_start[-1] == self.num_seqs and not any(m is not None for m in self.masks or ())

    def q_len(self, b: int) -> int:
        return self.query_start[b + 1] - self.query_start[b]

    def row_groups(self, short: int) -> tuple[list[int], list[int], list[int]]:
        """Sequences by how they attend: decode rows (one query, no mask), draft trees of at most
        `short` rows, the rest (prefill chunks, larger trees)."""
        key = ("groups", short)
        if key not in self.cache:
            masks = self.masks or [None] * self.num_seqs
            decode = [b for b in range(self.num_seqs) if self.q_len(b) == 1 and masks[b] is None]
            trees = [b for b in range(self.num_seqs) if masks[b] is not None and self.q_len(b) <= short]
            self.cache[key] = decode, trees, sorted(set(range(self.num_seqs)) - set(decode) - set(trees))
        return self.cache[key]

    def padded_queries(self, seqs: list[int], device) -> PaddedQueries:
        key = ("padded", tuple(seqs))
        if key not in self.cache:
            self.cache[key] = PaddedQueries.build(self, seqs, device)
        return self.cache[key]


@dataclass
class PaddedQueries:
    """Several sequences' query rows as one padded batch (B sequences, Q rows each at most)."""

    idx: torch.Tensor  # (B,) the sequences' indices in the step
    rows: torch.Tensor  # (B, Q) row of q for each slot; padding repeats the sequence's first row
    valid: torch.Tensor  # (B, Q) bool: the slot holds a real row
    mask: torch.Tensor  # (B, Q, S) bool, S the longest context: who each slot attends to
    max_ctx: int
    tables: torch.Tensor  # (B, max_blocks) the sequences' block tables
    lens: torch.Tensor  # (B,) their context lengths
    out_rows: torch.Tensor  # rows of q of the real slots, in the order of `valid`'s True entries

    @classmethod
    def build(cls, meta: AttentionMetadata, seqs: list[int], device) -> PaddedQueries:
        lens = [meta.q_len(b) for b in seqs]
        q_max, s_max = max(lens), max(meta.context_lens[b] for b in seqs)
        starts = torch.tensor([meta.query_start[b] for b in seqs], device=device)
        valid = torch.arange(q_max, device=device)[None, :] < torch.tensor(lens, device=device)[:, None]
        rows = torch.where(valid, starts[:, None] + torch.arange(q_max, device=device)[None, :], starts[:, None])
        mask = torch.zeros(len(seqs), q_max, s_max, dtype=torch.bool, device=device)
        mask[:, :, 0] = True  # padding rows attend to something (no NaN); their output is dropped
        for i, (b, n) in enumerate(zip(seqs, lens)):  # the tree masks live on the device already
            mask[i, :n, : meta.context_lens[b]] = causal_mask(n, meta.context_lens[b], meta.masks[b], device)
        idx = torch.tensor(seqs, device=device)
        return cls(idx, rows, valid, mask, s_max, meta.block_tables[idx], meta.context_lens_t[idx], rows[valid])


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
