"""KIVI KV cache: keys quantized per channel, values per token (the 2-bit quantization baseline).

KIVI (arXiv 2402.02750, "A Tuning-Free Asymmetric 2bit Quantization for KV Cache"). Keys have
outlier channels, so each channel gets its own scale and zero point over a group of tokens;
values are quantized per token in groups of `group_size` channels. Recent tokens stay in full
precision until a whole group of them can be quantized (the "residual").

Here the token group of a key channel is one KV block: its block_size tokens share one fp16
scale and zero per (KV head, channel); the residual is the unfinished block, kept in the staging
pool (`quant.py`) and quantized when the block fills, so a channel's scale is never fit on a
single token (a known silent no-op of per-channel quantization on 1-token decode slices).
Storage per token and layer, as a fraction of a 16-bit dense cache: k_bits/32 + 1/block_size
(per-channel key scale and zero, spread over the block) + v_bits/32 + 1/group_size (value scale
and zero), plus the staging pool and a 4-byte slot entry per block. With 2 bits, block_size 16
and group 32: 0.0625 + 0.0625 + 0.0625 + 0.03125 = 0.22 (KIVI's token groups of 32 give 0.19).

Departures: the key token group is the engine's block (default 16 tokens) rather than KIVI's 32;
the residual is 0 to block_size - 1 tokens rather than a fixed R.

Options:
    k_bits, v_bits  2, 4 or 8 (default 2)
    group_size      value channels per scale; a divisor of head_dim (default 32, or head_dim if smaller)
"""

from __future__ import annotations

import torch

from reasonrl.engine.kv.quant import (check_bits, check_group, check_packable, decode, dequantize, encode, pack, quantize,
                                      scale_zero, unpack)
from reasonrl.engine.kv.staged import QuantizedKV

U8, F16 = torch.uint8, torch.float16


class KiviKV(QuantizedKV):
    name = "kivi"
    options = ("k_bits", "v_bits", "group_size")

    @classmethod
    def settings(cls, cfg, k_bits=2, v_bits=2, group_size=None) -> tuple[int, int, int]:
        default = max(g for g in range(1, min(32, cfg.head_dim) + 1) if cfg.head_dim % g == 0)  # 32, or 20 at head_dim 80
        group = check_group(cls.name, default if group_size is None else group_size, cfg.head_dim)
        return (check_packable(cls.name, "k_bits", check_bits(cls.name, "k_bits", k_bits), cfg.head_dim),
                check_packable(cls.name, "v_bits", check_bits(cls.name, "v_bits", v_bits), cfg.head_dim), group)

    @classmethod
    def layout(cls, cfg, block_size, **options):
        kb, vb, g = cls.settings(cfg, **options)
        h, d = cfg.num_kv_heads, cfg.head_dim
        layer = {"k_codes": ((block_size, h, d * kb // 8), U8), "k_scale": ((h, d), F16), "k_zero": ((h, d), F16),
                 "v_codes": ((block_size, h, d * vb // 8), U8), "v_scale": ((block_size, h, d // g), F16),
                 "v_zero": ((block_size, h, d // g), F16)}
        return [dict(layer) for _ in range(cfg.num_layers)]

    def __init__(self, cfg, num_blocks, block_size, device, dtype, max_num_seqs=256, **options):
        super().__init__(cfg, num_blocks, block_size, device, dtype, max_num_seqs, **options)
        self.k_bits, self.v_bits, self.group_size = self.settings(cfg, **options)

    def _quantize(self, layer, blocks, k, v):
        t = self.tensors[layer]
        k = k.float()  # (n, bs, H, D)
        k_scale, k_zero = scale_zero(k.amin(1), k.amax(1), self.k_bits)  # (n, H, D): per channel, over the block
        k_codes = pack(encode(k, k_scale[:, None], k_zero[:, None], self.k_bits), self.k_bits)
        v_codes, v_scale, v_zero = quantize(v, self.v_bits, self.group_size)
        for name, val in (("k_codes", k_codes), ("k_scale", k_scale), ("k_zero", k_zero), ("v_codes", v_codes),
                          ("v_scale", v_scale), ("v_zero", v_zero)):
            t[name].index_copy_(0, blocks, val)

    def _dequantize(self, layer, blocks):
        t = self.tensors[layer]
        k = decode(unpack(t["k_codes"][blocks], self.k_bits), t["k_scale"][blocks][:, None], t["k_zero"][blocks][:, None])
        v = dequantize(t["v_codes"][blocks], t["v_scale"][blocks], t["v_zero"][blocks], self.v_bits, self.group_size)
        return k, v

    def _kernel_codes(self, layer):
        from reasonrl.kernels.kv_quant import QuantCodes

        t = self.tensors[layer]
        return (QuantCodes(t["k_codes"], t["k_scale"], t["k_zero"], None, self.k_bits, 1, per_channel=True),
                QuantCodes(t["v_codes"], t["v_scale"], t["v_zero"], None, self.v_bits, self.group_size))
