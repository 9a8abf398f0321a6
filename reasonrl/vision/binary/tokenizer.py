"""`BitTokenizer`: an image as K one-dimensional tokens of d bits each (Instella-T2I's "1D-BIT").

Paper: Wang et al., "Instella-T2I: Pushing the Limits of 1D Discrete Latent Space Image
Generation" (arXiv 2506.21022); code `AMD-AIG-AIMA/Instella-T2I` (`bae/`), read for structure and
parameter names. encoder.py, decoder.py, quantizer.py and rope.py hold the parts.

    bits = tok.encode(pixels)                 # (B, K, d) 0/1, thresholded
    pixels = tok.decode(bits, 32, 32)         # (B, 3, 32, 32) in [-1, 1]
    pixels = tok.decode(bits, 64, 64)         # the same tokens at twice the resolution

Parameter names and shapes follow the public checkpoint (`encoder.latent_tokens`,
`quantizer.proj.0.weight`, `quantizer.embed`, `to_pixel.weight`, ...; tested at Instella's real
sizes on the meta device), and the config's field names are those of its `configs/bae_config.py`.

Departures from the paper:
- Tiny sizes and 32 x 32 images (defaults below; the paper: 12/16 layers of width 768/1024,
  patch 16, 128 tokens of 64 bits, up to 1024 px).
- Loss: mean squared error on pixels plus `polarise_weight` times the bit-polarising loss; no
  perceptual, GAN or REPA losses (those need downloaded networks) and no temperature annealing.
- An optional convolutional refiner after `to_pixel` (`refine_channels`, on by default here; the public
  code has a `conv_topix` switch, its checkpoint a linear `to_pixel`): a ViT this small, trained for
  minutes, draws blurry edges through a linear patch head, and two 3 x 3 convolutions sharpen them.
- Twice-the-resolution decoding is trained directly (a share of steps decodes to the 2x render,
  `hires_fraction` in TokenizerTrainConfig); the paper trains at several resolutions.
- `quantizer: vq` swaps in the one-hot VQ baseline with the same bits per token (quantizer.py).
- `straight_through: linear` (an option; default `sigmoid`, the paper's) passes a constant slope
  to the bit logits instead of sigmoid'(z), which vanishes once they saturate (quantizer.py).
- Two options (off by default: the public checkpoint and tokenizers saved before them have neither) that take
  a small tokenizer off its "background only" plateau within a few hundred steps (docs/benchmarks.md):
  `latent_positions`, a learned embedding per latent index in the decoder (its rotary index alone, 4
  frequencies over 8 dimensions, barely tells 32 latent tokens apart: given each patch's content as latent
  token k, a decoder without it could not learn to copy token k to patch k in 300 steps, with it 25 dB), and
  `pooled_latents`, the encoder's latent tokens starting as means of the patch tokens over a grid of image
  regions (encoder.py), so the latents carry local content from the first step.
- `latent_mlp` (an option, off by default for the same reason): a residual per-token MLP on the quantised
  embedding before the decoder, for both quantisers. A binary token's embedding is the sum of the codebook rows
  its bits select, linear in its d bits, where VQ's 2^d codes are free points; the MLP lets each token's
  embedding be any function of its code before the decoder's attention mixes the tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from reasonrl.config import finite_numbers, positive_ints
from reasonrl.models.model import RMSNorm
from reasonrl.vision.gen.io import register_kind

from .blocks import EPS, MLP, init_linear
from .decoder import Decoder
from .encoder import Encoder
from .quantizer import BinaryQuantizer, Quantized, VQQuantizer


@dataclass(frozen=True)
class TokenizerConfig:
    in_channels: int = 3
    """Image channels."""
    encoder_layers: int = 4
    """Encoder transformer blocks."""
    encoder_head_dim: int = 32
    """Encoder head size (the width is heads x head size)."""
    encoder_num_heads: int = 4
    """Encoder heads."""
    patch_size: int = 4
    """Pixels per patch side."""
    num_latent_tkns: int = 16
    """K, the latent tokens per image."""
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    """Rotary dimensions per position axis (latent index, row, column); they sum to the head size."""
    downsample_idx: tuple[int, ...] = ()
    """Encoder blocks after which patch tokens are merged 2 x 2 (Instella: [7])."""
    decoder_layers: int = 4
    """Decoder transformer blocks."""
    decoder_head_dim: int = 32
    """Decoder head size."""
    decoder_num_heads: int = 4
    """Decoder heads."""
    upsample_idx: tuple[int, ...] = ()
    """Decoder blocks after which image tokens are split 2 x 2 (Instella: [7])."""
    codebook_size: int = 16
    """d, the bits per latent token (Instella's name for it)."""
    train_temp: float = 0.1
    """tau of the training-time Bernoulli draw, b ~ Bernoulli(sigmoid(z / tau))."""
    straight_through: Literal["sigmoid", "linear"] = "sigmoid"
    """binary: the gradient the bits pass to their logits in training: sigmoid (Instella's, sigmoid'(z), which
    vanishes for saturated logits) or linear (the constant 1/4 = sigmoid'(0); a departure, quantizer.py)."""
    logit_bound: float = 0.0
    """Binary quantiser: add 10 mean(relu(|z| - bound)^2) to its auxiliary loss, pulling bit logits back
    inside +-bound (0: off; a departure, meant for `straight_through: linear`, whose logits drift)."""
    quantizer: Literal["binary", "vq"] = "binary"
    """binary (Instella's bits) or vq (one-hot codes, 2^d of them: the baseline at equal bits)."""
    vq_dim: int = 16
    """vq: dimension of the l2-normalised code lookup."""
    image_size: int = 32
    """Side in pixels of the training images: the reference grid every resolution is stretched onto."""
    absolute_positions: bool = True
    """Add fixed sinusoidal features of each mask token's (stretched) grid position to it (not in Instella,
    which places mask tokens by rotary positions alone); False for the public checkpoint's behaviour."""
    pooled_latents: bool = False
    """Encoder: latent token k starts as its learned token plus the mean of the patch tokens of the k-th region
    of a near-square layout of the image (32 tokens: 4 x 8 regions), so the latents carry local summaries
    from the first step (not in Instella, whose latent tokens start image-independent)."""
    latent_positions: bool = False
    """Add a learned embedding per latent index to the decoder's latent tokens (not in Instella, where the
    decoder tells its latent tokens apart only by their rotary index); False for the public checkpoint's
    behaviour and for tokenizers saved before this option."""
    latent_mlp: int = 0
    """Hidden width of a residual per-token MLP on the quantised embedding before the decoder, x + MLP(RMSNorm(x))
    (SwiGLU, last layer zero-initialised so it starts as the identity), for both quantisers: a binary embedding is
    otherwise linear in its token's bits; 0: none, as in Instella and tokenizers saved before this option."""
    refine_channels: int = 32
    """Width of a small convolutional refiner after `to_pixel` (two 3 x 3 convolutions, residual, last one
    zero-initialised); 0: none, as in Instella's public checkpoint."""

    def __post_init__(self):
        positive_ints(self, ("encoder_layers", "decoder_layers", "num_latent_tkns", "codebook_size", "patch_size"),
                      "TokenizerConfig.")
        for name, layers in (("downsample_idx", "encoder_layers"), ("upsample_idx", "decoder_layers")):
            idx, n = tuple(getattr(self, name)), getattr(self, layers)
            if len(set(idx)) != len(idx) or any(not isinstance(i, int) or not 0 <= i < n for i in idx):
                raise ValueError(f"TokenizerConfig.{name} {list(idx)}: distinct block indices in [0, {layers} = {n}) "
                                 "(one 2 x 2 merge or split after each)")
        finite_numbers(self, above={"train_temp": 0}, at_least={"logit_bound": 0}, prefix="TokenizerConfig.")
        if isinstance(self.latent_mlp, bool) or not isinstance(self.latent_mlp, int) or self.latent_mlp < 0:
            raise ValueError(f"TokenizerConfig.latent_mlp must be an integer >= 0 (0: none), got {self.latent_mlp!r}")
        if self.quantizer == "vq" and self.codebook_size > 16:
            raise ValueError(f"TokenizerConfig.codebook_size {self.codebook_size}: a one-hot VQ of 2^d codes is "
                             "only practical for d <= 16")
        if self.image_size % (self.patch_size * 2 ** len(self.downsample_idx)):
            raise ValueError(f"TokenizerConfig.image_size {self.image_size} must be a multiple of the patch "
                             f"size {self.patch_size} times 2 per merge")

    @property
    def bits(self) -> int:
        """Bits per image, K x d."""
        return self.num_latent_tkns * self.codebook_size

    @property
    def grid(self) -> int:
        """Patches per side of a training image: the reference grid."""
        return self.image_size // self.patch_size


class LatentMLP(nn.Module):
    """x + MLP(RMSNorm(x)) per latent token: a nonlinear function of each token's code before the decoder."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = RMSNorm(dim, EPS)
        self.mlp = MLP(dim, hidden)

    def zero(self) -> None:
        nn.init.zeros_(self.mlp.down_proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class Refiner(nn.Module):
    """pixels + conv(silu(conv(pixels))): local sharpening of the patch-wise output, at any resolution."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    def zero(self) -> None:
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_out(torch.nn.functional.silu(self.conv_in(x)))


@register_kind("bit_tokenizer", TokenizerConfig)
class BitTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.config = cfg
        latent_dim = cfg.encoder_head_dim * cfg.encoder_num_heads
        self.encoder = Encoder(cfg.in_channels, cfg.encoder_layers, cfg.encoder_head_dim, cfg.encoder_num_heads,
                               cfg.patch_size, cfg.num_latent_tkns, cfg.downsample_idx, cfg.axes_dims_rope,
                               cfg.absolute_positions, cfg.pooled_latents)
        self.decoder = Decoder(latent_dim, cfg.decoder_layers, cfg.decoder_head_dim, cfg.decoder_num_heads,
                               cfg.upsample_idx, cfg.axes_dims_rope, cfg.absolute_positions,
                               cfg.num_latent_tkns if cfg.latent_positions else 0)
        self.to_pixel = nn.Linear(cfg.decoder_head_dim * cfg.decoder_num_heads, cfg.patch_size ** 2 * cfg.in_channels)
        if cfg.quantizer == "binary":
            self.quantizer = BinaryQuantizer(cfg.codebook_size, latent_dim, cfg.train_temp, cfg.straight_through,
                                             cfg.logit_bound)
        else:
            self.quantizer = VQQuantizer(cfg.codebook_size, latent_dim, cfg.vq_dim)
        if cfg.latent_mlp:
            self.latent_mlp = LatentMLP(latent_dim, cfg.latent_mlp)
        if cfg.refine_channels:
            self.refine = Refiner(cfg.in_channels, cfg.refine_channels)
        init_linear(self)
        if cfg.latent_mlp:
            self.latent_mlp.zero()
        if cfg.refine_channels:
            self.refine.zero()

    def quantize(self, pixels: torch.Tensor, sample: bool | None = None) -> Quantized:
        """(B, C, S, S) at the training size -> the quantised latent tokens."""
        return self.quantizer(self.encoder(pixels, self.config.grid), sample)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> codes: (B, K, d) thresholded bits, or (B, K) VQ indices."""
        return self.quantize(pixels, sample=False).codes

    def decode_embedding(self, embedding: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, K, dim) -> pixels (B, C, height, width); any size that is a multiple of the patch."""
        self.check_decode_size(height, width)
        p, c = self.config.patch_size, self.config.in_channels
        h, w = height // p, width // p
        if self.config.latent_mlp:
            embedding = self.latent_mlp(embedding)
        x = self.to_pixel(self.decoder(embedding, h, w, self._scale(h, w)))  # (B, h*w, p*p*c)
        x = x.view(-1, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(-1, c, height, width)
        return self.refine(x) if self.config.refine_channels else x

    def check_decode_size(self, height: int, width: int) -> None:
        """Raise unless the decoder can draw height x width pixels (callers check before costly work)."""
        p = self.config.patch_size
        unit = p * 2 ** len(self.config.upsample_idx)  # the decoder splits each token 2 x 2 per upsampling block
        if height % unit or width % unit:
            raise ValueError(f"decode size {height}x{width} is not a multiple of {unit} (the patch size {p} times 2 "
                             "per upsampling block)")

    def decode(self, codes: torch.Tensor, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """Codes from `encode` (or a generator) -> pixels (B, C, H, W), by default at the training size."""
        size = self.config.image_size
        return self.decode_embedding(self.quantizer.embed_codes(codes), height or size, width or size)

    def forward(self, pixels: torch.Tensor, height: int | None = None, width: int | None = None):
        """Reconstruction (B, C, H, W) of `pixels` (at the training size unless given) and the quantised tokens."""
        q = self.quantize(pixels)
        size = self.config.image_size
        return self.decode_embedding(q.embedding, height or size, width or size), q

    def _scale(self, h: int, w: int) -> float | None:
        """Reference grid for positions: the training grid (None where the grid is square and equal to it)."""
        return None if (h, w) == (self.config.grid, self.config.grid) else self.config.grid
