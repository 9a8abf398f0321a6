"""The generators' transformer: image-token blocks that read a language model's per-layer states.

Instella-T2I's image stream: block i takes the hidden states of language-model layer i, maps them
with its own linear `proj_cond`, and attends over them together with the image tokens (the text
states serve as keys and values only; the text stream is not updated, the next block reads the
next layer). Each block adds its own learned 1D position embedding to the image tokens.
Attention among image tokens is bidirectional for diffusion and causal for the AR model.

Departure: an RMSNorm before each `proj_cond` (the tiny language model's residual stream grows
layer by layer; the normalisation keeps every block's conditioning at one scale).
"""

from __future__ import annotations

import torch
from torch import nn

from reasonrl.models.model import RMSNorm

from .blocks import EPS, Block, KVCache


class ConditionedStack(nn.Module):
    def __init__(self, width: int, num_heads: int, num_layers: int, text_width: int, num_tokens: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, num_heads) for _ in range(num_layers))
        self.cond_norm = nn.ModuleList(RMSNorm(text_width, EPS) for _ in range(num_layers))
        self.proj_cond = nn.ModuleList(nn.Linear(text_width, width) for _ in range(num_layers))
        self.pos_embed = nn.Parameter(torch.randn(num_layers, num_tokens, width) * 0.02)
        self.norm_out = RMSNorm(width, EPS)

    def prefixes(self, states: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block, the keys and values (B, T, H, D) of its language-model layer's states."""
        if len(states) != len(self.blocks):
            raise ValueError(f"{len(states)} language-model layers for {len(self.blocks)} blocks: they must match")
        return [blk.attn.keys_values(proj(norm(s))) for blk, norm, proj, s in
                zip(self.blocks, self.cond_norm, self.proj_cond, states)]

    def forward(self, x: torch.Tensor, prefixes, text_mask: torch.Tensor, causal: bool,
                start: int = 0, caches: list[KVCache] | None = None) -> torch.Tensor:
        """x (B, L, width): image tokens at positions start..start+L-1 -> (B, L, width), normalised.

        text_mask (B, T): real text tokens. With `caches` (one per block), earlier image tokens'
        keys are read from and these tokens' keys added to them (incremental AR decoding)."""
        b, length = x.shape[:2]
        seen = start + length if caches is not None else length  # image keys each query may see
        image = torch.ones(length, seen, dtype=torch.bool, device=x.device)
        if causal:
            image = torch.arange(seen, device=x.device)[None] <= torch.arange(start, start + length, device=x.device)[:, None]
        mask = torch.cat([text_mask[:, None, :].expand(b, length, -1), image.expand(b, -1, -1)], 2)[:, None]
        for i, block in enumerate(self.blocks):
            x = x + self.pos_embed[i, start:start + length]
            x = block(x, mask=mask, prefix=prefixes[i], cache=caches[i] if caches is not None else None)
        return self.norm_out(x)
