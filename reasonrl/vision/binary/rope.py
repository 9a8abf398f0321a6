"""Axial rotary positions for latent and image tokens, with positions rescaled to a reference grid.

Instella-T2I's tokenizer (`bae/ae_model.py`) gives every token three position coordinates:
latent token k is (k, 0, 0), the image token at row r and column c of an H x W grid is (0, r, c).
Each axis rotates its own slice of a head (`axes_dims_rope`, e.g. 8 + 28 + 28 = 64). With a
reference grid `scale` set, rows and columns are stretched onto it, r -> r / (H - 1) * (scale - 1),
so a grid twice as fine gets positions between the trained ones: this is what lets the same
latent tokens decode at a larger resolution (`set_scale`).

The numerics follow the public code so real weights would give the same outputs: per axis the
frequencies are theta^(-2i/dim), each cos/sin repeated twice in place ([c0, c0, c1, c1, ...]),
the axes concatenated, and the result applied with the rotate-half rule (Llama's
`apply_rotary_pos_emb`) on heads normalised by their own RMSNorm.
"""

from __future__ import annotations

import torch

THETA = 10000.0


def grid_positions(height: int, width: int, scale: int | None = None) -> torch.Tensor:
    """(H * W, 2) float (row, column) of a grid in row-major order, stretched onto `scale` when given."""
    rows, cols = torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64)
    if scale is not None:
        rows = rows / max(height - 1, 1) * (scale - 1)
        cols = cols / max(width - 1, 1) * (scale - 1)
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([r.reshape(-1), c.reshape(-1)], dim=1)


def token_ids(num_latent: int, height: int, width: int, scale: int | None = None) -> torch.Tensor:
    """(K + H * W, 3) position coordinates: latent tokens (k, 0, 0), then the image grid (0, r, c)."""
    latent = torch.zeros(num_latent, 3, dtype=torch.float64)
    latent[:, 0] = torch.arange(num_latent, dtype=torch.float64)
    image = torch.zeros(height * width, 3, dtype=torch.float64)
    image[:, 1:] = grid_positions(height, width, scale)
    return torch.cat([latent, image])


def axial_cos_sin(ids: torch.Tensor, axes_dims: tuple[int, ...], dtype=torch.float32):
    """cos, sin of shape (L, sum(axes_dims)) for (L, n_axes) coordinates."""
    cos, sin = [], []
    for axis, dim in enumerate(axes_dims):
        inv = 1.0 / THETA ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
        angles = ids[:, axis:axis + 1].double() * inv  # (L, dim/2)
        cos.append(angles.cos().repeat_interleave(2, dim=1))
        sin.append(angles.sin().repeat_interleave(2, dim=1))
    return torch.cat(cos, 1).to(dtype), torch.cat(sin, 1).to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, L, H, D) rotated by cos, sin (L, D) with the rotate-half rule."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat((-x2, x1), dim=-1) * sin[:, None]



def sinusoidal(positions: torch.Tensor, dim: int, dtype=torch.float32) -> torch.Tensor:
    """(L, 2) (row, column) positions -> (L, dim) fixed sin/cos features, a quarter of the width per
    sin or cos of each axis (frequencies 1 down to 1/100). Continuous in the positions: a grid
    stretched onto the reference grid gets in-between values, as the rotary positions do."""
    quarter = dim // 4
    inv = 1.0 / 100.0 ** (torch.arange(quarter, dtype=torch.float64) / max(quarter, 1))
    parts = []
    for axis in range(2):
        angles = positions[:, axis:axis + 1].double() * inv
        parts += [angles.sin(), angles.cos()]
    out = torch.cat(parts, 1)
    return torch.nn.functional.pad(out, (0, dim - out.shape[1])).to(dtype)
