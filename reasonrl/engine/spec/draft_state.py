"""A sequence's draft context: its one-layer key/value cache (`DraftCache`), what the speculator
knows of it (`DraftState`: target features not yet consumed, the positions its rows cover), and
attention over several sequences' contexts at once (`NewestRowAttention` for a catch-up,
`PaddedDraftAttention` for tree growth)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


class DraftCache:
    """One sequence's draft keys and values, (rows, kv_heads, head_dim), grown by doubling."""

    def __init__(self):
        self.k = self.v = None
        self.len = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        need = self.len + k.shape[0]
        if self.k is None or need > self.k.shape[0]:
            cap = max(64, 2 * need)
            grown_k = k.new_empty(cap, *k.shape[1:])
            grown_v = v.new_empty(cap, *v.shape[1:])
            if self.k is not None:
                grown_k[: self.len], grown_v[: self.len] = self.k[: self.len], self.v[: self.len]
            self.k, self.v = grown_k, grown_v
        self.k[self.len:need], self.v[self.len:need] = k, v
        self.len = need

    def view(self):
        return self.k[: self.len], self.v[: self.len]


@dataclass
class DraftState:
    cache: DraftCache = field(default_factory=DraftCache)
    first: int = -1  # position of the feature of the first draft row (-1: no row yet)
    stacked: torch.Tensor | None = None  # (n, h) target features of positions feature_start .. + n - 1
    feature_start: int = 0
    pending: list = field(default_factory=list)  # (step hidden states, row): features after `stacked`, not copied yet
    last_out: torch.Tensor | None = None  # draft output of the newest committed row
    stored: int = -1  # features of positions below this are in Speculator.block_features (-1: not kept)
    removed: int = 0  # tokens whose draft rows the visual compressor took away

    @property
    def rows_end(self) -> int:
        """Position of the feature the next committed row takes (its token is the one after)."""
        return self.first + self.cache.len + self.removed

    @classmethod
    def at(cls, start: int) -> DraftState:
        """A draft context that begins at position `start`."""
        return cls(first=start, feature_start=start)

    @property
    def features(self) -> torch.Tensor | None:
        """(n, h) every feature held, from feature_start on (the pending rows copied in now)."""
        if self.pending:
            new = torch.stack([hidden[row] for hidden, row in self.pending])
            self.stacked = new if self.stacked is None else torch.cat([self.stacked, new])
            self.pending = []
        return self.stacked

    @property
    def num_features(self) -> int:
        return (0 if self.stacked is None else self.stacked.shape[0]) + len(self.pending)

    def add_features(self, f: torch.Tensor) -> None:
        self.stacked = f if self.features is None else torch.cat([self.features, f])

    def add_row(self, hidden: torch.Tensor, row: int) -> None:
        """One decode step's feature, row `row` of the step's hidden states: kept by reference (a
        step without trees costs the draft a list append), copied 16 at a time so few steps'
        hidden states stay alive."""
        self.pending.append((hidden, row))
        if len(self.pending) >= 16:
            _ = self.features

    def drop_features_before(self, position: int) -> None:
        rest = self.features[position - self.feature_start:]
        self.stacked, self.feature_start = (rest if rest.shape[0] else None), position


