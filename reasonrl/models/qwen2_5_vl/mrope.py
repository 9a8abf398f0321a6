"""Multimodal RoPE positions (Qwen2-VL, arXiv 2409.12191; Qwen2.5-VL, arXiv 2502.13923).

Every token gets three position rows (temporal, height, width). Text tokens carry one counter in
all three rows. An image's merged tokens carry (start, start + row, start + column) over its
merged grid, and the counter resumes after the image at start + max(frames, rows, columns), i.e.
one past the largest position the image used. Once a prompt of T tokens is consumed, token i >= T
sits at i + delta in all three rows, delta = (next counter value) - T, which is <= 0.

Images are found as runs of `image_token_id`; each image takes frames * rows * columns tokens
(merged grid), so two images with no text between them still split correctly. Videos are not
supported (their temporal row is spaced by `tokens_per_second`; not implemented here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def mrope_positions(input_ids: Sequence[int] | torch.Tensor, image_grid_thw: torch.Tensor | None,
                    image_token_id: int, merge: int = 2) -> tuple[torch.Tensor, int]:
    """One prompt -> (positions (3, T) long, delta). grid rows are the images in prompt order, in
    patches (as the processor gives them); every grid must be used exactly once."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).flatten().cpu()
    grids = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
    out = torch.empty(3, len(ids), dtype=torch.long)
    is_image = (ids == image_token_id).tolist()
    cur = i = 0
    while i < len(ids):
        if not is_image[i]:
            j = _run_end(is_image, i)
            out[:, i:j] = torch.arange(cur, cur + j - i)
            cur, i = cur + j - i, j
            continue
        grid = next(grids, None)
        if grid is None:
            raise ValueError(f"image placeholder token {image_token_id} at index {i} has no image_grid_thw row left")
        block, span = _image_positions(grid, merge)
        if not all(is_image[i:i + block.shape[1]]):
            raise ValueError(f"image grid {grid} needs {block.shape[1]} placeholder tokens at index {i}, "
                             f"the prompt has {_run_end(is_image, i) - i}")
        out[:, i:i + block.shape[1]] = block + cur
        cur, i = cur + span, i + block.shape[1]
    left = sum(1 for _ in grids)
    if left:
        raise ValueError(f"{left} image_grid_thw row(s) have no placeholder tokens in the prompt")
    return out, cur - len(ids)


def _run_end(flags: list[bool], i: int) -> int:
    j = i
    while j < len(flags) and flags[j] == flags[i]:
        j += 1
    return j


def _image_positions(grid: Sequence[int], merge: int) -> tuple[torch.Tensor, int]:
    """(3, t*h*w) offsets of one image's merged tokens in raster order, and the counter advance."""
    t, h, w = grid[0], grid[1] // merge, grid[2] // merge
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)]), max(t, h, w)


def text_positions(start: int, stop: int, delta: int) -> torch.Tensor:
    """(3, stop - start) positions of tokens start..stop-1 after a prompt with this delta (decoding)."""
    return torch.arange(start + delta, stop + delta).expand(3, -1)
