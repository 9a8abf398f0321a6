"""Paged decode attention in Triton: one query token per sequence, keys and values read in place
from the block table (no gathered copy).

One program per (sequence, KV head) handles all query heads of that KV head's GQA group, so each
key/value block is loaded once per group. Softmax is computed online over blocks (flash-decoding
without the split over the context; long contexts at small batch would add a split-K pass).
Runs under `TRITON_INTERPRET=1` on CPU for tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def query_group(q_ptr, b, kv_head, stride_qb, stride_qh, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                HEAD_DIM: tl.constexpr):
    """The queries of sequence b's heads that share KV head `kv_head`, padded to GROUP_PAD rows, and
    an empty online-softmax state -> (heads, g_ok: which rows are real, q, m, l, acc)."""
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM)
    g_ok = g < GROUP
    heads = kv_head * GROUP + g
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=g_ok[:, None], other=0.0)
    m = tl.full((GROUP_PAD,), -1e30, dtype=tl.float32)  # running max (finite: exp(m - m_new) stays defined)
    l = tl.zeros((GROUP_PAD,), dtype=tl.float32)  # running softmax denominator
    acc = tl.zeros((GROUP_PAD, HEAD_DIM), dtype=tl.float32)
    return heads, g_ok, q, m, l, acc


@triton.jit
def online_softmax(q, k, v, t_ok, m, l, acc, scale, PRECISION: tl.constexpr):
    """Folds one block into the running max m, denominator l and output acc of the query group."""
    s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION) * scale  # (GROUP_PAD, BLOCK)
    s = tl.where(t_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    p = tl.exp(s - m_new[:, None])
    alpha = tl.exp(m - m_new)
    l = l * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=PRECISION)
    return m_new, l, acc


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, lens_ptr, scale,
    stride_qb, stride_qh, stride_kb, stride_kt, stride_kh, stride_tb, stride_ob, stride_oh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    ctx = tl.load(lens_ptr + b)
    d = tl.arange(0, HEAD_DIM)
    t = tl.arange(0, BLOCK)
    heads, g_ok, q, m, l, acc = query_group(q_ptr, b, kv_head, stride_qb, stride_qh, GROUP, GROUP_PAD, HEAD_DIM)
    for i in range(0, tl.cdiv(ctx, BLOCK)):
        block = tl.load(tables_ptr + b * stride_tb + i).to(tl.int64)
        t_ok = i * BLOCK + t < ctx
        offs = block * stride_kb + t[:, None] * stride_kt + kv_head * stride_kh + d[None, :]
        k = tl.load(k_ptr + offs, mask=t_ok[:, None], other=0.0)  # (BLOCK, D)
        v = tl.load(v_ptr + offs, mask=t_ok[:, None], other=0.0)
        m, l, acc = online_softmax(q, k, v, t_ok, m, l, acc, scale, PRECISION)
    out = acc / l[:, None]
    tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=g_ok[:, None])


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """q (B, Hq, D); k_cache, v_cache (blocks, block_size, Hkv, D); block_tables (B, max_blocks) int32;
    context_lens (B,) int32 -> (B, Hq, D)."""
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    q = q.contiguous()
    out = torch.empty_like(q)
    grid = (batch, num_kv_heads)
    _paged_decode_kernel[grid](
        q, k_cache, v_cache, out, block_tables, context_lens, scale or head_dim ** -0.5,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK=block_size,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return out
