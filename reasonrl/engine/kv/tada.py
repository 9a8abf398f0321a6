"""TaDA KV cache: head-mean centering plus low-bit deviations, bit-width chosen per layer.

TaDA (arXiv 2506.04642, "Training-free recipe for Decoding with Adaptive KV cache compression
and mean-centering"). Per token and layer, the keys' mean over the KV heads K_m = mean_i K^i (a
head_dim vector) is stored in fp16, and each head's deviation D^i = K_m - K^i is quantized to 2, 4
or 8 bits with an fp16 scale and zero point per group of `group_size` channels; K^i is read back
as K_m - deq(D^i). Values the same way. Deviations from the head-mean have no sparse outliers,
so there is no separate outlier store. The bits of each layer come from a search
(`calibrate.py`), stored as a profile file.

Storage per token and layer, as a fraction of a 16-bit dense cache (H = KV heads, G = group):
1/H (means) + bits/16 (codes) + 2/G (scale and zero), plus the staging pool (see `quant.py`) and
4 bytes per block for its slot table. For MHA LLaMA-2-7B (H = 32, D = G = 128) at 4 bits: 0.297;
for GQA with 8 KV heads: 0.39; for 2 KV heads: 0.78 (the mean alone is half the dense cache).

Departures from the paper: the deviations are computed against the fp16-rounded mean, so the
reconstruction error is the quantization error alone; the "most recent R tokens in full
precision" are the tokens of each sequence's unfinished block (0 to block_size - 1), quantized
together when the block fills; quantization happens in PyTorch at write time, not fused into
RoPE and the V projection as in the paper's kernels (decode attention is a fused Triton kernel).

Options:
    bits        2, 4 or 8 for every layer, or a list with one entry per layer (default 4)
    profile     path of a profile JSON written by `calibrate.save_profile`
                (`calibrate.profile_path(checkpoint_dir, name)` gives `<checkpoint>/kv_profiles/<name>.json`;
                `LLMEngine.from_pretrained` also takes the bare name);
                excludes `bits`
    group_size  channels per scale and zero point; a divisor of head_dim (default: the profile's, else
                head_dim; a profile's bits were searched with its group, so another is refused)
"""

from __future__ import annotations

import torch

from reasonrl.engine.kv.quant import check_bits, check_group, check_packable, dequantize, quantize
from reasonrl.engine.kv.staged import QuantizedKV

U8, F16 = torch.uint8, torch.float16


class TadaKV(QuantizedKV):
    name = "tada"
    options = ("bits", "profile", "group_size")

    @classmethod
    def layer_bits(cls, cfg, bits=None, profile=None, **_) -> list[int]:
        if bits is not None and profile is not None:
            raise ValueError(f"kv_format {cls.name!r}: give option bits or option profile, not both")
        if profile is not None:
            from reasonrl.engine.kv.calibrate import read_profile

            bits = read_profile(profile)
        bits = 4 if bits is None else bits
        if isinstance(bits, (list, tuple)):
            if len(bits) != cfg.num_layers:
                raise ValueError(f"kv_format {cls.name!r}: option bits lists {len(bits)} layers, the model has "
                                 f"{cfg.num_layers}")
            return [check_packable(cls.name, "bits", check_bits(cls.name, "bits", b), cfg.head_dim) for b in bits]
        return [check_packable(cls.name, "bits", check_bits(cls.name, "bits", bits), cfg.head_dim)] * cfg.num_layers

    @classmethod
    def group(cls, cfg, group_size=None, profile=None, **_) -> int:
        """Channels per scale and zero point: the option, or the group the profile's bits were searched with."""
        if profile is not None:
            from reasonrl.engine.kv.calibrate import profile_group_size

            searched = profile_group_size(profile)  # None: saved before the group was recorded: as then
            if None not in (searched, group_size) and group_size != searched:
                raise ValueError(f"kv_format {cls.name!r}: option group_size {group_size!r}, but profile {profile} was "
                                 f"searched with group size {searched}; drop the option or search a profile with it")
            group_size = group_size if searched is None else searched
        return check_group(cls.name, cfg.head_dim if group_size is None else group_size, cfg.head_dim)

    @classmethod
    def layout(cls, cfg, block_size, **options):
        h, d = cfg.num_kv_heads, cfg.head_dim
        layer_bits = cls.layer_bits(cfg, **options)  # (a missing profile is named here first)
        g = cls.group(cfg, **options)
        out = []
        for bits in layer_bits:
            side = {"codes": ((block_size, h, d * bits // 8), U8), "scale": ((block_size, h, d // g), F16),
                    "zero": ((block_size, h, d // g), F16), "mean": ((block_size, d), F16)}
            out.append({f"{kv}_{name}": spec for kv in "kv" for name, spec in side.items()})
        return out

    def __init__(self, cfg, num_blocks, block_size, device, dtype, max_num_seqs=256, **options):
        super().__init__(cfg, num_blocks, block_size, device, dtype, max_num_seqs, **options)
        self.bits = self.layer_bits(cfg, **options)
        self.group_size = self.group(cfg, **options)

    def _quantize(self, layer, blocks, k, v):
        t, bits, g = self.tensors[layer], self.bits[layer], self.group_size
        for name, x in (("k", k), ("v", v)):
            x = x.float()  # (n, bs, H, D)
            mean = x.mean(2).to(F16)  # (n, bs, D)
            codes, scale, zero = quantize(mean.float()[:, :, None] - x, bits, g)
            for part, val in (("codes", codes), ("scale", scale), ("zero", zero), ("mean", mean)):
                t[f"{name}_{part}"].index_copy_(0, blocks, val)

    def _dequantize(self, layer, blocks):
        t, bits, g = self.tensors[layer], self.bits[layer], self.group_size
        out = []
        for name in "kv":
            dev = dequantize(t[f"{name}_codes"][blocks], t[f"{name}_scale"][blocks], t[f"{name}_zero"][blocks], bits, g)
            out.append(t[f"{name}_mean"][blocks].float()[:, :, None] - dev)  # (n, bs, H, D)
        return out[0], out[1]

    def _kernel_codes(self, layer):
        from reasonrl.kernels.kv_quant import QuantCodes

        t, bits, g = self.tensors[layer], self.bits[layer], self.group_size
        return tuple(QuantCodes(t[f"{n}_codes"], t[f"{n}_scale"], t[f"{n}_zero"], t[f"{n}_mean"], bits, g) for n in "kv")
