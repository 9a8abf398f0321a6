import numpy as np
import pytest

from reasonrl.vision.world import (
    COLOURS, SHAPES, SIZES, Background, Scene, SceneConfig, SceneObject, detect, iou_matrix, match, render,
    sample_scene,
)
from reasonrl.vision.world.components import label_components


def _flood_fill(mask):
    """Reference 8-connected labelling, one pixel at a time."""
    labels, n = np.zeros(mask.shape, dtype=int), 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        n += 1
        labels[start], stack = n, [start]
        while stack:
            y, x = stack.pop()
            for yy in range(max(y - 1, 0), min(y + 2, mask.shape[0])):
                for xx in range(max(x - 1, 0), min(x + 2, mask.shape[1])):
                    if mask[yy, xx] and not labels[yy, xx]:
                        labels[yy, xx] = n
                        stack.append((yy, xx))
    return labels, n


def test_components_match_flood_fill_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = rng.random((int(rng.integers(1, 24)), int(rng.integers(1, 24)))) < rng.uniform(0.1, 0.7)
        labels, n = label_components(mask)
        reference, m = _flood_fill(mask)
        assert n == m and (labels[~mask] == 0).all()
        assert len(set(zip(labels[mask].tolist(), reference[mask].tolist()))) == n  # same partition


def test_detector_recovers_99_percent_of_objects_of_1000_clean_scenes():
    rng = np.random.default_rng(2026)
    truth_objects = matched = same_attributes = exact_masks = 0
    for _ in range(1000):
        scene = sample_scene(rng, SceneConfig())
        rendering = render(scene)
        found = detect(rendering.image)
        pairs = match(found, [scene.box(i) for i in range(len(scene.objects))], min_iou=0.9)
        truth_objects += len(scene.objects)
        matched += len(pairs)
        for p in pairs:
            d, o = found[p.detected], scene.objects[p.truth]
            same_attributes += (d.shape, d.colour, d.size, d.texture, d.stripe_colour) == \
                (o.shape, o.colour, o.size, o.texture, o.stripe_colour)
            exact_masks += bool((d.mask == rendering.mask(p.truth)).all())
    recall = matched / truth_objects
    print(f"detector: {matched}/{truth_objects} objects matched at IoU>=0.9 ({recall:.4f}), "
          f"attributes {same_attributes / truth_objects:.4f}, exact masks {exact_masks / truth_objects:.4f}")
    assert recall >= 0.99
    assert same_attributes / truth_objects >= 0.99


def _striped_scenes(side):
    """Every shape and size, striped, one per scene, on a gradient background."""
    background = Background((60, 62, 58), (200, 195, 205), 30)
    for k, (shape, size) in enumerate((s, z) for s in SHAPES for z in SIZES):
        body, stripes = COLOURS[k % 8], COLOURS[(k + 3) % 8]
        obj = SceneObject(shape, body, size, side // 3, side // 4, "striped", stripes)
        yield Scene(side, side, background, (obj,))


@pytest.mark.parametrize("side", [64, 84, 112, 224])
def test_striped_objects_on_gradients_are_one_object_with_their_stripe_colour(side):
    for scene in _striped_scenes(side):
        rendering = render(scene)
        (found,) = detect(rendering.image)
        obj = scene.objects[0]
        assert (found.shape, found.colour, found.size) == (obj.shape, obj.colour, obj.size)
        assert (found.texture, found.stripe_colour) == ("striped", obj.stripe_colour)
        assert (found.mask == rendering.mask(0)).all() and found.box == scene.box(0)
        assert found.shape_distance == 0.0


def test_gradient_backgrounds_alone_give_no_objects():
    rng = np.random.default_rng(3)
    cfg = SceneConfig(gradient_fraction=1.0)
    for _ in range(100):
        scene = sample_scene(rng, cfg)
        assert detect(render(Scene(112, 112, scene.background, ())).image) == []


def test_detector_never_raises_on_odd_images_but_refuses_wrong_shapes():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    assert isinstance(detect(noise), list)
    floats = np.full((64, 64, 3), np.nan)
    floats[10:30, 10:30] = (220.4, 40.0, 39.6)  # a red square given as floats
    (found,) = detect(floats)
    assert (found.colour, found.shape, found.box) == ("red", "square", (10, 10, 30, 30))
    assert detect(np.zeros((32, 32, 3), dtype=np.uint8)) == []
    with pytest.raises(ValueError, match="H, W, 3"):
        detect(np.zeros((32, 32)))


def test_match_is_greedy_one_to_one_above_the_threshold():
    truth = [(0, 0, 10, 10), (20, 20, 30, 30), (50, 50, 60, 60)]
    detected = [(21, 20, 31, 30), (0, 0, 10, 10), (0, 0, 10, 9), (80, 80, 90, 90)]
    assert iou_matrix([(0, 0, 10, 10)], [(5, 0, 15, 10)])[0, 0] == pytest.approx(50 / 150)
    pairs = match(detected, truth, min_iou=0.5)
    assert [(p.detected, p.truth) for p in pairs] == [(1, 0), (0, 1)]  # the exact box wins truth 0
    assert pairs[1].iou == pytest.approx(90 / 110)
    assert match(detected, truth, min_iou=0.95) == [pairs[0]]
    assert match([], truth) == [] and match(detected, []) == []


def test_detector_tolerates_pixel_noise_as_a_judge_of_generated_images():
    rng = np.random.default_rng(5)
    truth_objects = matched = 0
    for _ in range(200):
        scene = sample_scene(rng, SceneConfig())
        image = render(scene).image + rng.normal(0, 8, size=(112, 112, 3))  # about 14 RGB units per pixel
        found = detect(np.clip(image, 0, 255).round().astype(np.uint8))
        pairs = match(found, [scene.box(i) for i in range(len(scene.objects))], min_iou=0.9)
        truth_objects += len(scene.objects)
        matched += sum(found[p.detected].colour == scene.objects[p.truth].colour
                       and found[p.detected].shape == scene.objects[p.truth].shape for p in pairs)
    assert matched / truth_objects >= 0.99


def test_bench_detector_reports_recall_and_speed():
    from reasonrl.vision.world import DetectorBenchConfig, bench_detector

    clean = bench_detector(DetectorBenchConfig(n=20, seed=1))
    noisy = bench_detector(DetectorBenchConfig(n=20, seed=1, noise=40.0))
    assert clean["objects"] == noisy["objects"] > 20  # the same scenes at every noise level
    assert clean["recall"] == clean["attribute_accuracy"] == clean["exact_masks"] == 1.0
    assert noisy["exact_masks"] < 0.5 and clean["detect_ms_per_image"] > 0
