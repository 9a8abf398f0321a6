"""The tokenizer's ViT encoder: patches and K learned latent tokens under joint attention.

Instella-T2I's `AE_Encoder`: a patch convolution, K learned latent tokens placed before the patch
tokens, full (bidirectional) attention with axial rotary positions (rope.py), an optional 2 x 2
merge of the patch tokens after given blocks (resample.Down), and at the end the patch tokens
are dropped: the K latent tokens, normalised and projected, are the image's representation.

`pooled_latents` (an option, not in Instella): latent token k starts as its learned token plus the mean
of the patch tokens of the k-th region of a near-square layout of the image, instead of the learned token
alone; attention then refines local summaries rather than having to learn where to look from nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from reasonrl.models.model import RMSNorm

from .blocks import EPS, Block
from .resample import Down
from .rope import axial_cos_sin, grid_positions, sinusoidal, token_ids


def latent_grid(num_latent: int) -> tuple[int, int]:
    """Rows x columns of a near-square layout of K latent tokens (32 -> 4 x 8)."""
    rows = max(r for r in range(1, int(num_latent ** 0.5) + 1) if num_latent % r == 0)
    return rows, num_latent // rows


def pool_to_latents(grid: torch.Tensor, num_latent: int) -> torch.Tensor:
    """(B, dim, h, w) patch tokens -> (B, K, dim): their averages over a latent_grid(K) layout of regions
    (adaptive pooling: a region may be part of a patch, repeated, or several patches)."""
    return torch.nn.functional.adaptive_avg_pool2d(grid, latent_grid(num_latent)).flatten(2).transpose(1, 2)


class Encoder(nn.Module):
    def __init__(self, in_channels: int, num_layers: int, head_dim: int, num_heads: int, patch_size: int,
                 num_latent: int, downsample_idx: tuple[int, ...], axes_dims: tuple[int, ...],
                 absolute: bool = False, pooled_latents: bool = False):
        super().__init__()
        dim = head_dim * num_heads
        if sum(axes_dims) != head_dim:
            raise ValueError(f"axes_dims_rope {list(axes_dims)} must sum to the head size {head_dim}")
        self.num_latent, self.downsample_idx, self.axes_dims = num_latent, tuple(downsample_idx), tuple(axes_dims)
        self.absolute, self.pooled_latents = absolute, pooled_latents
        self.patch_embedder = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.transformer_blocks = nn.ModuleList(Block(dim, num_heads) for _ in range(num_layers))
        if self.downsample_idx:
            self.down_layers = nn.ModuleList(Down(dim) for _ in self.downsample_idx)
        self.norm_out = RMSNorm(dim, EPS)
        self.proj_out = nn.Linear(dim, dim)
        self.latent_tokens = nn.Parameter(torch.randn(1, num_latent, dim) * 0.02)

    def rope(self, height: int, width: int, scale: int | None, x: torch.Tensor):
        cos, sin = axial_cos_sin(token_ids(self.num_latent, height, width, scale), self.axes_dims, x.dtype)
        return cos.to(x.device), sin.to(x.device)

    def forward(self, pixels: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        """pixels (B, C, H, W) -> latent tokens (B, K, dim); `scale`: the reference grid of positions."""
        x = self.patch_embedder(pixels)  # (B, dim, h, w)
        b, dim, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        if self.absolute:  # fixed position features in the values too (rotary positions only reach scores)
            x = x + 0.1 * sinusoidal(grid_positions(h, w, scale), dim, x.dtype).to(x.device)
        latent = self.latent_tokens.expand(b, -1, -1)
        if self.pooled_latents:  # latent k starts as the mean of the patch tokens of its own region
            latent = latent + pool_to_latents(x.transpose(1, 2).reshape(b, dim, h, w), self.num_latent)
        x = torch.cat([latent, x], 1)
        rope = self.rope(h, w, scale, x)
        downs = iter(getattr(self, "down_layers", []))
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, rope)
            if i in self.downsample_idx:
                latent, grid = x[:, :self.num_latent], x[:, self.num_latent:].reshape(b, h, w, -1)
                x = torch.cat([latent, next(downs)(grid)], 1)
                h, w = h // 2, w // 2
                scale = None if scale is None else scale // 2
                rope = self.rope(h, w, scale, x)
        return self.proj_out(self.norm_out(x[:, :self.num_latent]))
