"""The two-way transformer of SAM (Kirillov et al., arXiv 2304.02643) as ImageDoctor uses it.

Prompt tokens (queries, (B, Nq, C)) and image tokens (keys, (B, HW, C)) attend to each other: each
block runs token self-attention, token-to-image cross-attention, an MLP on the tokens, then
image-to-token cross-attention; a last token-to-image attention follows the blocks. Positional
encodings are added to queries and keys before every attention (the first block's self-attention
skips them, as SAM's does). Cross-attentions work at half width (`downsample` 2).

Module and parameter names follow `segment_anything` (`layers.{i}.self_attn.q_proj`, `norm1`..`norm4`,
`mlp.lin1`, `final_attn_token_to_image`, `norm_final_attn`), so ImageDoctor's `heatmap.transformer.*`
tensors load as they are.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head attention whose projections may narrow the width by `downsample`."""

    def __init__(self, dim: int, heads: int, downsample: int = 1):
        super().__init__()
        inner = dim // downsample
        if inner % heads:
            raise ValueError(f"attention width {inner} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Nq, C), k and v (B, Nk, C) -> (B, Nq, C)."""
        b = q.shape[0]
        q, k, v = ((proj(x).view(b, x.shape[1], self.heads, -1).transpose(1, 2))  # (B, heads, N, d)
                   for proj, x in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v)))
        weights = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, -1, self.heads * q.shape[-1]))


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.relu(self.lin1(x)))


class TwoWayBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_pe: bool):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.cross_attn_token_to_image = Attention(dim, heads, downsample=2)
        self.cross_attn_image_to_token = Attention(dim, heads, downsample=2)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.LayerNorm(dim) for _ in range(4))
        self.skip_first_pe = skip_first_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, heads, mlp_dim, skip_first_pe=i == 0) for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, heads, downsample=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
        """image, image_pe (B, C, H, W), tokens (B, N, C) -> (tokens (B, N, C), image tokens (B, HW, C))."""
        keys, key_pe = image.flatten(2).transpose(1, 2), image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        return self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys)), keys
