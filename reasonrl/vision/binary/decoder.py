"""The tokenizer's ViT decoder: K latent tokens plus one learned mask token per image patch.

Instella-T2I's `AE_Decoder`: the latent embeddings are normalised and widened (`input_layer`),
H x W copies of one learned mask token are appended, full attention with axial rotary positions
runs over both (rope.py; the grid's positions are stretched onto the reference grid `scale`, so
a finer grid decodes the same tokens at a larger resolution), an optional 2 x 2 split of the
image tokens follows given blocks (resample.Up; the grid then starts at half size), and the
latent tokens are dropped. `BitTokenizer.to_pixel` turns each remaining token into a patch.

`num_latent` > 0 (TokenizerConfig.latent_positions, an option, not in Instella) adds a learned embedding
per latent index to the widened latent tokens, so a mask token can find "latent k" by what it is
and not only through the coarse rotary index.
"""

from __future__ import annotations

import torch
from torch import nn

from reasonrl.models.model import RMSNorm

from .blocks import EPS, Block
from .resample import Up
from .rope import axial_cos_sin, grid_positions, sinusoidal, token_ids

LATENT_POS_STD = 0.2  # about the size of `input_layer`'s outputs at initialisation (0.02 x sqrt(width 128))


class Decoder(nn.Module):
    def __init__(self, in_channels: int, num_layers: int, head_dim: int, num_heads: int,
                 upsample_idx: tuple[int, ...], axes_dims: tuple[int, ...], absolute: bool = False,
                 num_latent: int = 0):
        super().__init__()
        dim = head_dim * num_heads
        if sum(axes_dims) != head_dim:
            raise ValueError(f"axes_dims_rope {list(axes_dims)} must sum to the head size {head_dim}")
        self.upsample_idx, self.axes_dims, self.absolute = tuple(upsample_idx), tuple(axes_dims), absolute
        self.input_layer = nn.Sequential(RMSNorm(in_channels, EPS), nn.Linear(in_channels, dim))
        self.transformer_blocks = nn.ModuleList(Block(dim, num_heads) for _ in range(num_layers))
        if self.upsample_idx:
            self.up_layers = nn.ModuleList(Up(dim) for _ in self.upsample_idx)
        self.norm_out = RMSNorm(dim, EPS)
        self.mask_tokens = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        if num_latent:  # a learned embedding per latent index (`latent_positions`; not in Instella)
            self.latent_pos = nn.Parameter(torch.randn(1, num_latent, dim) * LATENT_POS_STD)

    def rope(self, num_latent: int, height: int, width: int, scale, x: torch.Tensor):
        cos, sin = axial_cos_sin(token_ids(num_latent, height, width, scale), self.axes_dims, x.dtype)
        return cos.to(x.device), sin.to(x.device)

    def forward(self, latent: torch.Tensor, height: int, width: int, scale: float | None = None) -> torch.Tensor:
        """latent (B, K, in_channels), the patch grid height x width -> image tokens (B, height * width, dim)."""
        x = self.input_layer(latent)
        b, k = x.shape[:2]
        if hasattr(self, "latent_pos"):
            if k != self.latent_pos.shape[1]:
                raise ValueError(f"{k} latent tokens given to a decoder with {self.latent_pos.shape[1]} latent positions")
            x = x + self.latent_pos
        shrink = 2 ** len(self.upsample_idx)
        h, w = height // shrink, width // shrink
        scale = None if scale is None else scale / shrink
        masks = self.mask_tokens.expand(b, h * w, -1)
        if self.absolute:  # fixed features of the (stretched) grid position, at the mask token's scale
            masks = masks + 0.02 * sinusoidal(grid_positions(h, w, scale), masks.shape[-1], x.dtype).to(x.device)
        x = torch.cat([x, masks], 1)
        rope = self.rope(k, h, w, scale, x)
        ups = iter(getattr(self, "up_layers", []))
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, rope)
            if i in self.upsample_idx:
                x = torch.cat([x[:, :k], next(ups)(x[:, k:].reshape(b, h, w, -1))], 1)
                h, w = 2 * h, 2 * w
                scale = None if scale is None else 2 * scale
                rope = self.rope(k, h, w, scale, x)
        return self.norm_out(x[:, k:])
