"""Rotary position embeddings (level 3): the rotate-half (GPT-NeoX, Llama) and interleaved (GPT-J)
layouts. One program per (batch, position) rotates every head of that token."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..task import KernelTask, randn

SHAPES = ((1, 7, 3, 16), (2, 33, 4, 64), (3, 5, 5, 34))  # (batch, tokens, heads, head_dim); 34: odd half
PERF = ((8, 2048, 32, 128),)


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, tokens, heads, HALF: tl.constexpr, INTERLEAVED: tl.constexpr,
                 HEADS_PAD: tl.constexpr, HALF_PAD: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # = batch * tokens + position
    pos = pid % tokens
    h = tl.arange(0, HEADS_PAD)[:, None]
    i = tl.arange(0, HALF_PAD)[None, :]
    ok = (h < heads) & (i < HALF)
    base = pid * heads * 2 * HALF + h * 2 * HALF
    if INTERLEAVED:  # pairs (2i, 2i + 1)
        first, second = base + 2 * i, base + 2 * i + 1
    else:  # halves (i, i + HALF)
        first, second = base + i, base + i + HALF
    x1 = tl.load(x_ptr + first, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + second, mask=ok, other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + pos * HALF + i, mask=i < HALF, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + pos * HALF + i, mask=i < HALF, other=0.0).to(tl.float32)
    tl.store(out_ptr + first, (x1 * c - x2 * s).to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(out_ptr + second, (x2 * c + x1 * s).to(out_ptr.dtype.element_ty), mask=ok)


def _rope(x, cos, sin, interleaved):
    x = x.contiguous()
    batch, tokens, heads, dim = x.shape
    out = torch.empty_like(x)
    _rope_kernel[(batch * tokens,)](x, cos.contiguous(), sin.contiguous(), out, tokens, heads, HALF=dim // 2,
                                    INTERLEAVED=interleaved, HEADS_PAD=triton.next_power_of_2(heads),
                                    HALF_PAD=triton.next_power_of_2(dim // 2))
    return out


def rope_neox(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return _rope(x, cos, sin, False)


def rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return _rope(x, cos, sin, True)


def _neox_ref(x, cos, sin):
    x32, half = x.float(), x.shape[-1] // 2
    c, s = cos.float()[None, :, None, :], sin.float()[None, :, None, :]
    x1, x2 = x32[..., :half], x32[..., half:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1).to(x.dtype)


def _interleaved_ref(x, cos, sin):
    x32 = x.float()
    c, s = cos.float()[None, :, None, :], sin.float()[None, :, None, :]
    x1, x2 = x32[..., 0::2], x32[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], -1).flatten(-2).to(x.dtype)


def _inputs(shape, dtype, generator):
    tokens, half = shape[1], shape[3] // 2
    inv_freq = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
    angles = torch.arange(tokens, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return randn(shape, dtype, generator), angles.cos(), angles.sin()


TASKS = [
    KernelTask(
        "rope_neox", "rotary", 3,
        "Apply rotary position embeddings in the rotate-half layout to x of shape (batch, tokens, heads, "
        "head_dim): with x1 = x[..., :d/2], x2 = x[..., d/2:] and fp32 cos, sin of shape (tokens, d/2), return "
        "concat(x1 * cos - x2 * sin, x2 * cos + x1 * sin) along the last dimension, computed in fp32, in x's "
        "dtype.",
        "def rope_neox(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor",
        _neox_ref, _inputs, (_rope_kernel, _rope, rope_neox), SHAPES, perf_shapes=PERF),
    KernelTask(
        "rope_interleaved", "rotary", 3,
        "Apply rotary position embeddings in the interleaved (GPT-J) layout to x of shape (batch, tokens, heads, "
        "head_dim): each pair (x[..., 2i], x[..., 2i+1]) is rotated by the angle with fp32 cos[t, i], sin[t, i] "
        "(shape (tokens, d/2)) into (x0 * cos - x1 * sin, x1 * cos + x0 * sin), computed in fp32, in x's dtype.",
        "def rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor",
        _interleaved_ref, _inputs, (_rope_kernel, _rope, rope_interleaved), SHAPES, perf_shapes=PERF),
]
