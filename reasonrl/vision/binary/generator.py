"""What the two bit generators share: their config, the frozen text and image models they use,
and classifier-free guidance.

A generator directory holds config.json and model.safetensors; its config names the conditioning
language model (`text_model`) and the bit tokenizer that turns its bits into pixels
(`image_tokenizer`), as paths relative to the directory (so a copied or shipped set of
directories keeps working), and the tokenizer's digest at training time (`image_tokenizer_digest`):
a tokenizer retrained in place would decode the bits into other pictures, so loading refuses one
whose digest differs (a generator saved before the digest was recorded loads with a warning).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from reasonrl.config import to_dict
from reasonrl.vision.gen.io import load_model_dir, read_config

from .conditioner import TextEncoder
from .tokenizer import BitTokenizer


@dataclass(frozen=True)
class GeneratorConfig:
    num_tokens: int = 16
    """K, latent tokens per image (the tokenizer's)."""
    bits: int = 16
    """d, bits per token (the tokenizer's)."""
    width: int = 192
    """Transformer width."""
    num_heads: int = 6
    """Attention heads."""
    num_layers: int = 4
    """Blocks: one per layer of the conditioning language model."""
    text_width: int = 64
    """Width of the language model's hidden states."""
    text_model: str = ""
    """Directory of the conditioning language model (relative paths: to this generator's directory)."""
    image_tokenizer: str = ""
    """Directory of the bit tokenizer the bits belong to (same rule)."""
    method: Literal["ar", "diffusion"] = "diffusion"
    """Which generator this config builds."""
    image_tokenizer_digest: str = ""
    """`tokenizer_digest` of the tokenizer it was trained on ("": saved before it was recorded)."""


LATER_FIELDS = ("latent_mlp",)
"""TokenizerConfig fields added after generators began to record digests: left out of the digest
at their default, so a tokenizer digested before they existed still matches."""


def tokenizer_digest(tokenizer: BitTokenizer) -> str:
    """sha256 of a tokenizer's config and weights, the weights as float16 (shipping halves them:
    the shipped copy keeps the digest of the one trained)."""
    config, default = to_dict(tokenizer.config), to_dict(type(tokenizer.config)())
    config = {k: v for k, v in config.items() if k not in LATER_FIELDS or v != default[k]}
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, t in sorted(tokenizer.state_dict().items()):
        t = t.detach().cpu().to(torch.float16) if t.is_floating_point() else t.detach().cpu()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def with_paths_relative_to(cfg: GeneratorConfig, directory: str | Path) -> GeneratorConfig:
    """The config with its model paths rewritten relative to `directory` (where it is being saved)."""
    rel = lambda p: os.path.relpath(Path(p).resolve(), Path(directory).resolve()) if p else p  # noqa: E731
    return replace(cfg, text_model=rel(cfg.text_model), image_tokenizer=rel(cfg.image_tokenizer))


def resolve(path: str, directory: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(directory) / p


@dataclass
class Pipeline:
    """A generator with the frozen models it needs: text in, pixels out."""

    generator: torch.nn.Module
    text: TextEncoder
    tokenizer: BitTokenizer
    tokenizer_dir: Path | None = None
    """Where the tokenizer was loaded from (None: built in memory)."""


def load_pipeline(directory: str | Path) -> Pipeline:
    """The generator saved in `directory` (AR or diffusion) with its text model and bit tokenizer."""
    raw = read_config(directory)
    kind = raw.get("kind")
    if kind not in ("bit_ar", "bit_diffusion"):
        raise ValueError(f"{directory}: not a bit generator (config.json kind {kind!r})")
    from . import ar, diffusion  # noqa: F401  (registers the kinds)

    generator = load_model_dir(directory)
    text = TextEncoder.from_dir(resolve(raw["text_model"], directory))
    tokenizer_dir = resolve(raw["image_tokenizer"], directory).resolve()
    tokenizer = load_model_dir(tokenizer_dir, expect="bit_tokenizer")
    check_tokenizer(generator.config, tokenizer, f"{directory}: its tokenizer {tokenizer_dir}")
    return Pipeline(generator, text, tokenizer, tokenizer_dir)


def check_tokenizer(cfg: GeneratorConfig, tokenizer: BitTokenizer, where: str) -> None:
    """Refuse a tokenizer other than the one the generator was trained on (its bits would decode wrongly)."""
    tc = tokenizer.config
    if (tc.num_latent_tkns, tc.codebook_size) != (cfg.num_tokens, cfg.bits):
        raise ValueError(f"{where} makes {tc.num_latent_tkns} tokens of {tc.codebook_size} bits; the generator "
                         f"was trained on {cfg.num_tokens} of {cfg.bits}")
    if not cfg.image_tokenizer_digest:
        warnings.warn(f"{where}: the generator records no tokenizer digest (saved before it was recorded), so "
                      "a tokenizer retrained in place since would go unnoticed", stacklevel=3)
    elif cfg.image_tokenizer_digest != tokenizer_digest(tokenizer):
        raise ValueError(f"{where} is not the tokenizer the generator was trained on (its config or weights "
                         "changed: retrained in place?); its bits would decode into other pictures. Point "
                         "image_tokenizer in the generator's config.json at that tokenizer, or retrain the generator")


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: uncond + scale * (cond - uncond) (scale 1: cond alone,
    exactly: the formula rounds it, enough to flip a bit at threshold)."""
    return cond if scale == 1 else uncond + scale * (cond - uncond)


def with_unconditional(text: TextEncoder, prompts: list[str]):
    """Per-layer states and mask of the prompts followed by as many empty prompts (the CFG batch)."""
    return text.encode(list(prompts) + [""] * len(prompts))
