"""Latent-token quantisers: Instella-T2I's bits (`binary`) and a one-hot VQ baseline (`vq`) at equal bits.

binary (Instella-T2I `bae/bnl.py`): per latent token, d bit-logits z = Linear(h); in training the
bits are drawn b ~ Bernoulli(sigmoid(z / tau)), at evaluation b = 1[sigmoid(z) > 0.5]; the
straight-through estimate b~ = b + sigmoid(z) - sg(sigmoid(z)) carries the gradient; the token's
embedding is b~ E, E (d, dim): the sum of the codebook rows its set bits select. The auxiliary
"codebook" loss mean sigmoid(z)(1 - sigmoid(z)) pushes every bit towards 0 or 1.

Departure (an option, `straight_through`): the paper's estimate passes sigmoid'(z) = p(1 - p) to
the logits, which vanishes once they saturate (under the polarising loss most logits of a small
tokenizer end beyond +-4 within a few hundred steps, and the encoder stops learning). `linear`
passes the constant slope sigmoid'(0) = 1/4 instead: b~ = b + (z - sg(z)) / 4, the same at z = 0
and never vanishing. `sigmoid` (the paper's) stays the default: `linear` keeps the gradient but
has no restoring force, and the logits drift outward (mean |z| 28 after 1000 steps, 214 after
3500 in docs/benchmarks.md's run, where bits then no longer flip), so it has not been shown to
reconstruct better; pair it with something that bounds the logits: `logit_bound` (an option, a
departure too) adds 10 mean(relu(|z| - bound)^2) to the auxiliary loss, a restoring force on
logits beyond +-bound only.

vq (the baseline, VQ-VAE, van den Oord et al. 2017, arXiv 1711.00937, with the l2-normalised
low-dimensional lookup of ViT-VQGAN, Yu et al. 2021, arXiv 2110.04627): one of 2^d codes per
token, so a token carries the same d bits. Loss ||sg(z) - q||^2 + beta ||z - sg(q)||^2; codes
unused for `restart_every` training steps are restarted at encoder outputs of the current batch
(a common remedy for dead codes; without it this baseline wastes most of its codebook).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Quantized:
    embedding: torch.Tensor
    """(B, K, dim): what the decoder reads."""
    aux_loss: torch.Tensor
    """Scalar: the quantiser's own loss (bit polarisation, or codebook + commitment)."""
    codes: torch.Tensor
    """(B, K, d) float 0/1 bits (binary) or (B, K) long code indices (vq); no gradient."""


class BinaryQuantizer(nn.Module):
    def __init__(self, bits: int, dim: int, train_temp: float = 0.1, straight_through: str = "sigmoid",
                 logit_bound: float = 0.0):
        super().__init__()
        if straight_through not in ("sigmoid", "linear"):
            raise ValueError(f"straight_through must be sigmoid or linear, got {straight_through!r}")
        if logit_bound < 0:
            raise ValueError(f"logit_bound must be >= 0 (0: off), got {logit_bound}")
        self.bits, self.train_temp, self.straight_through = bits, train_temp, straight_through
        self.logit_bound = logit_bound
        self.proj = nn.Sequential(nn.Linear(dim, bits))  # Sequential: the public key is proj.0
        self.embed = nn.Parameter(torch.randn(bits, dim) * 0.02)

    def forward(self, h: torch.Tensor, sample: bool | None = None) -> Quantized:
        """h (B, K, dim); `sample`: draw the bits (default: when training) instead of thresholding."""
        z = self.proj(h)
        p = torch.sigmoid(z)
        polarise = (p * (1 - p)).mean()
        if self.logit_bound:
            polarise = polarise + 10 * F.relu(z.abs() - self.logit_bound).pow(2).mean()
        draw = self.training if sample is None else sample
        bits = torch.bernoulli(torch.sigmoid(z / self.train_temp)) if draw else (p > 0.5).to(p.dtype)
        if self.straight_through == "sigmoid":
            straight = bits + p - p.detach()  # value: the bits; gradient: that of sigmoid(z)
        else:
            straight = bits + (z - z.detach()) / 4  # value: the bits; gradient: 1/4, saturated or not
        return Quantized(straight @ self.embed, polarise, bits.detach())

    def embed_codes(self, bits: torch.Tensor) -> torch.Tensor:
        """(B, K, d) 0/1 -> (B, K, dim)."""
        return bits.to(self.embed.dtype) @ self.embed


class VQQuantizer(nn.Module):
    def __init__(self, bits: int, dim: int, code_dim: int = 16, beta: float = 0.25, restart_every: int = 50):
        super().__init__()
        self.bits, self.beta, self.restart_every = bits, beta, restart_every
        self.proj = nn.Linear(dim, code_dim)
        self.codebook = nn.Parameter(torch.randn(2 ** bits, code_dim))
        self.expand = nn.Linear(code_dim, dim)
        self.register_buffer("idle", torch.zeros(2 ** bits, dtype=torch.long))  # training steps since last use

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """(N, code_dim) l2-normalised -> (N,) nearest code (by cosine), in chunks of rows so that the
        score matrix stays near 2^24 entries however large the codebook (2^16 codes: 256 rows at a time)."""
        codes = F.normalize(self.codebook, dim=-1).T
        return torch.cat([(part @ codes).argmax(-1) for part in z.split(max(1, 2 ** 24 >> self.bits))])

    def forward(self, h: torch.Tensor, sample: bool | None = None) -> Quantized:
        z = F.normalize(self.proj(h), dim=-1)  # (B, K, c)
        idx = self.lookup(z.reshape(-1, z.shape[-1])).view(z.shape[:-1])
        q = F.normalize(self.codebook, dim=-1)[idx]
        loss = F.mse_loss(q, z.detach()) + self.beta * F.mse_loss(z, q.detach())
        if self.training and sample is not False:  # encode() (sample=False) only looks codes up, whatever the mode
            self._restart_dead(z.detach().reshape(-1, z.shape[-1]), idx)
        straight = z + (q - z).detach()
        return Quantized(self.expand(straight), loss, idx.detach())

    @torch.no_grad()
    def _restart_dead(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        self.idle += 1
        self.idle[idx.unique()] = 0
        dead = (self.idle >= self.restart_every).nonzero().squeeze(1)
        if len(dead):
            pick = torch.randint(len(z), (len(dead),), device=z.device)
            self.codebook.data[dead] = z[pick] + 0.01 * torch.randn_like(z[pick])
            self.idle[dead] = 0

    def embed_codes(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, K) code indices -> (B, K, dim)."""
        return self.expand(F.normalize(self.codebook, dim=-1)[idx])
