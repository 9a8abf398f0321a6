"""GenEval-lite: how well generated images follow their prompts, judged by the oracle detector.

GenEval (Ghosh et al. 2023, arXiv 2310.11513) detects objects in generated images and checks
counts, colours, positions and attribute binding against the prompt. Here the prompt is a scene
(gen/prompt.py says it in words), the detector is the shapes world's oracle (world/detect.py),
and per image:

- count: the number of detected objects equals the prompt's;
- colour, shape, position: per prompted object, whether the detection assigned to it has the
  prompt's colour, shape and 3 x 3 region (an object with no detection is wrong on all three);
- relation: per pair of prompted objects at least MIN_SEPARATION pixels apart horizontally,
  whether their detections are in the same left/right order (a missing one: wrong);
- overall: the image is right on everything above (GenEval's per-image score).

Assignment: prompted objects are paired one-to-one with detections to maximise agreement
(4 per colour, 2 per shape, 1 per region), the best assignment over the MAX_DETECTIONS largest
detections found exactly by dynamic programming over the detections taken. Departures from GenEval: no CLIP colour
classifier or Mask2Former (the oracle replaces both), and position is an absolute region as well
as the pairwise relation.

`palette_fd`: a distribution distance between generated and real images without downloaded
features: the Frechet distance between Gaussians fitted to each image's palette-occupancy map
(the share of each of 9 classes, 8 palette colours and background, in each quarter of the image;
a finer grid makes the 2 x 2 = 36-dimensional estimate too noisy for a few hundred images).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from reasonrl.vision.world import COLOURS, Scene, detect, quantise
from reasonrl.vision.world.caption import left_to_right

from .prompt import region

MAX_DETECTIONS = 8
MIN_SEPARATION = 4  # pixels at the render's scale
KEYS = ("count", "colour", "shape", "position", "relation", "overall")


def centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def assign(scene: Scene, found: list) -> list[int | None]:
    """For each object of the scene, the index of its detection in `found`, or None."""
    order = sorted(range(len(found)), key=lambda k: -found[k].area)[:MAX_DETECTIONS]
    n = len(scene.objects)
    agree = np.zeros((n, len(order)))
    for i, obj in enumerate(scene.objects):
        place = region(scene.box(i), scene.width, scene.height)
        for j, k in enumerate(order):
            d = found[k]
            agree[i, j] = 4 * (d.colour == obj.colour) + 2 * (d.shape == obj.shape) \
                + (region(d.box, scene.width, scene.height) == place)
    # the best total agreement of objects i.. given the detections already taken (a bit set): a
    # dynamic programme over n x 2^m states (the search over permutations took a minute at 8 objects)
    @cache
    def best(i: int, taken: int) -> tuple[float, tuple[int | None, ...]]:
        if i == n:
            return 0.0, ()
        rest, tail = best(i + 1, taken)
        top = (rest, (None, *tail))  # object i left without a detection
        for j in range(len(order)):
            if not taken >> j & 1:
                rest, tail = best(i + 1, taken | 1 << j)
                if agree[i, j] + rest > top[0]:
                    top = (agree[i, j] + rest, (j, *tail))
        return top

    return [None if j is None else order[j] for j in best(0, 0)[1]]


def score_image(scene: Scene, image: np.ndarray) -> dict[str, float]:
    """The metrics of one image of the scene's shape at any size (the generators' is half the
    render's): resampled to the render's size, nearest pixel, before the detector reads it."""
    found = detect(at_render_size(scene, np.asarray(image)))
    pairs = assign(scene, found)
    oks = {"colour": [], "shape": [], "position": []}
    for i, k in enumerate(pairs):
        obj, d = scene.objects[i], found[k] if k is not None else None
        oks["colour"].append(d is not None and d.colour == obj.colour)
        oks["shape"].append(d is not None and d.shape == obj.shape)
        place = region(scene.box(i), scene.width, scene.height)
        oks["position"].append(d is not None and region(d.box, scene.width, scene.height) == place)
    relation = _relations(scene, found, pairs)
    out = {"count": float(len(found) == len(scene.objects))}
    out.update({key: float(np.mean(v)) for key, v in oks.items()})
    out["relation"] = float(np.mean(relation)) if relation else float("nan")
    out["overall"] = float(out["count"] == 1 and all(all(v) for v in oks.values()) and all(relation))
    return out


def at_render_size(scene: Scene, image: np.ndarray) -> np.ndarray:
    """`image` resampled (nearest pixel) to the scene's render size, where boxes and regions are
    measured; an image of another aspect ratio is a ValueError (its boxes would mean nothing)."""
    h, w = image.shape[:2]
    if (h, w) == (scene.height, scene.width):
        return image
    if h * scene.width != w * scene.height:
        raise ValueError(f"a {w} x {h} image cannot show a {scene.width} x {scene.height} scene (another aspect ratio)")
    rows, cols = np.arange(scene.height) * h // scene.height, np.arange(scene.width) * w // scene.width
    return image[rows][:, cols]


def _relations(scene: Scene, found: list, pairs: list[int | None]) -> list[bool]:
    order = left_to_right(scene)
    checks = []
    for a, i in enumerate(order):
        for j in order[a + 1:]:
            if abs(scene.centre(j)[0] - scene.centre(i)[0]) < MIN_SEPARATION:
                continue
            ki, kj = pairs[i], pairs[j]
            checks.append(ki is not None and kj is not None
                          and centre(found[ki].box)[0] < centre(found[kj].box)[0])
    return checks


def geneval(scenes: list[Scene], images: np.ndarray) -> dict[str, float]:
    """Mean of each metric over the images (relation over images that have a pair to check)."""
    rows = [score_image(s, img) for s, img in zip(scenes, images)]
    out = {}
    for key in KEYS:
        values = [r[key] for r in rows if not np.isnan(r[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def palette_features(images: np.ndarray, grid: int = 2) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 9 * grid * grid): per cell, the share of background and of each colour."""
    feats = []
    for image in images:
        q = quantise(np.asarray(image)).astype(np.int64) + 1  # 0 background, 1..8 colours
        h, w = q.shape
        onehot = np.eye(len(COLOURS) + 1)[q]  # (H, W, 9)
        cells = onehot[: h - h % grid, : w - w % grid].reshape(grid, h // grid, grid, w // grid, -1).mean((1, 3))
        feats.append(cells.ravel())
    return np.array(feats)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to rows of a and b."""
    if len(a) < 2 or len(b) < 2:  # one row has no covariance (np.cov gives NaN, then the eigenvalues fail)
        raise ValueError(f"the Frechet distance needs at least 2 rows on each side, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # eigenvalues of S_a S_b (a product of PSD matrices) are real and >= 0 up to rounding
    root_trace = np.sqrt(np.clip(np.linalg.eigvals(s_a @ s_b).real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * root_trace)


def palette_fd(generated: np.ndarray, real: np.ndarray) -> float:
    return frechet_distance(palette_features(generated), palette_features(real))
