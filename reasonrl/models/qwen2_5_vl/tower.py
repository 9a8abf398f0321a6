"""`VisionTower`: Qwen2.5-VL's vision transformer and patch merger (Qwen2.5-VL technical report,
arXiv 2502.13923).

Patches (a 3D conv whose kernel equals its stride, run here as one matmul) pass through RMSNorm /
SwiGLU blocks with a 2D rotary embedding; most blocks attend inside windows of
`window_size` pixels, the `fullatt_block_indexes` ones over each whole frame. The merger then
turns each merge x merge block of patches into one language-model token. Tokens run in window
order through the blocks and merger and are put back in raster order at the end, as the reference
implementation does, so per-window attention is over consecutive rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.models.model import RMSNorm
from reasonrl.models.qwen2_5_vl.config import VisionConfig
from reasonrl.models.qwen2_5_vl.layout import Segments, frame_lengths, patch_positions, window_order
from reasonrl.models.rope import apply_rotary


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segments: Segments) -> torch.Tensor:
        q, k, v = self.qkv(x).view(-1, 3, self.num_heads, self.head_dim).unbind(1)  # (P, H, D) each
        # rotated in float32, as the reference does, so bf16 towers agree with it
        q, k = (apply_rotary(t.float(), cos, sin).to(x.dtype) for t in (q, k))
        return self.proj(segments.attend(q, k, v).reshape(x.shape[0], -1))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = VisionAttention(cfg)
        self.norm2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x, cos, sin, segments: Segments):
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """RMSNorm, then each merge x merge block's patches concatenated -> MLP -> one LM token."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.block_size = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.ln_q = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(self.block_size, self.block_size), nn.GELU(),
                                 nn.Linear(self.block_size, cfg.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.block_size))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel, stride=kernel, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (P, C*T*p*p) -> (P, hidden): the conv covers each patch exactly once, a matmul."""
        weight = self.proj.weight
        return F.linear(pixels.to(weight.dtype), weight.view(weight.shape[0], -1))


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)

    def rotary(self, positions: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (P, 1, head_dim) float32: a quarter of the head's pairs per axis, (row, col) x 2."""
        quarter = self.config.head_dim // 4
        inv_freq = 1.0 / self.config.rope_theta ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
        freqs = (positions.to(device).float()[..., None] * inv_freq).flatten(1)  # (P, 2 * quarter)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        return emb.cos(), emb.sin()

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values (P, patch_dim), grid_thw (I, 3) -> merged tokens (P / merge**2, out_hidden),
        image after image, each in raster order of its merged grid."""
        cfg, dev = self.config, self.patch_embed.proj.weight.device
        grid_thw = grid_thw.cpu()
        if int(grid_thw.prod(-1).sum()) != pixel_values.shape[0]:
            raise ValueError(f"grid_thw {grid_thw.tolist()} implies {int(grid_thw.prod(-1).sum())} patches, "
                             f"pixel_values has {pixel_values.shape[0]}")
        unit = cfg.spatial_merge_size ** 2
        order, window_lens = window_order(grid_thw, cfg.spatial_merge_size, cfg.window_tokens)
        order = order.to(dev)
        patches = (order[:, None] * unit + torch.arange(unit, device=dev)).reshape(-1)  # window order, patch level
        x = self.patch_embed(pixel_values.to(dev))[patches]
        cos, sin = self.rotary(patch_positions(grid_thw, cfg.spatial_merge_size).to(dev)[patches], dev)
        windows = Segments.from_lengths(window_lens, dev)
        frames = Segments.from_lengths(frame_lengths(grid_thw), dev)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, frames if i in cfg.fullatt_block_indexes else windows)
        return self.merger(x)[torch.argsort(order)]
