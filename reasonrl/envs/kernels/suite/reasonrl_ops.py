"""reasonrl's own kernels as tasks (levels 4-5).

- `paged_decode`: the engine's paged decode attention; the expert is reasonrl/kernels/
  paged_attention.py itself, verbatim.
- `tada_dequant`: TaDA's head-mean-centred low-bit KV codes decoded to values, the load path
  of reasonrl/kernels/kv_quant.py (`_load_codes`) as a standalone kernel.
- `spark_rebuild_keys`: SPARK's channel-sparse keys restored (kept channels by rank, pruned ones
  from sign bits and |Q|), the load path of reasonrl/kernels/kv_spark.py (`_rebuild`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from reasonrl.kernels.paged_attention import (_combine_splits_kernel, _paged_decode_kernel, combine_splits, num_splits,
                                              online_softmax, paged_decode, plan_splits, query_group, store_group)

from ..task import KernelTask, randn

# --- paged decode attention ----------------------------------------------------------------------


def _paged_inputs(shape, dtype, generator):
    batch, q_heads, kv_heads, max_ctx, dim, block = shape
    per_seq = -(-max_ctx // block)
    blocks = batch * per_seq + 3  # a few blocks no sequence uses
    k_cache = randn((blocks, block, kv_heads, dim), dtype, generator)
    v_cache = randn((blocks, block, kv_heads, dim), dtype, generator)
    tables = torch.randperm(blocks, generator=generator)[: batch * per_seq].view(batch, per_seq).to(torch.int32)
    lens = torch.randint(1, max_ctx + 1, (batch,), generator=generator, dtype=torch.int32)
    lens[0] = max_ctx
    return randn((batch, q_heads, dim), dtype, generator), k_cache, v_cache, tables, lens


def _paged_ref(q, k_cache, v_cache, tables, lens):
    batch, q_heads, dim = q.shape
    block, kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty(q.shape, dtype=torch.float32)
    for b in range(batch):
        n = int(lens[b])
        ids = tables[b, : -(-n // block)].long()
        keys = k_cache[ids].reshape(-1, kv_heads, dim)[:n].float().transpose(0, 1)  # (Hkv, n, D)
        values = v_cache[ids].reshape(-1, kv_heads, dim)[:n].float().transpose(0, 1)
        keys = keys.repeat_interleave(q_heads // kv_heads, 0)
        values = values.repeat_interleave(q_heads // kv_heads, 0)
        scores = (keys @ q[b].float()[:, :, None])[..., 0] * dim ** -0.5
        out[b] = (torch.softmax(scores, -1)[:, None, :] @ values)[:, 0]
    return out.to(q.dtype)


# --- TaDA codes -> values --------------------------------------------------------------------------


@triton.jit
def _tada_kernel(codes_ptr, scale_ptr, zero_ptr, mean_ptr, out_ptr, heads, D: tl.constexpr, BITS: tl.constexpr,
                 GROUP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # = token * heads + head
    token = row // heads
    d = tl.arange(0, D)
    per = 8 // BITS  # codes per byte; code d at bit BITS * (d % per) of byte d // per
    byte = tl.load(codes_ptr + row * (D // per) + d // per).to(tl.int32)
    code = ((byte >> ((d % per) * BITS)) & ((1 << BITS) - 1)).to(tl.float32)
    scale = tl.load(scale_ptr + row * (D // GROUP) + d // GROUP).to(tl.float32)
    zero = tl.load(zero_ptr + row * (D // GROUP) + d // GROUP).to(tl.float32)
    mean = tl.load(mean_ptr + token * D + d).to(tl.float32)
    tl.store(out_ptr + row * D + d, (mean - (code * scale + zero)).to(out_ptr.dtype.element_ty))


def tada_dequant(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, mean: torch.Tensor,
                 bits: int) -> torch.Tensor:
    tokens, heads, _ = codes.shape
    dim = mean.shape[-1]
    group = dim // scale.shape[-1]
    out = torch.empty(tokens, heads, dim, dtype=mean.dtype, device=mean.device)
    _tada_kernel[(tokens * heads,)](codes.contiguous(), scale.contiguous(), zero.contiguous(), mean.contiguous(), out,
                                    heads, D=dim, BITS=bits, GROUP=group)
    return out


def _tada_ref(codes, scale, zero, mean, bits):
    per = 8 // bits
    shifts = (torch.arange(per) * bits).to(torch.int32)
    code = ((codes.to(torch.int32)[..., None] >> shifts) & ((1 << bits) - 1)).flatten(-2).float()  # (T, H, D)
    group = code.shape[-1] // scale.shape[-1]
    dev = code * scale.float().repeat_interleave(group, -1) + zero.float().repeat_interleave(group, -1)
    return (mean.float()[:, None, :] - dev).to(mean.dtype)


def _tada_inputs(shape, dtype, generator):
    tokens, heads, dim, bits, group = shape
    codes = torch.randint(0, 256, (tokens, heads, dim * bits // 8), generator=generator, dtype=torch.uint8)
    scale = (torch.rand((tokens, heads, dim // group), generator=generator) * 0.2 + 0.01).to(dtype)
    zero = randn((tokens, heads, dim // group), dtype, generator, 0.5)
    return codes, scale, zero, randn((tokens, dim), dtype, generator), bits


# --- SPARK keys ------------------------------------------------------------------------------------


@triton.jit
def _spark_kernel(kept_ptr, bitmap_ptr, signs_ptr, avg_ptr, qnorm_ptr, out_ptr, KEEP: tl.constexpr,
                  BITMAP_BYTES: tl.constexpr, SIGN_BYTES: tl.constexpr, D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, D)
    bit = (tl.load(bitmap_ptr + row * BITMAP_BYTES + d // 8).to(tl.int32) >> (d % 8)) & 1
    rank = tl.cumsum(bit, 0) - bit  # kept channels before d
    kept = tl.load(kept_ptr + row * KEEP + rank, mask=bit == 1, other=0.0).to(tl.float32)
    pruned = d - rank  # index among the pruned channels
    sbit = (tl.load(signs_ptr + row * SIGN_BYTES + pruned // 8, mask=bit == 0, other=0).to(tl.int32) >> (pruned % 8)) & 1
    avg = tl.load(avg_ptr + row).to(tl.float32)
    qn = tl.load(qnorm_ptr + d).to(tl.float32)
    restored = (sbit.to(tl.float32) * 2.0 - 1.0) * tl.sqrt(avg / qn)
    tl.store(out_ptr + row * D + d, tl.where(bit == 1, kept, restored).to(out_ptr.dtype.element_ty))


def spark_rebuild_keys(kept: torch.Tensor, bitmap: torch.Tensor, signs: torch.Tensor, avg: torch.Tensor,
                       qnorm: torch.Tensor) -> torch.Tensor:
    rows, keep = kept.shape
    dim = qnorm.shape[0]
    out = torch.empty(rows, dim, dtype=kept.dtype, device=kept.device)
    _spark_kernel[(rows,)](kept.contiguous(), bitmap.contiguous(), signs.contiguous(), avg.contiguous(),
                           qnorm.contiguous(), out, KEEP=keep, BITMAP_BYTES=bitmap.shape[1], SIGN_BYTES=signs.shape[1],
                           D=dim)
    return out


def _unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    bits = (packed.to(torch.int32)[..., None] >> torch.arange(8, dtype=torch.int32)) & 1
    return bits.flatten(-2)[..., :n]


def _spark_ref(kept, bitmap, signs, avg, qnorm):
    dim = qnorm.shape[0]
    bit = _unpack_bits(bitmap, dim).bool()  # (N, D)
    out = torch.empty(kept.shape[0], dim, dtype=torch.float32)
    sign = _unpack_bits(signs, dim - kept.shape[1]).float() * 2 - 1
    restored = (avg.float()[:, None] / qnorm.float()[None, :]).sqrt()
    for r in range(kept.shape[0]):
        out[r, bit[r]] = kept[r].float()
        out[r, ~bit[r]] = sign[r] * restored[r, ~bit[r]]
    return out.to(kept.dtype)


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    pad = (-bits.shape[-1]) % 8
    bits = torch.nn.functional.pad(bits.to(torch.int32), (0, pad)).view(*bits.shape[:-1], -1, 8)
    return (bits << torch.arange(8, dtype=torch.int32)).sum(-1).to(torch.uint8)


def _spark_inputs(shape, dtype, generator):
    rows, dim, keep = shape
    order = torch.rand(rows, dim, generator=generator).argsort(-1)
    bit = torch.zeros(rows, dim, dtype=torch.int32).scatter_(1, order[:, :keep], 1)
    signs = (torch.rand(rows, dim - keep, generator=generator) < 0.5).to(torch.int32)
    avg = (torch.rand(rows, generator=generator) + 0.1).to(dtype)
    qnorm = (torch.rand(dim, generator=generator) + 0.5).to(dtype)
    return randn((rows, keep), dtype, generator), _pack_bits(bit), _pack_bits(signs), avg, qnorm


TASKS = [
    KernelTask(
        "paged_decode", "reasonrl_ops", 5,
        "Paged decode attention (one query token per sequence) with grouped-query heads, reading keys and values "
        "in place from a block table. q (batch, q_heads, d); k_cache, v_cache (num_blocks, block_size, kv_heads, "
        "d); block_tables int32 (batch, max_blocks): token t of sequence b lives in block block_tables[b, t // "
        "block_size] at row t % block_size; context_lens int32 (batch,). Query head h uses KV head h // (q_heads "
        "/ kv_heads). Return softmax(q k^T / sqrt(d)) v over each sequence's first context_lens[b] tokens, as "
        "(batch, q_heads, d) in q's dtype, computed in fp32 with an online softmax; never gather the cache into "
        "a contiguous copy.",
        "def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: "
        "torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor",
        _paged_ref, _paged_inputs, (query_group, online_softmax, store_group, _combine_splits_kernel, num_splits,
                                    plan_splits, combine_splits, _paged_decode_kernel, paged_decode),
        ((2, 4, 2, 33, 16, 8), (3, 6, 3, 17, 32, 16), (1, 8, 1, 70, 64, 16)),
        perf_shapes=((64, 32, 8, 4096, 128, 16),)),
    KernelTask(
        "tada_dequant", "reasonrl_ops", 4,
        "Decode TaDA low-bit KV values: codes uint8 (tokens, heads, d * bits / 8) pack 8 / bits codes per byte, "
        "code i of a row at bit bits * (i % (8 / bits)) of byte i // (8 / bits); scale and zero (tokens, heads, "
        "d / group) give one affine map per group of `group` consecutive channels; mean (tokens, d) is the "
        "token's head mean. Return mean[t] - (code * scale + zero) for every (token, head, channel) as (tokens, "
        "heads, d), computed in fp32, in mean's dtype. bits is 2 or 4.",
        "def tada_dequant(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, mean: torch.Tensor, "
        "bits: int) -> torch.Tensor",
        _tada_ref, _tada_inputs, (_tada_kernel, tada_dequant), ((7, 3, 32, 4, 16), (16, 5, 64, 2, 32),
                                                               (33, 1, 128, 4, 32)),
        perf_shapes=((65536, 8, 128, 4, 32),)),
    KernelTask(
        "spark_rebuild_keys", "reasonrl_ops", 4,
        "Restore SPARK channel-sparse keys. Each of N rows keeps `keep` of its d channels: bitmap uint8 (N, "
        "ceil(d/8)) has bit c % 8 of byte c // 8 set when channel c is kept, and kept (N, keep) holds the kept "
        "values in channel order (the r-th kept channel's value at kept[:, r]). A pruned channel c is restored as "
        "s * sqrt(avg[n] / qnorm[c]), where s = +1 if bit j % 8 of signs[n, j // 8] is set and -1 otherwise, j "
        "being c's index among the row's pruned channels; avg is (N,), qnorm (d,), signs uint8 (N, ceil((d - "
        "keep) / 8)). Return the keys (N, d) in kept's dtype, computed in fp32.",
        "def spark_rebuild_keys(kept: torch.Tensor, bitmap: torch.Tensor, signs: torch.Tensor, avg: torch.Tensor, "
        "qnorm: torch.Tensor) -> torch.Tensor",
        _spark_ref, _spark_inputs, (_spark_kernel, spark_rebuild_keys), ((7, 32, 13), (33, 64, 40), (16, 128, 97)),
        perf_shapes=((262144, 128, 64),)),
]
