"""Low-bit codes shared by the quantized KV formats (TaDA, KIVI, SPARK with `bits`): bit packing
and asymmetric per-group quantization. The block life cycle they share is `staged.QuantizedKV`.

Codes. x ~ code * scale + zero with code in [0, 2^bits - 1], zero = the group's minimum and
scale = (max - min) / (2^bits - 1), both stored in fp16 (so |x - x_hat| <= scale / 2 plus fp16
rounding of scale and zero). 2-, 4- and 8-bit codes are packed into uint8 along the last
dimension: byte j holds codes j*per .. j*per + per - 1 (per = 8 // bits), code i at bit offset
bits * (i % per). The Triton kernels (`reasonrl/kernels/kv_quant.py`) unpack the same way.
"""

from __future__ import annotations

import torch

BITS = (2, 4, 8)


# ---- codes ------------------------------------------------------------------------------------
def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes (..., n) uint8 in [0, 2^bits) -> (..., n * bits / 8) uint8."""
    per = 8 // bits
    c = codes.to(torch.uint8).unflatten(-1, (-1, per))  # (..., n / per, per)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    return (c << shifts).sum(-1, dtype=torch.uint8)  # disjoint bit ranges: the sum is a bitwise or


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """packed (..., m) uint8 -> codes (..., m * 8 / bits) uint8."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    return ((packed[..., None] >> shifts) & ((1 << bits) - 1)).flatten(-2)


def scale_zero(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group minimum and maximum -> fp16 (scale, zero)."""
    zero = lo.to(torch.float16)
    scale = ((hi.float() - zero.float()) / ((1 << bits) - 1)).to(torch.float16)
    return scale, zero


def encode(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (uint8, unpacked) of x given broadcastable fp16 scale and zero."""
    s = scale.float()
    inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))  # a constant group has scale 0: code 0
    return ((x.float() - zero.float()) * inv).round_().clamp_(0, (1 << bits) - 1).to(torch.uint8)


def decode(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale.float() + zero.float()


def quantize(x: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Groups of `group_size` along the last dim: x (..., n) -> packed (..., n*bits/8), scale and zero (..., n/G)."""
    g = x.float().unflatten(-1, (-1, group_size))  # (..., n / G, G)
    scale, zero = scale_zero(g.amin(-1), g.amax(-1), bits)
    codes = encode(g, scale[..., None], zero[..., None], bits).flatten(-2)
    return pack(codes, bits), scale, zero


def dequantize(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    codes = unpack(packed, bits).unflatten(-1, (-1, group_size))
    return decode(codes, scale[..., None], zero[..., None]).flatten(-2)


def check_bits(name: str, option: str, bits) -> int:
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"kv_format {name!r}: option {option} must be one of {BITS}, got {bits!r}")
    return int(bits)


def check_packable(name: str, option: str, bits: int, head_dim: int) -> int:
    """`bits`-bit codes of a head_dim-long row fill whole bytes (`pack` needs it)."""
    if head_dim % (8 // bits):
        raise ValueError(f"kv_format {name!r}: option {option}={bits} needs head_dim={head_dim} to be a multiple of "
                         f"{8 // bits} (its codes fill whole bytes)")
    return bits


def check_group(name: str, group_size, head_dim: int) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or head_dim % group_size:
        raise ValueError(f"kv_format {name!r}: option group_size must be a positive divisor of head_dim={head_dim}, "
                         f"got {group_size!r}")
    return group_size
