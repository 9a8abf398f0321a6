"""Connected components of a binary image, vectorised over horizontal runs (no scipy).

Each row's foreground is cut into runs; a run touches the runs of the row above that overlap it
or meet it diagonally (8-connectivity). Runs are joined by label propagation with pointer
jumping over that edge list, then painted back. Work is linear in pixels plus runs.
"""

from __future__ import annotations

import numpy as np


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a (H, W) bool mask: (H, W) int32 labels (0 background, 1..n) and n."""
    height, width = mask.shape
    rows, starts, ends = _runs(mask)
    if len(rows) == 0:
        return np.zeros((height, width), dtype=np.int32), 0
    parent = _join(rows, starts, ends, width)
    _, run_label = np.unique(parent, return_inverse=True)
    labels = np.zeros(height * width, dtype=np.int32)
    lengths = ends - starts
    first = np.repeat(rows * width + starts - np.cumsum(lengths) + lengths, lengths)
    labels[first + np.arange(lengths.sum())] = np.repeat(run_label + 1, lengths)
    return labels.reshape(height, width), int(run_label.max()) + 1


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, first column and one-past-last column of every run of True, in row-major order."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)  # +1 where a run starts, -1 one past where it ends
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    return rows, starts, ends


def _join(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """Root run of each run's component, by min-label propagation over touching run pairs."""
    stride = width + 2  # keys row * stride + column order runs row-major, like the arrays
    end_keys, start_keys = rows * stride + ends, rows * stride + starts
    # runs a of the row above touching run b: a.end >= b.start and a.start <= b.end (ends exclusive)
    lo = np.searchsorted(end_keys, (rows - 1) * stride + starts, side="left")
    hi = np.searchsorted(start_keys, (rows - 1) * stride + ends, side="right")
    count = np.maximum(hi - lo, 0)
    b = np.repeat(np.arange(len(rows)), count)
    a = np.repeat(lo, count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    parent = np.arange(len(rows))
    while True:
        low = np.minimum(parent[a], parent[b])
        before = parent.copy()
        np.minimum.at(parent, a, low)
        np.minimum.at(parent, b, low)
        parent = parent[parent]  # pointer jumping
        if np.array_equal(parent, before):
            return parent
