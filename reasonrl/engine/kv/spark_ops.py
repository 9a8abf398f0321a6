"""SPARK's per-token key-channel pruning and restoration, and its composition with TaDA, as pure
functions on tensors: used by the `SparkKV` format (spark.py), its Triton kernel's reference and
the SnapKV eviction harness (snapkv.py). The method, its formulas and where this code departs
from the paper are in spark.py's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reasonrl.engine.kv.quant import decode, dequantize, encode, pack, quantize, scale_zero, unpack

FP16_TINY = 2.0 ** -14
FP16_MAX = 65504.0


# ---- bits -----------------------------------------------------------------------------------------
def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool (..., n) -> uint8 (..., ceil(n / 8)); element i is bit i % 8 of byte i // 8."""
    pad = -bits.shape[-1] % 8
    return pack(F.pad(bits.to(torch.uint8), (0, pad)), 1)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 (..., ceil(n / 8)) -> bool (..., n)."""
    return unpack(packed, 1)[..., :n].bool()


def kept_channels(head_dim: int, ratio: float) -> int:
    """T = D - floor(ratio * D), as the authors' code computes it."""
    return head_dim - int(ratio * head_dim)


def split_order(kept: torch.Tensor) -> torch.Tensor:
    """bool (..., D) -> channel indices (..., D): the pruned channels ascending, then the kept ones
    ascending (the order kept values and sign bits are stored in)."""
    return torch.sort(kept.to(torch.uint8), dim=-1, stable=True).indices


# ---- pruning and restoration (pure; the format and the eviction harness share them) ----------------
@dataclass
class PrunedKeys:
    kept: torch.Tensor  # (..., T) kept channel values, in channel order
    bitmap: torch.Tensor  # (..., ceil(D / 8)) uint8, bit c set = channel c kept
    signs: torch.Tensor  # (..., ceil(P / 8)) uint8, bit j set = the j-th pruned channel was >= 0
    avg: torch.Tensor  # (...,) fp16 mean score k_c^2 |Q_c| of the pruned channels


def query_norm(sq_sum: torch.Tensor) -> torch.Tensor:
    """Sum over a query window of squared group-mean queries (..., H, D) -> |Q| (..., H, D) fp16,
    scaled to max 1 per head (a head that saw no query gets all ones: prune by |k|)."""
    n = sq_sum.float().sqrt()
    top = n.amax(-1, keepdim=True)
    n = torch.where(top > 0, n / top.clamp_min(1e-30), torch.ones_like(n))
    return n.clamp_min(FP16_TINY).to(torch.float16)


def window_sq_sum(q: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Window queries (W, Hq, D) -> sum over the window of the squared GQA-group-mean query (Hkv, D)."""
    w, hq, d = q.shape
    qbar = q.float().view(w, num_kv_heads, hq // num_kv_heads, d).mean(2)
    return qbar.square().sum(0)


def prune_keys(k: torch.Tensor, qnorm: torch.Tensor, keep: int) -> PrunedKeys:
    """k (..., D), qnorm broadcastable to it (fp16, from `query_norm`) -> the top `keep` channels
    of each row by k_c^2 * |Q_c| and what restores the rest."""
    d = k.shape[-1]
    score = k.float().square() * qnorm.float()
    kept_mask = torch.zeros(score.shape, dtype=torch.bool, device=k.device)
    kept_mask.scatter_(-1, score.topk(keep, dim=-1).indices, True)
    order = split_order(kept_mask)
    pruned, kept = order[..., : d - keep], order[..., d - keep:]
    if d > keep:
        avg = score.gather(-1, pruned).mean(-1)
        signs = pack_bits(k.gather(-1, pruned) >= 0)
    else:
        avg = score.new_zeros(score.shape[:-1])
        signs = torch.zeros(*score.shape[:-1], 0, dtype=torch.uint8, device=k.device)
    return PrunedKeys(k.gather(-1, kept), pack_bits(kept_mask), signs, avg.clamp(max=FP16_MAX).to(torch.float16))


def restore_keys(p: PrunedKeys, qnorm: torch.Tensor, head_dim: int) -> torch.Tensor:
    """-> keys (..., D) float32: kept channels as stored, pruned ones sign * sqrt(avg / |Q_c|)."""
    kept_mask = unpack_bits(p.bitmap, head_dim)
    order = split_order(kept_mask)
    npruned = head_dim - p.kept.shape[-1]
    out = torch.empty(kept_mask.shape, dtype=torch.float32, device=p.kept.device)
    out.scatter_(-1, order[..., npruned:], p.kept.float())
    if npruned:
        idx = order[..., :npruned]
        sign = unpack_bits(p.signs, npruned).float() * 2 - 1
        qn = qnorm.float().expand(kept_mask.shape).gather(-1, idx)
        out.scatter_(-1, idx, sign * (p.avg.float()[..., None] / qn).sqrt())
    return out


def prune_values(v: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """v (..., D) -> (kept values (..., keep) in channel order, bitmap): the top `keep` by |v|."""
    kept_mask = torch.zeros(v.shape, dtype=torch.bool, device=v.device)
    kept_mask.scatter_(-1, v.float().abs().topk(keep, dim=-1).indices, True)
    kept = split_order(kept_mask)[..., v.shape[-1] - keep:]
    return v.gather(-1, kept), pack_bits(kept_mask)


def restore_values(kept: torch.Tensor, bitmap: torch.Tensor, head_dim: int) -> torch.Tensor:
    """-> values (..., D) float32, pruned channels zero."""
    kept_mask = unpack_bits(bitmap, head_dim)
    out = torch.zeros(kept_mask.shape, dtype=torch.float32, device=kept.device)
    return out.scatter_(-1, split_order(kept_mask)[..., head_dim - kept.shape[-1]:], kept.float())


# ---- composition with TaDA (option bits) --------------------------------------------------------------
def quantize_kept(kept: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kept key values (..., T) -> packed codes (..., ceil(T * bits / 8)) uint8 (codes padded with
    zeros to a whole byte) and one fp16 scale and zero (...) over the T values."""
    x = kept.float()
    scale, zero = scale_zero(x.amin(-1), x.amax(-1), bits)
    codes = encode(x, scale[..., None], zero[..., None], bits)
    return pack(F.pad(codes, (0, -codes.shape[-1] % (8 // bits))), bits), scale, zero


def dequantize_kept(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                    keep: int) -> torch.Tensor:
    """-> kept key values (..., keep) float32."""
    return decode(unpack(packed, bits)[..., :keep], scale[..., None], zero[..., None])


def quantize_values(v: torch.Tensor, bits: int) -> tuple[torch.Tensor, ...]:
    """TaDA: v (..., H, D) -> deviation codes (..., H, D * bits / 8), fp16 scale and zero (..., H),
    fp16 head mean (..., D); v^i reads back as mean - deq(code^i) (`tada.TadaKV`, group_size = D)."""
    mean = v.float().mean(-2).to(torch.float16)
    codes, scale, zero = quantize(mean.float()[..., None, :] - v.float(), bits, v.shape[-1])
    return codes, scale[..., 0], zero[..., 0], mean


def dequantize_values(codes, scale, zero, mean, bits: int) -> torch.Tensor:
    """-> values (..., H, D) float32."""
    d = mean.shape[-1]
    return mean.float()[..., None, :] - dequantize(codes, scale[..., None], zero[..., None], bits, d)
