"""ImageDoctor's heatmap decoder: a SAM prompt encoder fed task-token embeddings, and a SAM mask
decoder whose upscaler is a transposed-convolution stack (arXiv 2510.01010).

Shapes (ImageDoctor at 504 px: an 18 x 18 grid of merged visual tokens, width C = 768):

- `PromptEncoder.encode(text)`: task embeddings (B, C) -> sparse prompts (B, 1, C) and dense
  prompts (B, C, h, w) (the learned `no_mask_embed` everywhere: no mask is given);
  `dense_pe(h, w)`: SAM's random-Fourier positional encoding of the grid, (1, C, h, w);
- `MaskDecoder`: one learned mask token plus the sparse prompt attend to the image tokens through
  the two-way transformer; the image tokens are upsampled by four stride-2 transposed convolutions
  (h -> 16h: 18 -> 288) to C/4 channels; the mask token's hypernetwork MLP (C -> C/4) is
  dot-multiplied with every pixel: logits (B, 1, 16h, 16w).

Parameter names are ImageDoctor's (`pe_layer`, `point_embeddings`, `not_a_point_embed`,
`mask_downscaling`, `no_mask_embed`; `mask_tokens`, `output_upscaling.{conv_layers,deconv_layers,
conv_layers2,last_conv1}`, `output_hypernetworks_mlps.0.layers`). The point, box and mask inputs
of SAM's prompt encoder are never used by ImageDoctor; their tensors are kept so that a real
checkpoint loads with every tensor accounted for. SAM's IoU head is absent, as in ImageDoctor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reasonrl.config import positive_ints
from reasonrl.reward.imagedoctor.sam import TwoWayTransformer


@dataclass
class HeatmapConfig:
    dim: int = 768
    """Width of the prompt encoder and the two-way transformer (ImageDoctor: 768)."""
    depth: int = 2
    """Two-way transformer blocks."""
    heads: int = 8
    """Attention heads of the two-way transformer."""
    mlp_dim: int = 2048
    """Hidden width of the two-way transformer's MLPs."""
    conv_channels: tuple[int, int] = (768, 384)
    """Channels of the two 3x3 convolutions before upsampling."""
    up_channels: tuple[int, ...] = (768, 384, 384, 192)
    """Channels after each stride-2 transposed convolution (4 of them: x16)."""
    mask_in_chans: int = 16
    """SAM prompt encoder's mask-input channels (unused by ImageDoctor, kept for the layout)."""

    def __post_init__(self):
        positive_ints(self, ("dim", "depth", "heads", "mlp_dim", "mask_in_chans"), "HeatmapConfig.")
        if self.dim % 4 or (self.dim // 2) % self.heads:
            raise ValueError(f"HeatmapConfig.dim {self.dim} must be divisible by 4 and dim/2 by heads {self.heads}")
        self.conv_channels, self.up_channels = tuple(self.conv_channels), tuple(self.up_channels)
        if len(self.conv_channels) != 2 or not self.up_channels:
            raise ValueError("HeatmapConfig: conv_channels needs 2 entries and up_channels at least one")

    @property
    def upscale(self) -> int:
        return 2 ** len(self.up_channels)


class ChannelNorm(nn.Module):
    """RMS over channels of a (B, C, H, W) map with a learned scale (T5-style; ImageDoctor's LayerNorm)."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt() * self.scale


class LayerNorm2d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - x.mean(1, keepdim=True)) / (x.var(1, keepdim=True, unbiased=False) + 1e-6).sqrt()
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PositionEmbeddingRandom(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, dim // 2))

    def forward(self, h: int, w: int) -> torch.Tensor:
        """(C, h, w): sin and cos of random projections of cell centres in [-1, 1]."""
        m = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=m.device, dtype=m.dtype) + 0.5) / h
        xs = (torch.arange(w, device=m.device, dtype=m.dtype) + 0.5) / w
        coords = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)  # (h, w, 2) as (x, y)
        proj = 2 * math.pi * ((2 * coords - 1) @ m)
        return torch.cat([proj.sin(), proj.cos()], dim=-1).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    def __init__(self, dim: int, mask_in_chans: int):
        super().__init__()
        self.pe_layer = PositionEmbeddingRandom(dim)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        q = mask_in_chans // 4
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, q, 2, stride=2), LayerNorm2d(q), nn.GELU(),
            nn.Conv2d(q, mask_in_chans, 2, stride=2), LayerNorm2d(mask_in_chans), nn.GELU(),
            nn.Conv2d(mask_in_chans, dim, 1))
        self.no_mask_embed = nn.Embedding(1, dim)

    def dense_pe(self, h: int, w: int) -> torch.Tensor:
        return self.pe_layer(h, w)[None]

    def encode(self, text: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """text (B, C) -> sparse (B, 1, C), dense (B, C, h, w)."""
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(text.shape[0], -1, h, w)
        return text[:, None], dense


class HeatmapUpscaler(nn.Module):
    """(B, C, h, w) -> (B, C/4, 16h, 16w): two convolutions, then per stage a transposed
    convolution (x2) and a residual pair of convolutions."""

    def __init__(self, cfg: HeatmapConfig):
        super().__init__()
        c0, c1 = cfg.conv_channels
        self.conv_layers = nn.Sequential(nn.Conv2d(cfg.dim, c0, 3, padding="same"), nn.ReLU(), ChannelNorm(c0),
                                         nn.Conv2d(c0, c1, 3, padding="same"), nn.ReLU(), ChannelNorm(c1))
        self.deconv_layers, self.conv_layers2 = nn.ModuleList(), nn.ModuleList()
        c = c1
        for out in cfg.up_channels:
            self.deconv_layers.append(nn.Sequential(
                nn.ConvTranspose2d(c, out, 3, stride=2, padding=1, output_padding=1), ChannelNorm(out), nn.ReLU()))
            self.conv_layers2.append(nn.Sequential(
                nn.Conv2d(out, out, 3, padding="same"), ChannelNorm(out), nn.ReLU(),
                nn.Conv2d(out, out, 3, padding="same"), ChannelNorm(out)))
            c = out
        self.last_conv1 = nn.Conv2d(c, cfg.dim // 4, 3, padding="same")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_layers(x)
        for deconv, conv in zip(self.deconv_layers, self.conv_layers2):
            x = deconv(x)
            x = torch.relu(x + conv(x))
        return torch.relu(self.last_conv1(x))


class HyperMLP(nn.Module):
    def __init__(self, dim: int, out: int, num_layers: int = 3):
        super().__init__()
        sizes = [dim] * num_layers + [out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


class MaskDecoder(nn.Module):
    def __init__(self, cfg: HeatmapConfig):
        super().__init__()
        self.transformer = TwoWayTransformer(cfg.depth, cfg.dim, cfg.heads, cfg.mlp_dim)
        self.mask_tokens = nn.Embedding(1, cfg.dim)
        self.output_upscaling = HeatmapUpscaler(cfg)
        self.output_hypernetworks_mlps = nn.ModuleList([HyperMLP(cfg.dim, cfg.dim // 4)])

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor) -> torch.Tensor:
        """image (B, C, h, w), image_pe (1, C, h, w), sparse (B, N, C), dense (B, C, h, w) -> logits (B, 16h, 16w)."""
        b, c, h, w = image.shape
        tokens = torch.cat([self.mask_tokens.weight[None].expand(b, -1, -1), sparse], dim=1)
        hs, src = self.transformer(image + dense, image_pe.expand(b, -1, -1, -1), tokens)
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))  # (B, C/4, 16h, 16w)
        hyper = self.output_hypernetworks_mlps[0](hs[:, 0])  # (B, C/4)
        return torch.einsum("bc,bchw->bhw", hyper, up)
