"""ImageDoctor's GRPO rewards besides the score reward (`judgement.score_reward`), arXiv 2510.01010.

- heatmap reward: 1 - clip(c x MSE(predicted map, true map), 0, 1), c = 80 for misalignment and
  40 for artifacts (ImageDoctor's constants, on its 288 x 288 maps; ours are at the image's size);
- grounding rewards on the boxes of the think block (xyxy pixels of the judged image, end exclusive)
  against the true flaw map `truth` (H, W) in [0, 1]:
  completeness = share of the map's mass inside the union of the boxes,
  compactness = mean map value inside each box, averaged over the boxes,
  uniqueness = 1 - mean IoU over pairs of boxes (1 for a single box).
  Each is 1 when the map is empty and no box is given, 0 when exactly one of the two is empty.

Boxes are clipped to the image; a box left empty by clipping is dropped. None of these raise on
model output: boxes come from `parse_judgement`, maps from the model.
"""

from __future__ import annotations

import itertools

import numpy as np

HEATMAP_SCALE = {"misalignment": 80.0, "artifact": 40.0}


def heatmap_reward(predicted: np.ndarray, truth: np.ndarray, task: str) -> float:
    mse = float(np.mean((np.asarray(predicted, dtype=np.float64) - np.asarray(truth, dtype=np.float64)) ** 2))
    return 1.0 - min(max(HEATMAP_SCALE[task] * mse, 0.0), 1.0) if np.isfinite(mse) else 0.0


def _clipped(boxes, shape) -> list[tuple[int, int, int, int]]:
    h, w = shape
    out = []
    for x0, y0, x1, y1 in boxes:
        if not np.isfinite([x0, y0, x1, y1]).all():
            continue
        b = (int(max(0, min(w, x0))), int(max(0, min(h, y0))), int(max(0, min(w, np.ceil(x1)))), int(max(0, min(h, np.ceil(y1)))))
        if b[2] > b[0] and b[3] > b[1]:
            out.append(b)
    return out


def _empty_rule(truth: np.ndarray, boxes: list) -> float | None:
    """1 or 0 when the map or the box list is empty, None when both have content."""
    empty = float(truth.sum()) <= 0
    if empty or not boxes:
        return 1.0 if empty and not boxes else 0.0
    return None


def completeness(boxes, truth: np.ndarray) -> float:
    boxes = _clipped(boxes, truth.shape)
    if (r := _empty_rule(truth, boxes)) is not None:
        return r
    union = np.zeros(truth.shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        union[y0:y1, x0:x1] = True
    return float(truth[union].sum() / truth.sum())


def compactness(boxes, truth: np.ndarray) -> float:
    boxes = _clipped(boxes, truth.shape)
    if (r := _empty_rule(truth, boxes)) is not None:
        return r
    return float(np.mean([truth[y0:y1, x0:x1].mean() for x0, y0, x1, y1 in boxes]))


def uniqueness(boxes, truth: np.ndarray) -> float:
    boxes = _clipped(boxes, truth.shape)
    if (r := _empty_rule(truth, boxes)) is not None:
        return r
    ious = [_iou(a, b) for a, b in itertools.combinations(boxes, 2)]
    return 1.0 - float(np.mean(ious)) if ious else 1.0


def _iou(a, b) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area
