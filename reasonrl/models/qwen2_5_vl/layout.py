"""Where each patch of a batch of images sits: 2D rotary positions, attention windows, and
attention over variable-length segments of a packed sequence.

Patches arrive packed, image after image, each image in the processor's order: frame, then
merge block (row-major over the merged grid), then the merge x merge patches inside the block.
`grid_thw` (I, 3) gives each image's (frames, patch rows, patch columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def patch_positions(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(P, 2) long (row, column) of every patch, in packed order."""
    out = []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
        cols = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
        # (block row, row in block, block col, col in block) -> block-major order
        block_major = [x.permute(0, 2, 1, 3).reshape(-1) for x in (rows, cols)]
        out.append(torch.stack(block_major, dim=-1).repeat(t, 1))
    return torch.cat(out)


def window_order(grid_thw: torch.Tensor, merge: int, window: int) -> tuple[torch.Tensor, list[int]]:
    """Merged tokens regrouped window by window: (order (U,) of merged-token indices, patches per
    window). Windows tile each frame's merged grid in `window` x `window` squares from the top-left;
    the last row and column of windows may be smaller."""
    order, lengths, offset = [], [], 0
    for t, h, w in grid_thw.tolist():
        rows, cols = h // merge, w // merge
        index = torch.arange(t * rows * cols).view(t, rows, cols) + offset
        for frame in index:
            for r in range(0, rows, window):
                for c in range(0, cols, window):
                    block = frame[r:r + window, c:c + window].reshape(-1)
                    order.append(block)
                    lengths.append(block.numel() * merge * merge)
        offset += t * rows * cols
    return torch.cat(order), lengths


def frame_lengths(grid_thw: torch.Tensor) -> list[int]:
    """Patches per frame: full attention never crosses a frame or an image."""
    return [h * w for t, h, w in grid_thw.tolist() for _ in range(t)]


@dataclass
class Segments:
    """Bidirectional attention within consecutive segments of a packed sequence, run as one padded
    batch: segment s holds rows index[s, :lengths[s]]."""

    index: torch.Tensor  # (S, L) long, row of the packed sequence in each slot (0 in padding)
    valid: torch.Tensor  # (S, L) bool
    padded: bool  # some segment is shorter than L; equal segments need no mask (flash kernels apply)

    @classmethod
    def from_lengths(cls, lengths: list[int], device: torch.device) -> Segments:
        n = torch.tensor(lengths, device=device)
        width = int(n.max())
        slot = torch.arange(width, device=device)
        valid = slot[None, :] < n[:, None]
        start = torch.cumsum(n, 0) - n
        return cls(torch.where(valid, start[:, None] + slot[None, :], 0), valid, min(lengths) < width)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v (P, H, D) -> (P, H, D)."""
        q, k, v = (x[self.index].transpose(1, 2) for x in (q, k, v))  # (S, H, L, D)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.valid[:, None, None, :] if self.padded else None)
        # valid slots enumerate the packed rows in order
        return out.transpose(1, 2)[self.valid]
