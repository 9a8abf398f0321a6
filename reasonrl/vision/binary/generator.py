"""What the two bit generators share: their config, the frozen text and image models they use,
and classifier-free guidance.

A generator directory holds config.json and model.safetensors; its config names the conditioning
language model (`text_model`) and the bit tokenizer that turns its bits into pixels
(`image_tokenizer`), as paths relative to the directory (so a copied or shipped set of
directories keeps working).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

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
    return Pipeline(generator, text, load_model_dir(tokenizer_dir, expect="bit_tokenizer"), tokenizer_dir)


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: uncond + scale * (cond - uncond) (scale 1: cond alone,
    exactly: the formula rounds it, enough to flip a bit at threshold)."""
    return cond if scale == 1 else uncond + scale * (cond - uncond)


def with_unconditional(text: TextEncoder, prompts: list[str]):
    """Per-layer states and mask of the prompts followed by as many empty prompts (the CFG batch)."""
    return text.encode(list(prompts) + [""] * len(prompts))
