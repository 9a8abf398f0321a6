"""`Smarli`: a next-set (masked, MaskGIT / Show-o style) image model over [prompt][layout][image].

One transformer reads the prompt's text tokens, the layout tokens (each object's region text then
one box token from Fourier features of its box; SMARLI concatenates them along the sequence and
passes them through a zero-initialised MLP with a residual, obj = x + MLP(x)) and the image's
cell tokens (cells.py), some replaced by [MASK]; the attention mask is the structured mask
(mask.py) or an ablation. The output at each image position is a distribution over cell tokens.

Departures from SMARLI (paper: arXiv 2509.12046): a tiny model trained from scratch on shapes
scenes instead of fine-tuning Show-o 1.3B; a deterministic cell codebook instead of MAGVIT-v2;
cell tokens are embedded and predicted factorised, token (pattern, colour) -> E_pattern + E_colour
and logit = w_pattern . h + w_colour . h (one softmax over all tokens), so the 2,000-odd ids
share what they have in common; no classifier-free guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.models.model import RMSNorm
from reasonrl.vision.binary.blocks import EPS, Block, init_linear
from reasonrl.vision.gen.io import register_kind

from .cells import NUM_COLOURS
from .layout import Batch


@dataclass(frozen=True)
class SmarliConfig:
    vocab_size: int = 256
    """Text vocabulary (the BPE tokenizer saved with the model)."""
    patterns: tuple[int, ...] = ()
    """The cell codebook: occupancy patterns (cells.py); image vocabulary 1 + 8 x len(patterns)."""
    width: int = 128
    """Transformer width."""
    num_heads: int = 4
    """Attention heads."""
    num_layers: int = 4
    """Transformer blocks."""
    grid: int = 8
    """Image tokens per side."""
    cell: int = 4
    """Pixels per cell side (image side = grid x cell)."""
    prompt_slots: int = 40
    """Positions reserved for the prompt's tokens."""
    layout_slots: int = 24
    """Positions reserved for the layout's tokens (all objects)."""
    fourier_freqs: int = 8
    """Octaves of the Fourier box features."""
    rules: Literal["structured", "no_isolation", "causal"] = "structured"
    """Attention mask: SMARLI's four rules, without rules 3-4, or one causal mask (mask.py)."""

    @property
    def image_vocab(self) -> int:
        return 1 + NUM_COLOURS * len(self.patterns)

    @property
    def mask_id(self) -> int:
        """The [MASK] image token (outside the vocabulary the head predicts)."""
        return self.image_vocab


def fourier(boxes: torch.Tensor, freqs: int) -> torch.Tensor:
    """(..., 4) in [0, 1] -> (..., 8 * freqs): sin and cos of 2^k pi v per coordinate (GLIGEN's box features)."""
    angles = boxes[..., None] * (math.pi * 2.0 ** torch.arange(freqs, dtype=boxes.dtype))  # (..., 4, F)
    return torch.cat([angles.sin(), angles.cos()], -1).flatten(-2)


class ZeroMLP(nn.Module):
    """x + MLP(x) with the MLP's last layer zero-initialised: the identity at the start."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def zero(self) -> None:
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(x)))


@register_kind("smarli", SmarliConfig)
class Smarli(nn.Module):
    def __init__(self, cfg: SmarliConfig):
        super().__init__()
        self.config = cfg
        d, n_image, m = cfg.width, cfg.grid * cfg.grid, len(cfg.patterns)
        self.text_embed = nn.Embedding(cfg.vocab_size, d)
        self.text_pos = nn.Embedding(cfg.prompt_slots + cfg.layout_slots, d)
        self.segment = nn.Embedding(3, d)  # prompt, layout, image
        self.box_embed = nn.Linear(8 * cfg.fourier_freqs, d)
        self.layout_mlp = ZeroMLP(d)
        self.pattern_embed, self.colour_embed = nn.Embedding(max(m, 1), d), nn.Embedding(NUM_COLOURS, d)
        self.special = nn.Embedding(2, d)  # EMPTY, [MASK]
        self.image_pos = nn.Parameter(torch.randn(n_image, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(d, EPS)
        self.pattern_head, self.colour_head, self.empty_head = nn.Linear(d, max(m, 1)), nn.Linear(d, NUM_COLOURS), nn.Linear(d, 1)
        init_linear(self)
        for emb in (self.text_embed, self.text_pos, self.segment, self.pattern_embed, self.colour_embed, self.special):
            nn.init.normal_(emb.weight, 0.0, 0.02)
        self.layout_mlp.zero()

    def embed_image(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N) cell tokens or [MASK] -> (B, N, width)."""
        cfg = self.config
        real = (tokens >= 1) & (tokens < cfg.image_vocab)
        pattern, colour = torch.where(real, tokens - 1, 0).div(NUM_COLOURS, rounding_mode="floor"), (tokens - 1).clamp(min=0) % NUM_COLOURS
        x = self.pattern_embed(pattern) + self.colour_embed(colour)
        special = self.special((tokens == cfg.mask_id).long())
        return torch.where(real[..., None], x, special)

    def embed(self, batch: Batch, tokens: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        p = cfg.prompt_slots
        text = self.text_embed(batch.text_ids) + self.text_pos(batch.text_pos)
        boxes = self.box_embed(fourier(batch.boxes, cfg.fourier_freqs))
        layout = torch.where(batch.is_box[..., None], boxes, text[:, p:]) + self.segment.weight[1]
        prompt = text[:, :p] + self.segment.weight[0]
        image = self.embed_image(tokens) + self.image_pos + self.segment.weight[2]
        return torch.cat([prompt, self.layout_mlp(layout), image], 1)

    def forward(self, batch: Batch, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, N) with [MASK]s -> log-probabilities (B, N, image_vocab) at every image position."""
        x = self.embed(batch, tokens)
        mask = batch.attn[:, None]  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, mask=mask)
        h = self.norm(x[:, -tokens.shape[1]:])
        joint = (self.pattern_head(h)[..., :, None] + self.colour_head(h)[..., None, :]).flatten(-2)
        logits = torch.cat([self.empty_head(h), joint[..., :self.config.image_vocab - 1]], -1)
        return F.log_softmax(logits.float(), -1)
