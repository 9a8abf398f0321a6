"""Matching detections to ground truth by box IoU: the basis of layout and generation metrics.

Greedy one-to-one matching in order of decreasing IoU (ties: lower detected index, then lower
truth index), as detection benchmarks do; pairs below `min_iou` are never matched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Match:
    detected: int
    """Index into the detected list."""
    truth: int
    """Index into the truth list."""
    iou: float


def box_of(item) -> tuple[float, float, float, float]:
    """A box [x0, y0, x1, y1) given as a 4-sequence or as anything with a `.box`."""
    box = getattr(item, "box", item)
    if len(box) != 4:
        raise ValueError(f"a box needs 4 numbers [x0, y0, x1, y1], got {box!r}")
    return tuple(float(v) for v in box)


def iou_matrix(boxes_a: Sequence, boxes_b: Sequence) -> np.ndarray:
    """(A, B) IoU of every pair of boxes (end-exclusive; empty boxes have IoU 0 with everything)."""
    a = np.array([box_of(x) for x in boxes_a], dtype=np.float64).reshape(-1, 1, 4)
    b = np.array([box_of(x) for x in boxes_b], dtype=np.float64).reshape(1, -1, 4)
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match(detected: Sequence, truth: Sequence, min_iou: float = 0.5) -> list[Match]:
    """One-to-one pairs (detected, truth) with IoU >= min_iou, best pairs first."""
    ious = iou_matrix(detected, truth)
    order = sorted(((-ious[d, t], d, t) for d, t in zip(*np.nonzero(ious >= min_iou))))
    used_d, used_t, pairs = set(), set(), []
    for neg_iou, d, t in order:
        if d not in used_d and t not in used_t:
            used_d.add(d)
            used_t.add(t)
            pairs.append(Match(int(d), int(t), float(-neg_iou)))
    return pairs
