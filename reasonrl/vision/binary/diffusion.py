"""`BitDiffusion`: Bernoulli diffusion over the bits of all K tokens at once.

Instella-T2I's diffusion model (`models/diff_model.py`), the Bernoulli diffusion of Binary Latent
Diffusion (Wang et al. 2023, arXiv 2304.04820):

- forward process: x_t ~ Bernoulli((1 - t) x_0 + t / 2): at t = 1 every bit is a fair coin;
  training draws t from a logistic-normal, t = sigmoid(n), n ~ N(0, 1);
- the network outputs flip logits o, the log-odds that each bit of x_t differs from x_0; the
  logits of x_0 are then x_t (-o) + (1 - x_t) o, and the loss is BCE against x_0;
- sampling (20 steps by default): start from fair coins at t = 1; at each step predict
  p(x_0) (with classifier-free guidance on its logits) and re-noise to the next t,
  x_t' ~ Bernoulli((1 - t') p(x_0) + t' / 2) (the public code's "protocal_1"); the last step
  thresholds p(x_0) at 0.5.

Departures: tiny sizes; t enters as a sinusoidal embedding through an MLP added to every token
(no adaptive norms); bits enter as +-1; t is spaced uniformly in the sampler.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.vision.gen.io import register_kind
from reasonrl.vision.gen.noise import Draws, uniform

from .blocks import init_linear
from .generator import GeneratorConfig, guided
from .stack import ConditionedStack


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) in [0, 1] -> (B, dim) sinusoids of 1000 t."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], 1)


def noise(x0: torch.Tensor, t: torch.Tensor, generator: Draws = None) -> torch.Tensor:
    """x_t ~ Bernoulli((1 - t) x0 + t / 2), t (B,) broadcast over tokens and bits."""
    p = (1 - t)[:, None, None] * x0 + t[:, None, None] / 2
    return (uniform(p.shape, generator, p.dtype) < p).to(x0.dtype)


def x0_logits(flip: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """Logits of x_0 = 1 from flip logits: -o where x_t is 1, o where it is 0."""
    return xt * (-flip) + (1 - xt) * flip


@register_kind("bit_diffusion", GeneratorConfig)
class BitDiffusion(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.config = cfg
        self.x_embedder = nn.Linear(cfg.bits, cfg.width)
        self.t_embedder = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        self.stack = ConditionedStack(cfg.width, cfg.num_heads, cfg.num_layers, cfg.text_width, cfg.num_tokens)
        self.proj_out = nn.Linear(cfg.width, cfg.bits)
        init_linear(self)

    def forward(self, xt: torch.Tensor, t: torch.Tensor, prefixes, text_mask: torch.Tensor) -> torch.Tensor:
        """x_t (B, K, d), t (B,) -> flip logits (B, K, d)."""
        x = self.x_embedder(2 * xt - 1) + self.t_embedder(timestep_embedding(t, self.config.width))[:, None]
        return self.proj_out(self.stack(x, prefixes, text_mask, causal=False))

    def loss(self, bits, states, text_mask) -> torch.Tensor:
        t = torch.sigmoid(torch.randn(bits.shape[0]))
        xt = noise(bits, t)
        flip = self(xt, t, self.stack.prefixes(states), text_mask)
        return F.binary_cross_entropy_with_logits(x0_logits(flip, xt), bits)

    @torch.no_grad()
    def sample(self, states, text_mask, guidance: float = 3.0, steps: int = 20,
               generator: Draws = None) -> torch.Tensor:
        """states/mask of 2B rows (B prompts, then B empty prompts) -> bits (B, K, d); generator: gen/noise.py."""
        rows, half = text_mask.shape[0], text_mask.shape[0] // 2
        prefixes = self.stack.prefixes(states)
        shape = (half, self.config.num_tokens, self.config.bits)
        xt = (uniform(shape, generator) < 0.5).float()
        times = torch.linspace(1, 0, steps + 1)
        for t, t_next in zip(times[:-1], times[1:]):
            flip = self(xt.repeat(2, 1, 1), t.expand(rows), prefixes, text_mask)
            both = x0_logits(flip, xt.repeat(2, 1, 1))
            p0 = torch.sigmoid(guided(both[:half], both[half:], guidance))
            if t_next == 0:
                return (p0 > 0.5).float()
            xt = noise(p0, t_next.expand(half), generator)
        return xt
