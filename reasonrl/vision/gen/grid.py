"""A grid of images as one PNG, for people to look at (docs/images/, `reasonrl generate-image --grid`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reasonrl.vision.world import write_png


def tile(images: np.ndarray, columns: int = 8, scale: int = 2, gap: int = 2, fill: int = 255) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows * (H*scale + gap) - gap, ...) image, row-major, nearest upscaling."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"tile: images must be a non-empty (N, H, W, 3) array, got shape {images.shape}")
    n, h, w, _ = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    cell_h, cell_w = h * scale + gap, w * scale + gap
    out = np.full((rows * cell_h - gap, columns * cell_w - gap, 3), fill, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        big = image.repeat(scale, 0).repeat(scale, 1)
        out[r * cell_h: r * cell_h + h * scale, c * cell_w: c * cell_w + w * scale] = big
    return out


def save_grid(images: np.ndarray, path: str | Path, columns: int = 8, scale: int = 2) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(tile(images, columns, scale), path)
    return path
