"""Attention forward (levels 4-5): flash attention (online softmax over key blocks, causal or
not, Tq != Tk) and single-token decode attention with grouped-query heads and per-sequence
lengths over a contiguous cache."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..task import KernelTask, randn

PERF = ((4, 32, 2048, 128),)


@triton.jit
def _flash_kernel(q_ptr, k_ptr, v_ptr, o_ptr, Tq, Tk, scale, CAUSAL: tl.constexpr, D: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr):
    """One program: BM queries of one (batch, head); q (.., Tq, D), k and v (.., Tk, D), contiguous."""
    bh = tl.program_id(1).to(tl.int64)
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + bh * Tq * D + rm[:, None] * D + d[None, :], mask=rm[:, None] < Tq, other=0.0)
    m = tl.full((BM,), -1e30, tl.float32)  # finite: exp(m - m_new) stays defined for masked rows
    l = tl.zeros((BM,), tl.float32)
    acc = tl.zeros((BM, D), tl.float32)
    end = Tk
    if CAUSAL:  # keys after the block's last query are never needed
        end = tl.minimum(Tk, (tl.program_id(0) + 1) * BM)
    for start in range(0, end, BN):
        rn = start + tl.arange(0, BN)
        k = tl.load(k_ptr + bh * Tk * D + rn[:, None] * D + d[None, :], mask=rn[:, None] < Tk, other=0.0)
        v = tl.load(v_ptr + bh * Tk * D + rn[:, None] * D + d[None, :], mask=rn[:, None] < Tk, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale  # (BM, BN)
        ok = rn[None, :] < Tk
        if CAUSAL:
            ok = ok & (rn[None, :] <= rm[:, None])
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION).to(tl.float32)
        m = m_new
    out = acc / l[:, None]
    tl.store(o_ptr + bh * Tq * D + rm[:, None] * D + d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=rm[:, None] < Tq)


def _flash(q, k, v, causal):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    batch, heads, tq, dim = q.shape
    o = torch.empty_like(q)
    grid = (triton.cdiv(tq, 16), batch * heads)
    _flash_kernel[grid](q, k, v, o, tq, k.shape[2], dim ** -0.5, CAUSAL=causal, D=dim, BM=16, BN=16,
                        PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    return o


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _flash(q, k, v, True)


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _flash(q, k, v, False)


@triton.jit
def _decode_kernel(q_ptr, k_ptr, v_ptr, lens_ptr, o_ptr, T, scale, KV_HEADS: tl.constexpr, GROUP: tl.constexpr,
                   GROUP_PAD: tl.constexpr, D: tl.constexpr, BN: tl.constexpr):
    """One program: the GROUP query heads of one (sequence, KV head); k, v (B, KV_HEADS, T, D)."""
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, D)
    heads = kvh * GROUP + g
    q = tl.load(q_ptr + (b * KV_HEADS * GROUP + heads[:, None]) * D + d[None, :], mask=g[:, None] < GROUP,
                other=0.0).to(tl.float32)
    length = tl.load(lens_ptr + b)
    m = tl.full((GROUP_PAD,), -1e30, tl.float32)
    l = tl.zeros((GROUP_PAD,), tl.float32)
    acc = tl.zeros((GROUP_PAD, D), tl.float32)
    base = (b * KV_HEADS + kvh) * T * D
    for start in range(0, length, BN):
        rn = start + tl.arange(0, BN)
        ok = rn < length
        k = tl.load(k_ptr + base + rn[:, None] * D + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        v = tl.load(v_ptr + base + rn[:, None] * D + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        s = tl.sum(q[:, None, :] * k[None, :, :], 2) * scale  # (GROUP_PAD, BN)
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], 1)
        m = m_new
    tl.store(o_ptr + (b * KV_HEADS * GROUP + heads[:, None]) * D + d[None, :], (acc / l[:, None]).to(
        o_ptr.dtype.element_ty), mask=g[:, None] < GROUP)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    batch, q_heads, dim = q.shape
    kv_heads, tokens = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    o = torch.empty_like(q)
    _decode_kernel[(batch, kv_heads)](q, k, v, lengths.contiguous(), o, tokens, dim ** -0.5, KV_HEADS=kv_heads,
                                      GROUP=group, GROUP_PAD=triton.next_power_of_2(group), D=dim, BN=16)
    return o


def _attention_ref(q, k, v, causal):
    s = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if causal:
        tq, tk = s.shape[-2:]
        s = s.masked_fill(torch.ones(tq, tk, dtype=torch.bool).triu(1), float("-inf"))
    return (torch.softmax(s, -1) @ v.float()).to(q.dtype)


def _decode_ref(q, k, v, lengths):
    group = q.shape[1] // k.shape[1]
    out = torch.empty_like(q, dtype=torch.float32)
    for b, n in enumerate(lengths.tolist()):
        keys = k[b, :, :n].float().repeat_interleave(group, 0)  # (Hq, n, D)
        values = v[b, :, :n].float().repeat_interleave(group, 0)
        s = (keys @ q[b].float()[:, :, None])[..., 0] * q.shape[-1] ** -0.5
        out[b] = (torch.softmax(s, -1)[:, None, :] @ values)[:, 0]
    return out.to(q.dtype)


def _qkv(s, d, g):
    return randn(s, d, g), randn(s, d, g), randn(s, d, g)


def _cross_inputs(s, d, g):
    batch, heads, tq, dim = s
    tk = 2 * tq + 3
    return randn(s, d, g), randn((batch, heads, tk, dim), d, g), randn((batch, heads, tk, dim), d, g)


def _decode_inputs(s, d, g):
    batch, q_heads, kv_heads, tokens, dim = s
    lengths = torch.randint(1, tokens + 1, (batch,), generator=g, dtype=torch.int32)
    lengths[0] = tokens  # one sequence uses the whole cache
    kv = (batch, kv_heads, tokens, dim)
    return randn((batch, q_heads, dim), d, g), randn(kv, d, g), randn(kv, d, g), lengths


ATT_SHAPES = ((1, 2, 33, 16), (2, 3, 17, 32), (1, 1, 64, 64))  # (batch, heads, tokens, head_dim)
TASKS = [
    KernelTask(
        "causal_attention", "attention", 4,
        "Causal scaled dot-product attention forward for q, k, v of shape (batch, heads, tokens, head_dim) "
        "(head_dim a power of two): softmax(q k^T / sqrt(head_dim)) v where query i attends to keys 0..i. "
        "Compute in fp32 (online softmax, never materializing the full score matrix) and return the inputs' dtype.",
        "def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor",
        lambda q, k, v: _attention_ref(q, k, v, True), _qkv, (_flash_kernel, _flash, causal_attention), ATT_SHAPES,
        perf_shapes=PERF),
    KernelTask(
        "cross_attention", "attention", 4,
        "Non-causal scaled dot-product attention with different query and key lengths: q (batch, heads, Tq, d), "
        "k and v (batch, heads, Tk, d), d a power of two; softmax(q k^T / sqrt(d)) v computed in fp32 with an "
        "online softmax over key blocks, returned as (batch, heads, Tq, d) in q's dtype.",
        "def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor",
        lambda q, k, v: _attention_ref(q, k, v, False), _cross_inputs, (_flash_kernel, _flash, cross_attention),
        ATT_SHAPES, perf_shapes=PERF),
    KernelTask(
        "decode_attention", "attention", 4,
        "Single-token decode attention with grouped-query heads: q (batch, q_heads, d), caches k and v (batch, "
        "kv_heads, max_tokens, d) with q_heads a multiple of kv_heads (query head h reads KV head h // (q_heads / "
        "kv_heads)), and int32 lengths (batch,): sequence b attends to its first lengths[b] cached tokens. "
        "Return softmax(q k^T / sqrt(d)) v as (batch, q_heads, d) in q's dtype, computed in fp32.",
        "def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor) "
        "-> torch.Tensor",
        _decode_ref, _decode_inputs, (_decode_kernel, decode_attention),
        ((2, 4, 2, 33, 16), (3, 6, 3, 17, 32), (1, 8, 1, 70, 64)), perf_shapes=((64, 32, 8, 4096, 128),)),
]
