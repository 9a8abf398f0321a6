"""Batched attention for speculative steps: the target's draft-tree rows padded into one SDPA call
(`KVFormat.attend_short`), the draft's padded attention (`PaddedDraftAttention`) and a catch-up's
newest-row attention (`NewestRowAttention`) equal the one-sequence-at-a-time reference they
replace, with ragged row counts, tree masks and mixed decode/prefill batches (fp32)."""

import torch

from reasonrl.engine.attention import AttentionMetadata, causal_mask
from reasonrl.engine.kv.base import SHORT_QUERIES
from reasonrl.engine.kv.dense import DenseKV
from reasonrl.engine.spec.draft_state import DraftState, NewestRowAttention, PaddedDraftAttention, padded_past
from reasonrl.models.config import ModelConfig

H, KV_H, D, BS = 4, 2, 8, 4


def tree_mask(n: int, g: torch.Generator) -> torch.Tensor:
    """A random tree over n rows: row 0 the root, each row sees itself and its ancestors."""
    parent = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
    mask = torch.eye(n, dtype=torch.bool)
    for i in range(1, n):
        mask[i] |= mask[parent[i]]
    return mask


def reference(kv: DenseKV, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
    out = torch.empty_like(q)
    for b in range(meta.num_seqs):
        lo, hi, ctx = meta.query_start[b], meta.query_start[b + 1], meta.context_lens[b]
        k, v = kv.gather(0, meta.block_tables[b: b + 1], meta.context_lens_t[b: b + 1])
        mask = causal_mask(hi - lo, ctx, meta.masks[b] if meta.masks else None, "cpu")
        o = torch.nn.functional.scaled_dot_product_attention(
            q[lo:hi].transpose(0, 1), k[0, :ctx].transpose(0, 1), v[0, :ctx].transpose(0, 1), attn_mask=mask, enable_gqa=True)
        out[lo:hi] = o.transpose(0, 1)
    return out


def test_target_tree_rows_in_one_padded_call_equal_per_sequence_attention():
    g = torch.Generator().manual_seed(0)
    cfg = ModelConfig("qwen2", 32, 16, 32, 1, H, KV_H, D)
    kv = DenseKV(cfg, num_blocks=64, block_size=BS, device=torch.device("cpu"), dtype=torch.float32)
    kv.allocate()
    kv.cache.normal_(generator=g)
    # a decode row, three trees of different sizes, a prefill chunk and a tree too large to pad
    q_lens, ctxs = [1, 5, 3, 7, 4, SHORT_QUERIES + 6], [9, 14, 6, 20, 11, SHORT_QUERIES + 30]
    masks = [None, tree_mask(5, g), tree_mask(3, g), tree_mask(7, g), None, tree_mask(SHORT_QUERIES + 6, g)]
    tables, nxt = [], 0
    for ctx in ctxs:
        n = -(-ctx // BS)
        tables.append(list(range(nxt, nxt + n)))
        nxt += n
    width = max(map(len, tables))
    meta = AttentionMetadata(torch.zeros(sum(q_lens), dtype=torch.long), [0, *torch.tensor(q_lens).cumsum(0).tolist()], ctxs,
                             torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
                             torch.tensor(ctxs, dtype=torch.int32), masks)
    decode, short, long = meta.row_groups(SHORT_QUERIES)
    assert (decode, short, long) == ([0], [1, 2, 3], [4, 5])
    q = torch.randn(sum(q_lens), H, D, generator=g)
    torch.testing.assert_close(kv.attend(0, q, meta), reference(kv, q, meta), atol=1e-5, rtol=1e-5)
    assert len(meta.cache) == 2  # groups and the padded layout: built once per step, reused by every layer


def draft_states(past_lens: list[int], g: torch.Generator) -> list[DraftState]:
    states = []
    for n in past_lens:
        st = DraftState.at(0)
        if n:
            st.cache.append(torch.randn(n, KV_H, D, generator=g), torch.randn(n, KV_H, D, generator=g))
        states.append(st)
    return states


def past_of(st: DraftState):
    empty = torch.empty(0, KV_H, D)
    return st.cache.view() if st.cache.len else (empty, empty)


def segment_attention(segments, q, k, v) -> torch.Tensor:
    """The reference: segments[b] = (lo, hi, past_k, past_v, mask): rows lo:hi attend past keys, then
    the new rows lo:hi; mask (hi - lo, past + hi - lo) bool, or None for causal."""
    out = torch.empty_like(q)
    for lo, hi, past_k, past_v, mask in segments:
        keys, values = torch.cat([past_k, k[lo:hi]]), torch.cat([past_v, v[lo:hi]])
        if mask is None:
            mask = causal_mask(hi - lo, keys.shape[0], None, q.device)
        out[lo:hi] = torch.nn.functional.scaled_dot_product_attention(
            q[lo:hi].transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1), attn_mask=mask,
            enable_gqa=q.shape[1] != keys.shape[1]).transpose(0, 1)
    return out


def catch_up_segments(states, lengths, no_rows=None):
    """Causal segments of a catch-up by `lengths` new rows after each state's committed rows."""
    segments, lo = [], 0
    for st, n in zip(states, lengths):
        segments.append((lo, lo + n, *(past_of(st) if no_rows is None or st.cache.len else (no_rows, no_rows)), None))
        lo += n
    return segments


def test_draft_catch_up_with_the_same_rows_each_equals_per_sequence_attention():
    g = torch.Generator().manual_seed(1)
    states, lengths = draft_states([5, 0, 12], g), [4, 4, 4]
    q, k, v = (torch.randn(sum(lengths), h, D, generator=g) for h in (H, KV_H, KV_H))
    want = segment_attention(catch_up_segments(states, lengths), q, k, v)
    got = PaddedDraftAttention(*padded_past(states, torch.empty(0, KV_H, D)), rows=4)(0, q, k, v)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_catch_ups_newest_rows_attend_as_in_the_whole_causal_pass():
    """Even contexts in one padded call, uneven ones (a prompt beside a few accepted tokens) one
    sequence at a time: both are the newest rows of the full causal attention."""
    g = torch.Generator().manual_seed(3)
    for past, lengths in (([5, 0, 12], [3, 1, 4]), ([2, 0, 1], [1, 90, 2])):
        states = draft_states(past, g)
        q, k, v = (torch.randn(sum(lengths), h, D, generator=g) for h in (H, KV_H, KV_H))
        newest = torch.tensor(lengths).cumsum(0) - 1
        want = segment_attention(catch_up_segments(states, lengths), q, k, v)[newest]
        got = NewestRowAttention(states, lengths, torch.empty(0, KV_H, D))(q[newest], k, v)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_draft_tree_depth_with_drafted_ancestors_equals_per_sequence_attention():
    g = torch.Generator().manual_seed(2)
    states, k_front, drafted = draft_states([6, 3], g), 3, 4  # frontier of 3, 4 rows drafted at earlier depths
    extra_k, extra_v = torch.randn(2, drafted, KV_H, D, generator=g), torch.randn(2, drafted, KV_H, D, generator=g)
    ancestors = torch.rand(2, k_front, drafted, generator=g) < 0.5
    mask = torch.cat([ancestors, torch.eye(k_front, dtype=torch.bool).expand(2, -1, -1)], 2)
    q, k, v = (torch.randn(2 * k_front, h, D, generator=g) for h in (H, KV_H, KV_H))
    segments = []
    for i, st in enumerate(states):
        pk, pv = past_of(st)
        full = torch.ones(k_front, pk.shape[0] + drafted + k_front, dtype=torch.bool)
        full[:, pk.shape[0]:] = mask[i]
        segments.append((i * k_front, (i + 1) * k_front, torch.cat([pk, extra_k[i]]), torch.cat([pv, extra_v[i]]), full))
    want = segment_attention(segments, q, k, v)
    got = PaddedDraftAttention(*padded_past(states, torch.empty(0, KV_H, D)), mask, extra=(extra_k, extra_v))(0, q, k, v)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
