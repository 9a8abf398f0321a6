"""Paged decode attention over quantized KV blocks (TaDA, KIVI) in Triton: one query token per
sequence; packed codes, fp16 scales, zero points and head-means are loaded from the blocks in
place and dequantized in registers (no decoded copy of the cache is ever written).

Same scheme as `paged_attention.py`: one program per (sequence, KV head, split) serves the GQA
group, online softmax over blocks, long tables split and merged with its helpers. The full blocks
of a sequence (its first ctx // block_size) are read from their codes; the partly filled last block, if any, from the
full-precision staging pool (`stage_table[block]` gives its slot); a last block that this step's own token completed
(quantized in this step), from the step's `fresh` copy as written, as the PyTorch path reads it. Storage layouts, all
contiguous, per layer:

    codes  (blocks, block_size, H, D * bits / 8) uint8, code i of a row at bits * (i % per) of byte i // per
    scale, zero  (blocks, block_size, H, D / group) fp16   -- or (blocks, H, D) when per_channel (KIVI keys:
                 one scale per channel shared by the block's tokens)
    mean   (blocks, block_size, D) fp16 (TaDA): x = mean - (code * scale + zero); without a mean x = code * scale + zero
    staging (slots, block_size, H, D) model dtype

Runs under `TRITON_INTERPRET=1` on CPU for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from reasonrl.kernels.paged_attention import combine_splits, online_softmax, plan_splits, query_group, store_group


@dataclass
class QuantCodes:
    """What the kernel reads for keys or for values of one layer (layouts in the module docstring)."""
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    mean: torch.Tensor | None
    bits: int
    group: int  # elements per scale along head_dim (ignored when per_channel)
    per_channel: bool = False


@triton.jit
def _load_codes(codes_ptr, scale_ptr, zero_ptr, mean_ptr, block, kv_head, num_kv_heads, t, d, t_ok,
                BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr,
                PER_CHANNEL: tl.constexpr, HAS_MEAN: tl.constexpr):
    """-> (BLOCK, HEAD_DIM) float32 keys or values of one block and KV head."""
    row = (block * BLOCK + t[:, None]) * num_kv_heads + kv_head  # (BLOCK, 1) token-head row
    # 8 // BITS codes per byte; code i of a row sits at bit BITS * (i % (8 // BITS)) of byte i // (8 // BITS)
    byte = tl.load(codes_ptr + row * (HEAD_DIM * BITS // 8) + d[None, :] // (8 // BITS), mask=t_ok[:, None], other=0)
    code = ((byte.to(tl.int32) >> ((d[None, :] % (8 // BITS)) * BITS)) & ((1 << BITS) - 1)).to(tl.float32)
    if PER_CHANNEL:
        at = (block * num_kv_heads + kv_head) * HEAD_DIM + d[None, :]  # (1, D)
        scale = tl.load(scale_ptr + at).to(tl.float32)
        zero = tl.load(zero_ptr + at).to(tl.float32)
    else:
        at = row * (HEAD_DIM // GROUP) + d[None, :] // GROUP  # (BLOCK, D)
        scale = tl.load(scale_ptr + at, mask=t_ok[:, None], other=0.0).to(tl.float32)
        zero = tl.load(zero_ptr + at, mask=t_ok[:, None], other=0.0).to(tl.float32)
    x = code * scale + zero
    if HAS_MEAN:
        mean = tl.load(mean_ptr + (block * BLOCK + t[:, None]) * HEAD_DIM + d[None, :], mask=t_ok[:, None], other=0.0)
        x = mean.to(tl.float32) - x
    return x


@triton.jit
def _quant_decode_kernel(
    q_ptr, out_ptr, part_ptr, tables_ptr, lens_ptr, stage_table_ptr, k_stage_ptr, v_stage_ptr,
    fresh_of_ptr, k_fresh_ptr, v_fresh_ptr,
    kc_ptr, ks_ptr, kz_ptr, km_ptr, vc_ptr, vs_ptr, vz_ptr, vm_ptr,
    scale, per_split, num_kv_heads, stride_qb, stride_qh, stride_tb, stride_ob, stride_oh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
    K_BITS: tl.constexpr, K_GROUP: tl.constexpr, K_PER_CHANNEL: tl.constexpr,
    V_BITS: tl.constexpr, V_GROUP: tl.constexpr, HAS_MEAN: tl.constexpr, PRECISION: tl.constexpr,
    SPLIT: tl.constexpr, HAS_FRESH: tl.constexpr,
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    ctx = tl.load(lens_ptr + b)
    d = tl.arange(0, HEAD_DIM)
    t = tl.arange(0, BLOCK)
    heads, g_ok, q, m, l, acc = query_group(q_ptr, b, kv_head, stride_qb, stride_qh, GROUP, GROUP_PAD, HEAD_DIM)
    full = ctx // BLOCK
    coded = full  # blocks read from their codes
    if HAS_FRESH:
        fresh = tl.load(fresh_of_ptr + b)  # -1, or the index in k/v_fresh of the last block, completed in this step
        coded = full - (fresh >= 0).to(tl.int32)
    all_ok = t < BLOCK
    first = tl.program_id(2) * per_split
    for i in range(first, tl.minimum(first + per_split, coded)):  # quantized blocks of this split
        block = tl.load(tables_ptr + b * stride_tb + i).to(tl.int64)
        k = _load_codes(kc_ptr, ks_ptr, kz_ptr, km_ptr, block, kv_head, num_kv_heads, t, d, all_ok,
                        BLOCK, HEAD_DIM, K_BITS, K_GROUP, K_PER_CHANNEL, HAS_MEAN)
        v = _load_codes(vc_ptr, vs_ptr, vz_ptr, vm_ptr, block, kv_head, num_kv_heads, t, d, all_ok,
                        BLOCK, HEAD_DIM, V_BITS, V_GROUP, False, HAS_MEAN)
        m, l, acc = online_softmax(q, k, v, all_ok, m, l, acc, scale, PRECISION)
    if HAS_FRESH:  # the block this step completed, as written, in the split whose stretch holds it
        f_ok = t < tl.where((fresh >= 0) & (coded // per_split == tl.program_id(2)), BLOCK, 0)
        offs = ((tl.maximum(fresh, 0).to(tl.int64) * BLOCK + t[:, None]) * num_kv_heads + kv_head) * HEAD_DIM + d[None, :]
        k = tl.load(k_fresh_ptr + offs, mask=f_ok[:, None], other=0.0).to(tl.float32)
        v = tl.load(v_fresh_ptr + offs, mask=f_ok[:, None], other=0.0).to(tl.float32)
        m, l, acc = online_softmax(q, k, v, f_ok, m, l, acc, scale, PRECISION)
    # the partly filled last block, from the staging pool, in the split whose stretch holds it; with
    # none, every token is masked and the update leaves m, l and acc as they are (p = 0, alpha = 1)
    rem = tl.where(full // per_split == tl.program_id(2), ctx - full * BLOCK, 0)
    t_ok = t < rem
    block = tl.load(tables_ptr + b * stride_tb + full, mask=rem > 0, other=0).to(tl.int64)
    slot = tl.maximum(tl.load(stage_table_ptr + block, mask=rem > 0, other=0), 0).to(tl.int64)
    offs = ((slot * BLOCK + t[:, None]) * num_kv_heads + kv_head) * HEAD_DIM + d[None, :]
    k = tl.load(k_stage_ptr + offs, mask=t_ok[:, None], other=0.0).to(tl.float32)
    v = tl.load(v_stage_ptr + offs, mask=t_ok[:, None], other=0.0).to(tl.float32)
    m, l, acc = online_softmax(q, k, v, t_ok, m, l, acc, scale, PRECISION)
    store_group(out_ptr, part_ptr, b, heads, g_ok, m, l, acc, stride_ob, stride_oh, GROUP, HEAD_DIM, SPLIT)


def quant_paged_decode(q: torch.Tensor, k: QuantCodes, v: QuantCodes, k_stage: torch.Tensor, v_stage: torch.Tensor,
                       stage_table: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                       scale: float | None = None, splits: int | None = None,
                       fresh: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """q (B, Hq, D); k, v: one layer's codes; k_stage, v_stage (slots, block_size, Hkv, D); stage_table
    (blocks,) int32 (-1: no slot); block_tables (B, max_blocks) int32; context_lens (B,) int32 -> (B, Hq, D).
    `splits`: of the block table (default: `num_splits`). `fresh`: (fresh_of (B,) int32, k, v (m, block_size,
    Hkv, D)): a row whose last block is full and was quantized in this step reads it from k[fresh_of], v[fresh_of]
    instead of its codes (-1: from its codes)."""
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_stage.shape
    if v.per_channel:
        raise ValueError("per-channel scales are supported for keys only")
    for name, t in (("k_stage", k_stage), ("v_stage", v_stage), ("k.codes", k.codes), ("v.codes", v.codes),
                    ("k.scale", k.scale), ("v.scale", v.scale)):
        if not t.is_contiguous():
            raise ValueError(f"quant_paged_decode: {name} must be contiguous")
    q = q.contiguous()
    out = torch.empty_like(q)
    splits, per_split, part = plan_splits(q, out, num_kv_heads, block_tables, splits)
    group = num_heads // num_kv_heads
    has_mean = k.mean is not None
    dummy = k.scale  # stands in for absent means and fresh blocks (never read: HAS_MEAN, HAS_FRESH False)
    fresh_of, k_fresh, v_fresh = fresh if fresh is not None else (context_lens, dummy, dummy)
    if fresh is not None and not (k_fresh.is_contiguous() and v_fresh.is_contiguous()):
        raise ValueError("quant_paged_decode: fresh blocks must be contiguous")
    _quant_decode_kernel[(batch, num_kv_heads, splits)](
        q, out, part, block_tables, context_lens, stage_table, k_stage, v_stage, fresh_of, k_fresh, v_fresh,
        k.codes, k.scale, k.zero, k.mean if has_mean else dummy, v.codes, v.scale, v.zero, v.mean if has_mean else dummy,
        scale or head_dim ** -0.5, per_split, num_kv_heads, q.stride(0), q.stride(1), block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK=block_size,
        K_BITS=k.bits, K_GROUP=k.group, K_PER_CHANNEL=k.per_channel, V_BITS=v.bits, V_GROUP=v.group,
        HAS_MEAN=has_mean, PRECISION="ieee" if q.dtype == torch.float32 else "tf32", SPLIT=splits > 1,
        HAS_FRESH=fresh is not None,
    )
    return combine_splits(part, out)
