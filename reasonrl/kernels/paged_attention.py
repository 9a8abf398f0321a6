"""Paged decode attention in Triton: one query token per sequence, keys and values read in place
from the block table (no gathered copy).

One program per (sequence, KV head, split) handles all query heads of that KV head's GQA group, so
each key/value block is loaded once per group; softmax is computed online over blocks. With few
sequences and long contexts, (sequence, KV head) pairs alone leave most of a GPU idle (8 x 8
programs for 132 multiprocessors at batch 8 with 8 KV heads), so the block table is split
(flash-decoding): each program folds one stretch of it into a partial state (running max,
denominator, output) in a float32 workspace, and `combine_splits` merges the stretches.
`num_splits` picks the count from the table's width, the batch and the GPU; short tables run in
one pass, straight into the output. The compressed-KV kernels (`kv_quant.py`, `kv_spark.py`)
split the same way with the same helpers. Runs under `TRITON_INTERPRET=1` on CPU for tests.
"""

from __future__ import annotations

import warnings

import torch
import triton
import triton.language as tl


def kernel_fits(block_size: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether these kernels (and the compressed-KV ones) compile for the shape on an NVIDIA GPU:
    `tl.arange` takes powers of two, and `tl.dot` an inner size (the head, and the block in p @ v)
    of at least 16 for 16-bit inputs, 8 for float32. Otherwise the format's PyTorch path decodes
    (a warning says so once)."""
    least = 8 if dtype == torch.float32 else 16
    fits = all(n >= least and n & (n - 1) == 0 for n in (block_size, head_dim))
    if not fits:
        warnings.warn(f"the Triton decode kernels need a block size and head_dim that are powers of two and at least "
                      f"{least} for {dtype}; block_size={block_size}, head_dim={head_dim}: decode attention runs the "
                      "PyTorch path over gathered blocks instead (slower)", stacklevel=2)
    return fits


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
def store_group(out_ptr, part_ptr, b, heads, g_ok, m, l, acc, stride_ob, stride_oh, GROUP: tl.constexpr,
                HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr):
    """The query group's result: normalised into out (one pass) or, with SPLIT, its partial state
    (acc, m, l) into row (b, head, split) of the workspace (batch, heads, splits, HEAD_DIM + 2)."""
    d = tl.arange(0, HEAD_DIM)
    if SPLIT:
        row = (b * tl.num_programs(1) * GROUP + heads) * tl.num_programs(2) + tl.program_id(2)
        tl.store(part_ptr + row[:, None] * (HEAD_DIM + 2) + d[None, :], acc, mask=g_ok[:, None])
        tl.store(part_ptr + row * (HEAD_DIM + 2) + HEAD_DIM, m, mask=g_ok)
        tl.store(part_ptr + row * (HEAD_DIM + 2) + HEAD_DIM + 1, l, mask=g_ok)
    else:
        out = acc / l[:, None]
        tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=g_ok[:, None])


@triton.jit
def _combine_splits_kernel(part_ptr, out_ptr, num_splits, stride_ob, stride_oh, HEAD_DIM: tl.constexpr,
                           SPLITS_PAD: tl.constexpr):
    """One program per (sequence, query head): the splits' partial states merged, as the online
    softmax would have merged them in one pass (an empty split has m = -1e30, l = 0: weight 0)."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, HEAD_DIM)
    ok = s < num_splits
    row = (b * tl.num_programs(1) + h) * num_splits + s
    m = tl.load(part_ptr + row * (HEAD_DIM + 2) + HEAD_DIM, mask=ok, other=-1e30)
    l = tl.load(part_ptr + row * (HEAD_DIM + 2) + HEAD_DIM + 1, mask=ok, other=0.0)
    acc = tl.load(part_ptr + row[:, None] * (HEAD_DIM + 2) + d[None, :], mask=ok[:, None], other=0.0)
    w = tl.exp(m - tl.max(m, 0))
    out = tl.sum(acc * w[:, None], 0) / tl.sum(l * w, 0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, out.to(out_ptr.dtype.element_ty))


def num_splits(batch: int, kv_heads: int, width: int, device: torch.device) -> int:
    """Splits of a block table `width` blocks wide: enough (sequence, KV head, split) programs to
    fill the GPU's multiprocessors four times over, each split at least 16 blocks, at most 64;
    1 on a CPU (the interpreter) and for tables under 32 blocks."""
    if device.type != "cuda" or width < 32:
        return 1
    programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(-(-programs // (batch * kv_heads)), width // 16, 64))


def plan_splits(q: torch.Tensor, out: torch.Tensor, kv_heads: int, block_tables: torch.Tensor,
                splits: int | None) -> tuple[int, int, torch.Tensor]:
    """-> (splits, blocks per split, workspace) of a decode launch over `block_tables` (`splits`
    None: `num_splits`). The workspace holds the splits' float32 partial states (B, Hq, splits,
    D + 2); with one split it is `out` itself, which the kernel then writes directly."""
    batch, heads, dim = q.shape
    width = block_tables.shape[1]
    if splits is None:
        splits = num_splits(batch, kv_heads, width, q.device)
    elif splits < 1:
        raise ValueError(f"decode splits must be at least 1, got {splits}")
    part = out if splits == 1 else torch.empty(batch, heads, splits, dim + 2, dtype=torch.float32, device=q.device)
    return splits, -(-width // splits), part


def combine_splits(part: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out (B, Hq, D) from the workspace of a split launch (B, Hq, splits, D + 2); a one-pass
    launch (the workspace is `out`) already wrote it."""
    if part is out:
        return out
    batch, heads, splits, _ = part.shape
    _combine_splits_kernel[(batch, heads)](part, out, splits, out.stride(0), out.stride(1), HEAD_DIM=out.shape[2],
                                           SPLITS_PAD=triton.next_power_of_2(splits))
    return out


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, part_ptr, tables_ptr, lens_ptr, scale, per_split,
    stride_qb, stride_qh, stride_kb, stride_kt, stride_kh, stride_tb, stride_ob, stride_oh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
    PRECISION: tl.constexpr, SPLIT: tl.constexpr,
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    ctx = tl.load(lens_ptr + b)
    d = tl.arange(0, HEAD_DIM)
    t = tl.arange(0, BLOCK)
    heads, g_ok, q, m, l, acc = query_group(q_ptr, b, kv_head, stride_qb, stride_qh, GROUP, GROUP_PAD, HEAD_DIM)
    first = tl.program_id(2) * per_split
    for i in range(first, tl.minimum(first + per_split, tl.cdiv(ctx, BLOCK))):
        block = tl.load(tables_ptr + b * stride_tb + i).to(tl.int64)
        t_ok = i * BLOCK + t < ctx
        offs = block * stride_kb + t[:, None] * stride_kt + kv_head * stride_kh + d[None, :]
        k = tl.load(k_ptr + offs, mask=t_ok[:, None], other=0.0)  # (BLOCK, D)
        v = tl.load(v_ptr + offs, mask=t_ok[:, None], other=0.0)
        m, l, acc = online_softmax(q, k, v, t_ok, m, l, acc, scale, PRECISION)
    store_group(out_ptr, part_ptr, b, heads, g_ok, m, l, acc, stride_ob, stride_oh, GROUP, HEAD_DIM, SPLIT)


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, scale: float | None = None, splits: int | None = None) -> torch.Tensor:
    """q (B, Hq, D); k_cache, v_cache (blocks, block_size, Hkv, D); block_tables (B, max_blocks) int32;
    context_lens (B,) int32 -> (B, Hq, D). `splits`: of the block table (default: `num_splits`)."""
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    q = q.contiguous()
    out = torch.empty_like(q)
    splits, per_split, part = plan_splits(q, out, num_kv_heads, block_tables, splits)
    _paged_decode_kernel[(batch, num_kv_heads, splits)](
        q, k_cache, v_cache, out, part, block_tables, context_lens, scale or head_dim ** -0.5, per_split,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK=block_size,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", SPLIT=splits > 1,
    )
    return combine_splits(part, out)
