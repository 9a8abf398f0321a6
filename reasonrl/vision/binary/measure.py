"""Reconstruction and code-usage measurements of a tokenizer on held-out images."""

from __future__ import annotations

import math

import numpy as np
import torch

from reasonrl.vision.gen.images import ImageSet, to_tensor, to_uint8

from .tokenizer import BitTokenizer


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between uint8 image arrays (over all their pixels)."""
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def usage_entropy(codes: torch.Tensor, bits: int) -> float:
    """Bits (B, K, d): mean over the K x d bit positions of the entropy of their use (1: used half the
    time). VQ indices (B, K): entropy of the pooled code distribution over d (1: all codes equally used)."""
    c = codes.cpu().numpy()
    if c.ndim == 3:
        return float(binary_entropy(c.mean(0)).mean())
    counts = np.bincount(c.ravel(), minlength=2 ** bits) / c.size
    nz = counts[counts > 0]
    return float(-(nz * np.log2(nz)).sum() / bits)


@torch.no_grad()
def reconstruct(tok: BitTokenizer, images: np.ndarray, size: int | None = None, batch: int = 64):
    """(codes, uint8 reconstructions at `size` or the training size) of (N, S, S, 3) images."""
    codes, outs = [], []
    for start in range(0, len(images), batch):
        c = tok.encode(to_tensor(images[start:start + batch]))
        codes.append(c)
        outs.append(to_uint8(tok.decode(c, size, size)))
    return torch.cat(codes), np.concatenate(outs)


def measure_tokenizer(tok: BitTokenizer, held: ImageSet) -> dict[str, float]:
    """PSNR at the training size and at twice it (against the 2x render), the 2x PSNR of simply
    repeating pixels (what the decoder must beat), and code usage."""
    tok.eval()
    codes, recon = reconstruct(tok, held.images)
    _, recon2 = reconstruct(tok, held.images, 2 * tok.config.image_size)
    repeated = held.images.repeat(2, axis=1).repeat(2, axis=2)
    return {"psnr": psnr(recon, held.images), "psnr_2x": psnr(recon2, held.renders),
            "psnr_2x_repeat": psnr(repeated, held.renders),
            "usage_entropy": usage_entropy(codes, tok.config.codebook_size), "bits": float(tok.config.bits)}
