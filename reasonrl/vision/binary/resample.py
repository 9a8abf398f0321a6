"""2 x 2 merging and splitting of image tokens inside the tokenizer (Instella-T2I's DC blocks).

Down: a stride-2 3 x 3 convolution plus the 2 x 2 average of the input (the shortcut), so the
block starts close to average pooling. Up: a 3 x 3 convolution to four times the channels,
pixel-shuffled to twice the grid, plus the nearest-neighbour copy of the input. Both keep the
public code's parameter names (`conv`) and shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Down(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H/2 * W/2, C)."""
        x = x.permute(0, 3, 1, 2)
        y = self.conv(x) + F.avg_pool2d(x, 2)
        return y.flatten(2).transpose(1, 2)


class Up(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, 4 * dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, 2H * 2W, C)."""
        x = x.permute(0, 3, 1, 2)
        y = F.pixel_shuffle(self.conv(x), 2) + F.interpolate(x, scale_factor=2, mode="nearest")
        return y.flatten(2).transpose(1, 2)
