"""ImageDoctor's GRPO rewards besides the score reward (`judgement.score_reward`), arXiv 2510.01010.

- heatmap reward: 1 - clip(c x MSE(predicted map, true map), 0, 1), c = 80 for misalignment and
  40 for artifacts (ImageDoctor's constants, on its 288 x 288 maps; ours are at the image's size);
- grounding rewards on the boxes of the think block (xyxy pixels of the judged image, end exclusive)
  against the true flaw map `truth` (H, W) in [0, 1]:
  completeness = share of the map's mass inside the union of the boxes,
  compactness = mean map value inside each box, averaged over the boxes,
  uniqueness = 1 - mean IoU over pairs of boxes (1 for a single box).
  Each is 1 when the map is empty and no box is given, 0 when exactly one of the two is empty.

For generation (DenseFlow-GRPO in ImageDoctor's code): `judge_reward`, the scalar, and
`dense_reward`, the scalar times one minus the pooled mean heatmap, per pixel of the generator.

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


def judge_reward(scores: dict[str, float | None]) -> float:
    """DenseFlow-GRPO's scalar reward from a judgement: 0.8 alignment + 0.1 aesthetics + 0.1
    plausibility (overall unused, as in ImageDoctor's scorer); a missing score counts 0."""
    weights = {"alignment": 0.8, "aesthetics": 0.1, "plausibility": 0.1}
    return sum(w * (scores.get(k) or 0.0) for k, w in weights.items())


def dense_reward(scalar: float, maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """DenseFlow-GRPO's per-pixel reward R(h, w) = R x (1 - heatmap(h, w)): the mean of the two
    maps (2, H, W), average-pooled to `size` (e.g. the generator's latent grid; H, W multiples of it)."""
    heat = np.asarray(maps, dtype=np.float64).mean(0)
    (h, w), (gh, gw) = heat.shape, size
    if h % gh or w % gw:
        raise ValueError(f"heatmap {h}x{w} does not pool evenly to {gh}x{gw}")
    pooled = heat.reshape(gh, h // gh, gw, w // gw).mean(axis=(1, 3))
    return scalar * (1.0 - np.clip(pooled, 0.0, 1.0))
