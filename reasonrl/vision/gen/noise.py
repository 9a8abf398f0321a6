"""Seeded draws per image: row i of a batch draws from its own generator, so a seeded image depends
on its seed, its index and its prompt, not on the batch size or on the other prompts of the run.

Samplers take `draws`: None (the global generator), one `torch.Generator` for the whole batch (its
draws depend on the batch's shape), or one generator per row (`row_generators`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Draws = torch.Generator | Sequence[torch.Generator] | None


def row_generators(seed: int, start: int, count: int) -> list[torch.Generator]:
    """Generators for images start .. start + count - 1 of a run seeded with `seed`."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, start + i]).generate_state(1, np.uint64)[0]))
            for i in range(count)]


def uniform(shape: Sequence[int], draws: Draws, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U[0, 1) of `shape`; with one generator per row, row i from generator i."""
    if draws is None or isinstance(draws, torch.Generator):
        return torch.rand(tuple(shape), generator=draws, dtype=dtype)
    _check_rows(draws, shape[0])
    return torch.stack([torch.rand(tuple(shape[1:]), generator=g, dtype=dtype) for g in draws])


def categorical(probs: torch.Tensor, draws: Draws) -> torch.Tensor:
    """(B, ..., V) probabilities -> (B, ...) drawn indices; with one generator per row, row i from generator i."""
    v = probs.shape[-1]
    if draws is None or isinstance(draws, torch.Generator):
        return torch.multinomial(probs.reshape(-1, v), 1, generator=draws).view(probs.shape[:-1])
    _check_rows(draws, probs.shape[0])
    return torch.stack([torch.multinomial(row.reshape(-1, v), 1, generator=g).view(row.shape[:-1])
                        for row, g in zip(probs, draws)])


def _check_rows(draws: Sequence[torch.Generator], rows: int) -> None:
    if len(draws) != rows:
        raise ValueError(f"{len(draws)} generators for a batch of {rows} rows: pass one per row")