class NewestRowAttention:
    """A catch-up's attention (`DraftHead.decode_newest`): each sequence's newest row over its
    committed rows and all its new ones. Contexts of similar length go to one padded SDPA call; very
    uneven ones (a prompt next to a few accepted tokens) one sequence at a time, so that padding
    never more than doubles what is attended."""

    def __init__(self, states: list[DraftState], lengths: list[int], no_rows: torch.Tensor):
        self.pasts = [st.cache.view() if st.cache.len else (no_rows, no_rows) for st in states]
        self.lengths = lengths

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Hq, D) of the newest rows; k, v (N, Hkv, D) of every new row -> (B, Hq, D)."""
        bounds = list(itertools.accumulate(self.lengths, initial=0))
        keys = [torch.cat([pk, k[lo:hi]]) for (pk, _), lo, hi in zip(self.pasts, bounds, bounds[1:])]
        values = [torch.cat([pv, v[lo:hi]]) for (_, pv), lo, hi in zip(self.pasts, bounds, bounds[1:])]
        sizes = [t.shape[0] for t in keys]
        if len(sizes) * max(sizes) > 2 * sum(sizes):
            return torch.cat([_attend(q[b: b + 1], keys[b], values[b], None) for b in range(len(keys))])
        seen = torch.arange(max(sizes), device=q.device)[None, :] < torch.tensor(sizes, device=q.device)[:, None]
        padded_k, padded_v = (torch.nn.utils.rnn.pad_sequence(t, batch_first=True).transpose(1, 2) for t in (keys, values))
        o = F.scaled_dot_product_attention(q[:, :, None], padded_k, padded_v, attn_mask=seen[:, None, None],
                                           enable_gqa=q.shape[1] != k.shape[1])
        return o[:, :, 0]


def _attend(q, keys, values, mask):
    """q (n, Hq, D), keys/values (ctx, Hkv, D), mask (n, ctx) -> (n, Hq, D)."""
    o = F.scaled_dot_product_attention(q.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1), attn_mask=mask,
                                       enable_gqa=q.shape[1] != keys.shape[1])
    return o.transpose(0, 1)


class PaddedDraftAttention:
    """Draft attention for many sequences with the same number of new rows each, in one SDPA call.

    Sequence b's new rows attend its committed draft rows (`past`, padded to the longest: keys
    (B, P, H, D) and their count per sequence), then `extra` keys every sequence has the same
    number of (a tree's frontier rows drafted at earlier depths, (B, X, H, D)), then its own new
    rows; `mask` (B, n, X + n) says which of the extra and new ones each new row sees (None:
    causal among `rows` new rows each, no extra)."""

    def __init__(self, past_k: torch.Tensor, past_v: torch.Tensor, past_lens: torch.Tensor, mask: torch.Tensor | None = None,
                 extra: tuple[torch.Tensor, torch.Tensor] | None = None, rows: int | None = None):
        self.past_k, self.past_v, self.extra = past_k, past_v, extra
        b, p, dev = past_k.shape[0], past_k.shape[1], past_k.device
        n = rows if mask is None else mask.shape[1]
        if mask is None:
            mask = torch.ones(n, n, dtype=torch.bool, device=dev).tril().expand(b, n, n)
        seen = (torch.arange(p, device=dev)[None, :] < past_lens[:, None])[:, None, :].expand(b, n, p)
        self.mask = torch.cat([seen, mask], 2)[:, None]  # (B, 1, n, P + X + n)
        self.new_k = self.new_v = None

    def __call__(self, layer, q, k, v):
        self.new_k, self.new_v = k, v
        b = self.past_k.shape[0]
        q, k, v = (t.view(b, -1, *t.shape[1:]) for t in (q, k, v))  # flat rows (N, H, D) -> (B, n, H, D)
        keys = [self.past_k, *([self.extra[0]] if self.extra else []), k]
        values = [self.past_v, *([self.extra[1]] if self.extra else []), v]
        o = F.scaled_dot_product_attention(q.transpose(1, 2), torch.cat(keys, 1).transpose(1, 2),
                                           torch.cat(values, 1).transpose(1, 2), attn_mask=self.mask,
                                           enable_gqa=q.shape[2] != k.shape[2]).transpose(1, 2)  # (B, n, Hq, D)
        return o.reshape(-1, *o.shape[2:])


def padded_past(states: list[DraftState], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The committed draft keys and values of several sequences, padded to the longest: k, v
    (B, P, H, D) and the row count of each (B,)."""
    views = [st.cache.view() if st.cache.len else (like[:0], like[:0]) for st in states]
    lens = torch.tensor([k.shape[0] for k, _ in views], device=like.device)
    k = torch.nn.utils.rnn.pad_sequence([k for k, _ in views], batch_first=True)
    v = torch.nn.utils.rnn.pad_sequence([v for _, v in views], batch_first=True)
    return k, v, lens
