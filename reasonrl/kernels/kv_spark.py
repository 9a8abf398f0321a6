"""Paged decode attention over the SPARK KV format (`reasonrl/engine/kv/spark.py`), in Triton.

Reads what the format stores, never a restored copy: per token and KV head the kept key channels,
the channel bitmap, the pruned channels' sign bits and the fp16 `avg`; per block and head the
|Q| vector. A key is rebuilt in registers: channel c is kept iff bit c of the bitmap is set; its
value is kept[rank(c)], rank = number of kept channels before c (an exclusive cumsum of the bits);
a pruned channel reads sign[c - rank(c)] * sqrt(avg / |Q_c|). Values are read whole, or (value
pruning) kept[rank_v(c)] and zero elsewhere. A block still partly filled (stage table >= 0) is
read whole from the staging pool. The step's own new token, not yet in any block the kernel
reads, comes in as k_new / v_new and is attended last.

With the format's `bits` option (composition with TaDA) the kept key values are `bits`-bit codes
(packed as `quant.pack` does: code i at bit bits * (i % per) of byte i // per, per = 8 // bits) with
one fp16 scale and zero per (token, head): kept[rank] = code[rank] * scale + zero. Values are
TaDA's: v = mean(token) - (code * scale + zero), mean fp16 per token. The kernel reads the codes.

One program per (sequence, KV head, split) covers the query heads of its GQA group; online softmax
over blocks, long tables split and merged, as `paged_attention.py` (the step's own token is
attended by the first split). Runs under `TRITON_INTERPRET=1` on CPU for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from reasonrl.kernels.paged_attention import combine_splits, online_softmax, plan_splits, query_group, store_group


@dataclass
class QuantParts:
    """The side tensors of SPARK with `bits` (one layer): fp16 k_scale, k_zero, v_scale, v_zero
    (blocks, bs, Hkv) and v_mean (blocks, bs, D)."""
    bits: int
    k_scale: torch.Tensor
    k_zero: torch.Tensor
    v_scale: torch.Tensor
    v_zero: torch.Tensor
    v_mean: torch.Tensor


@triton.jit
def _codes(codes_ptr, scale_ptr, zero_ptr, row, idx, ok, t_ok, STRIDE: tl.constexpr, BITS: tl.constexpr):
    """Entries idx (BLOCK, D) of rows `row` (BLOCK,) of packed codes, decoded: code * scale + zero, 0 where not ok."""
    byte = tl.load(codes_ptr + row[:, None] * STRIDE + idx // (8 // BITS), mask=ok, other=0)
    code = ((byte.to(tl.int32) >> ((idx % (8 // BITS)) * BITS)) & ((1 << BITS) - 1)).to(tl.float32)
    sc = tl.load(scale_ptr + row, mask=t_ok, other=0.0).to(tl.float32)
    zr = tl.load(zero_ptr + row, mask=t_ok, other=0.0).to(tl.float32)
    return tl.where(ok, code * sc[:, None] + zr[:, None], 0.0)


@triton.jit
def _rebuild(kept_ptr, bitmap_ptr, scale_ptr, zero_ptr, row, t_ok, d, STRIDE: tl.constexpr,
             BITMAP_BYTES: tl.constexpr, BITS: tl.constexpr):
    """-> (bit (BLOCK, D) int32, rank (BLOCK, D) int32, kept values scattered (BLOCK, D) fp32, 0 where pruned).
    STRIDE: elements (BITS = 0) or code bytes per row of kept_ptr."""
    byte = tl.load(bitmap_ptr + row[:, None] * BITMAP_BYTES + d[None, :] // 8, mask=t_ok[:, None], other=0)
    bit = (byte.to(tl.int32) >> (d[None, :] % 8)) & 1
    rank = tl.cumsum(bit, axis=1) - bit
    if BITS == 0:
        vals = tl.load(kept_ptr + row[:, None] * STRIDE + rank, mask=t_ok[:, None] & (bit == 1), other=0.0)
        vals = vals.to(tl.float32)
    else:
        vals = _codes(kept_ptr, scale_ptr, zero_ptr, row, rank, t_ok[:, None] & (bit == 1), t_ok, STRIDE, BITS)
    return bit, rank, vals


@triton.jit
def _spark_decode_kernel(
    q_ptr, kn_ptr, vn_ptr, out_ptr, part_ptr,
    kept_ptr, bitmap_ptr, signs_ptr, avg_ptr, qnorm_ptr, vkept_ptr, vbitmap_ptr,
    kscale_ptr, kzero_ptr, vscale_ptr, vzero_ptr, vmean_ptr,
    kstage_ptr, vstage_ptr, stage_table_ptr, tables_ptr, lens_ptr, scale, per_split, stride_tb,
    KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr, KEEP: tl.constexpr, PRUNED: tl.constexpr, BITMAP_BYTES: tl.constexpr,
    SIGN_BYTES: tl.constexpr, VKEEP: tl.constexpr, K_STRIDE: tl.constexpr, BITS: tl.constexpr,
    PRECISION: tl.constexpr, SPLIT: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    ctx = tl.load(lens_ptr + b)  # tokens before this step's
    d = tl.arange(0, HEAD_DIM)
    t = tl.arange(0, BLOCK)
    heads, g_ok, q, m, l, acc = query_group(q_ptr, b, h, KV_HEADS * GROUP * HEAD_DIM, HEAD_DIM, GROUP, GROUP_PAD,
                                            HEAD_DIM)
    first = tl.program_id(2) * per_split
    for i in range(first, tl.minimum(first + per_split, tl.cdiv(ctx, BLOCK))):
        block = tl.load(tables_ptr + b * stride_tb + i).to(tl.int64)
        slot = tl.load(stage_table_ptr + block).to(tl.int64)
        t_ok = i * BLOCK + t < ctx
        st_ok = t_ok & (slot + t * 0 >= 0)  # (BLOCK,) block staged; a vector: the interpreter rejects scalar masks
        row = (block * BLOCK + t) * KV_HEADS + h  # (BLOCK,) token-head rows of the block
        # keys: kept channels, then the pruned ones restored
        bit, rank, k = _rebuild(kept_ptr, bitmap_ptr, kscale_ptr, kzero_ptr, row, t_ok, d, K_STRIDE, BITMAP_BYTES,
                                BITS)
        if PRUNED > 0:
            prank = d[None, :] - rank  # index among the pruned channels
            sbyte = tl.load(signs_ptr + row[:, None] * SIGN_BYTES + prank // 8, mask=t_ok[:, None] & (bit == 0),
                            other=0)
            sign = ((sbyte.to(tl.int32) >> (prank % 8)) & 1).to(tl.float32) * 2.0 - 1.0
            avg = tl.load(avg_ptr + row, mask=t_ok, other=0.0).to(tl.float32)
            qn = tl.load(qnorm_ptr + (block * KV_HEADS + h) * HEAD_DIM + d).to(tl.float32)
            k = tl.where(bit == 1, k, sign * tl.sqrt(avg[:, None] / qn[None, :]))
        srow = (slot * BLOCK + t) * KV_HEADS + h  # staging (slots, block_size, heads, D)
        k_st = tl.load(kstage_ptr + srow[:, None] * HEAD_DIM + d[None, :], mask=st_ok[:, None], other=0.0)
        k = tl.where(st_ok[:, None], k_st.to(tl.float32), k)
        # values
        if BITS > 0:  # TaDA: head mean minus the decoded deviation
            dev = _codes(vkept_ptr, vscale_ptr, vzero_ptr, row, d[None, :] + t[:, None] * 0, t_ok[:, None], t_ok,
                         HEAD_DIM * BITS // 8, BITS)
            mean = tl.load(vmean_ptr + (block * BLOCK + t)[:, None] * HEAD_DIM + d[None, :], mask=t_ok[:, None],
                           other=0.0)
            v = mean.to(tl.float32) - dev
        elif VKEEP < HEAD_DIM:
            _, _, v = _rebuild(vkept_ptr, vbitmap_ptr, vkept_ptr, vkept_ptr, row, t_ok, d, VKEEP, BITMAP_BYTES, 0)
        else:
            v = tl.load(vkept_ptr + row[:, None] * HEAD_DIM + d[None, :], mask=t_ok[:, None], other=0.0).to(tl.float32)
        v_st = tl.load(vstage_ptr + srow[:, None] * HEAD_DIM + d[None, :], mask=st_ok[:, None], other=0.0)
        v = tl.where(st_ok[:, None], v_st.to(tl.float32), v)
        m, l, acc = online_softmax(q, k, v, t_ok, m, l, acc, scale, PRECISION)
    # this step's own token, whole, in the first split (-inf in the others: p = 0, alpha = 1)
    kn = tl.load(kn_ptr + (b * KV_HEADS + h) * HEAD_DIM + d).to(tl.float32)
    vn = tl.load(vn_ptr + (b * KV_HEADS + h) * HEAD_DIM + d).to(tl.float32)
    s = tl.sum(q.to(tl.float32) * kn[None, :], 1) * scale  # (GROUP_PAD,)
    s = tl.where(tl.program_id(2) == 0, s, float("-inf"))
    m_new = tl.maximum(m, s)
    p = tl.exp(s - m_new)
    alpha = tl.exp(m - m_new)
    l = l * alpha + p
    acc = acc * alpha[:, None] + p[:, None] * vn[None, :]
    m = m_new  # a split's state is merged by its max: it must include this token's score
    store_group(out_ptr, part_ptr, b, heads, g_ok, m, l, acc, KV_HEADS * GROUP * HEAD_DIM, HEAD_DIM, GROUP,
                HEAD_DIM, SPLIT)


def spark_paged_decode(q, k_new, v_new, kept, bitmap, signs, avg, qnorm, v_kept, v_bitmap, staging, stage_table,
                       block_tables, prev_lens, value_pruned: bool = False, scale: float | None = None,
                       keep: int | None = None, quant: QuantParts | None = None, splits: int | None = None):
    """One layer's SPARK storage (see `SparkKV.allocate`):
    q (B, Hq, D); k_new, v_new (B, Hkv, D) this step's tokens; kept (blocks, bs, Hkv, T);
    bitmap (blocks, bs, Hkv, ceil(D/8)) uint8; signs (blocks, bs, Hkv, ceil(P/8)) uint8;
    avg (blocks, bs, Hkv) fp16; qnorm (blocks, Hkv, D) fp16; v_kept (blocks, bs, Hkv, D or Tv);
    v_bitmap like bitmap (read only if value_pruned); staging (2, slots, bs, Hkv, D) K and V whole;
    stage_table (blocks,) int32; block_tables (B, max_blocks) int32; prev_lens (B,) tokens before
    this step's -> (B, Hq, D).
    With `quant` (the format's `bits`): kept is the packed key codes (blocks, bs, Hkv, ceil(T*bits/8))
    uint8, `keep` = T must be given, and v_kept the value deviation codes (blocks, bs, Hkv, D*bits/8).
    `splits`: of the block table (default: `num_splits`)."""
    batch, num_heads, head_dim = q.shape
    _, block_size, kv_heads, stride = kept.shape
    keep = stride if keep is None else keep
    group = num_heads // kv_heads
    side = [quant.k_scale, quant.k_zero, quant.v_scale, quant.v_zero, quant.v_mean] if quant else [avg] * 5
    tensors = [q, k_new, v_new, kept, bitmap, signs, avg, qnorm, v_kept, v_bitmap, *side, staging[0], staging[1]]
    (q, k_new, v_new, kept, bitmap, signs, avg, qnorm, v_kept, v_bitmap, k_scale, k_zero, v_scale, v_zero, v_mean,
     k_stage, v_stage) = (x.contiguous() for x in tensors)
    out = torch.empty_like(q)
    splits, per_split, part = plan_splits(q, out, kv_heads, block_tables, splits)
    _spark_decode_kernel[(batch, kv_heads, splits)](
        q, k_new, v_new, out, part, kept, bitmap, signs, avg, qnorm, v_kept, v_bitmap, k_scale, k_zero, v_scale, v_zero,
        v_mean, k_stage, v_stage, stage_table,
        block_tables, prev_lens.to(torch.int32), scale or head_dim ** -0.5, per_split, block_tables.stride(0),
        KV_HEADS=kv_heads, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK=block_size, KEEP=keep, PRUNED=head_dim - keep, BITMAP_BYTES=bitmap.shape[-1],
        SIGN_BYTES=max(1, signs.shape[-1]), VKEEP=v_kept.shape[-1] if value_pruned else head_dim,
        K_STRIDE=stride, BITS=quant.bits if quant else 0,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", SPLIT=splits > 1,
    )
    return combine_splits(part, out)
