"""`BitAR`: autoregressive generation over bit tokens, each token's bits as independent Bernoullis.

Instella-T2I's AR model (`models/ar_model.py`): a causal transformer whose input at position k is
a linear embedding of token k-1's bit vector (a learned `split_token` stands in at k = 0, as
BOS), and whose output is d logits, one independent Bernoulli per bit of token k (the joint is
factorised within a token); trained with binary cross-entropy. Sampling applies classifier-free
guidance to the logits, then draws the bits (or thresholds them at temperature 0).

Sampling is batched and KV-cached: every prompt and its unconditional twin form one batch, the
language model's states are projected to keys and values once, and each of the K steps runs one
new token per row against the cache. reasonrl's engine (engine/) does the same for token LMs, but
its sampler, block tables and requests are built around one vocabulary id per step; a step here
emits a d-bit vector (2^d joint values, never enumerated), so this sampler is its own small loop
with the engine's shape (one batched forward per step, rows finishing together).

Departures: tiny sizes; bits enter as +-1 (2b - 1) rather than 0/1; prompts are conditioned on
every language-model layer through `ConditionedStack` (stack.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.vision.gen.io import register_kind
from reasonrl.vision.gen.noise import Draws, uniform

from .blocks import KVCache, init_linear
from .generator import GeneratorConfig, guided
from .stack import ConditionedStack


@register_kind("bit_ar", GeneratorConfig)
class BitAR(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.config = cfg
        self.split_token = nn.Parameter(torch.randn(1, 1, cfg.width) * 0.02)
        self.x_embedder = nn.Linear(cfg.bits, cfg.width)
        self.stack = ConditionedStack(cfg.width, cfg.num_heads, cfg.num_layers, cfg.text_width, cfg.num_tokens)
        self.proj_out = nn.Linear(cfg.width, cfg.bits)
        init_linear(self)

    def inputs(self, bits: torch.Tensor) -> torch.Tensor:
        """(B, L, d) bits of tokens 0..L-1 -> (B, L + 1, width): split token, then their embeddings."""
        b = bits.shape[0]
        return torch.cat([self.split_token.expand(b, -1, -1), self.x_embedder(2 * bits - 1)], 1)

    def forward(self, bits: torch.Tensor, states: list[torch.Tensor], text_mask: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: bits (B, K, d) -> logits (B, K, d) of each token given those before it."""
        x = self.inputs(bits[:, :-1])
        return self.proj_out(self.stack(x, self.stack.prefixes(states), text_mask, causal=True))

    def loss(self, bits, states, text_mask) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self(bits, states, text_mask), bits)

    @torch.no_grad()
    def sample(self, states, text_mask, guidance: float = 3.0, temperature: float = 1.0,
               generator: Draws = None) -> torch.Tensor:
        """states/mask of 2B rows (B prompts, then B empty prompts) -> bits (B, K, d); generator: gen/noise.py."""
        rows, half = text_mask.shape[0], text_mask.shape[0] // 2
        prefixes = self.stack.prefixes(states)
        caches = [KVCache() for _ in self.stack.blocks]
        x = self.split_token.expand(rows, -1, -1)
        out = []
        for k in range(self.config.num_tokens):
            logits = self.proj_out(self.stack(x, prefixes, text_mask, causal=True, start=k, caches=caches))[:, -1]
            logits = guided(logits[:half], logits[half:], guidance)
            bits = draw_bits(logits, temperature, generator)
            out.append(bits)
            x = self.x_embedder(2 * bits.repeat(2, 1) - 1)[:, None]  # both halves continue from the drawn bits
        return torch.stack(out, 1)


def draw_bits(logits: torch.Tensor, temperature: float, generator: Draws) -> torch.Tensor:
    """Bernoulli(sigmoid(logits / temperature)) draws; temperature 0: threshold at 0."""
    if temperature == 0:
        return (logits > 0).to(logits.dtype)
    p = torch.sigmoid(logits / temperature)
    return (uniform(p.shape, generator, p.dtype) < p).to(p.dtype)
