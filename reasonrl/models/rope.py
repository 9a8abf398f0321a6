"""Rotary position embeddings: default, linear, dynamic-NTK and llama3 scaling.

Frequencies follow the Hugging Face definitions so logits match transformers. One departure:
dynamic NTK. transformers recomputes the base whenever a forward sees a longer sequence, so keys
already cached keep the rotation of an older base and a full-sequence forward disagrees with
incremental decoding. Here the base is fixed once from `max_len` (the longest sequence the model
will be asked to run): within `max_position_embeddings` it is plain RoPE, exactly as
transformers; beyond, it is transformers' formula evaluated at `max_len` (as vLLM does). Training
and inference therefore rotate every position the same way.
"""

from __future__ import annotations

import math

import torch

from reasonrl.models.config import ModelConfig


def inv_frequencies(cfg: ModelConfig, max_len: int | None = None) -> torch.Tensor:
    """(head_dim / 2,) float32 inverse frequencies."""
    dim = cfg.head_dim
    base = cfg.rope_theta
    scaling = cfg.rope_scaling or {}
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "dynamic":
        seq_len = max(max_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        factor = scaling["factor"]
        base = base * ((factor * seq_len / cfg.max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if rope_type == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif rope_type == "llama3":
        inv_freq = _llama3(inv_freq, scaling)
    return inv_freq


def _llama3(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    # Long wavelengths are stretched by `factor`, short ones kept, the band between interpolated.
    factor, low, high, old_len = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


class Rotary(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, max_len: int | None = None):
        super().__init__()
        self.register_buffer("inv_freq", inv_frequencies(cfg, max_len), persistent=False)
        self.mrope_section = list(cfg.mrope_section) if cfg.mrope_section else None

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (N, 1, head_dim) for positions (N,), or (3, N) M-RoPE rows."""
        freqs = positions.float()[..., None] * self.inv_freq.float()  # (N, D/2) or (3, N, D/2)
        if positions.dim() == 2:
            if self.mrope_section is None:
                raise ValueError(f"positions of shape {tuple(positions.shape)} need an M-RoPE model (config 'mrope_section')")
            bands = freqs.split(self.mrope_section, dim=-1)
            freqs = torch.cat([band[i] for i, band in enumerate(bands)], dim=-1)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (N, H, D) rotated by position; the half-split convention of Llama/Qwen checkpoints."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
