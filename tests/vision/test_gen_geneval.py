"""Image sets, prompts and GenEval-lite: the judge of the generators, checked on renders it must get right."""

import numpy as np
import pytest

from reasonrl.vision.gen.geneval import assign, frechet_distance, geneval, palette_fd, score_image
from reasonrl.vision.gen.images import ImageConfig, judge_view, make_images, subsample, to_tensor, to_uint8
from reasonrl.vision.gen.prompt import prompt, region
from reasonrl.vision.world import PALETTE, detect, render
from reasonrl.vision.world.palette import is_background_colour


def test_image_sets_are_exact_subsamples_and_reproducible():
    a, b = make_images(ImageConfig(), 20, seed=3), make_images(ImageConfig(), 20, seed=3)
    assert np.array_equal(a.images, b.images) and a.images.shape == (20, 32, 32, 3) and a.renders.shape == (20, 64, 64, 3)
    assert np.array_equal(a.images, a.renders[:, 1::2, 1::2])
    palette = {tuple(v) for v in PALETTE.values()}
    for image in a.images[:5]:  # every pixel is a palette colour or a background colour
        for pixel in {tuple(int(c) for c in p) for p in image.reshape(-1, 3)}:
            assert pixel in palette or is_background_colour(pixel)
    assert all(o.size in ("medium", "large") for s in a.scenes for o in s.objects)
    assert np.array_equal(to_uint8(to_tensor(a.images)), a.images)


def test_image_config_errors_name_the_field():
    with pytest.raises(ValueError, match="side"):
        ImageConfig(side=16)
    with pytest.raises(ValueError, match="sizes"):
        ImageConfig(sizes=("huge",))


def test_regions_and_prompt(make_scene):
    assert region((0, 0, 10, 10), 64, 64) == "top left"
    assert region((27, 27, 37, 37), 64, 64) == "centre"
    assert region((27, 50, 37, 60), 64, 64) == "bottom"
    assert region((50, 27, 60, 37), 64, 64) == "right"
    scene = make_scene(("square", "blue", "large", 40, 40), ("circle", "red", "medium", 2, 2), size=64)
    assert prompt(scene) == "a medium red circle at the top left and a large blue square at the bottom right"


def test_renders_score_perfectly_and_blank_images_score_nothing():
    data = make_images(ImageConfig(), 40, seed=1)
    real = geneval(data.scenes, data.images)
    assert real["count"] == real["colour"] == real["shape"] == real["relation"] == 1.0
    assert real["position"] > 0.9  # a box centre one pixel from a region border can flip at half resolution
    blank = geneval(data.scenes, np.full_like(data.images, 128))
    assert blank["colour"] == blank["shape"] == blank["overall"] == 0.0


def test_a_recoloured_object_fails_colour_only(make_scene):
    scene = make_scene(("square", "blue", "large", 40, 40), ("circle", "red", "medium", 2, 2), size=64)
    wrong = render(scene.replace_object(0, colour="green")).image
    scores = score_image(scene, subsample(wrong))
    assert scores["colour"] == 0.5 and scores["shape"] == 1.0 and scores["count"] == 1.0 and scores["overall"] == 0.0
    swapped = render(scene.replace_object(0, x=2, y=2).replace_object(1, x=44, y=44)).image  # left/right exchanged
    scores = score_image(scene, swapped)
    assert scores["relation"] == 0.0 and scores["position"] == 0.0 and scores["colour"] == 1.0


def test_assignment_prefers_colour_then_shape(make_scene):
    scene = make_scene(("square", "blue", "large", 40, 40), ("circle", "red", "medium", 2, 2), size=64)
    found = detect(render(scene).image)
    pairs = assign(scene, found)
    assert [found[k].colour for k in pairs] == ["blue", "red"]
    assert assign(scene, []) == [None, None]


def test_palette_fd():
    a, b = make_images(ImageConfig(), 200, seed=1), make_images(ImageConfig(), 200, seed=2)
    x = np.random.default_rng(0).normal(size=(500, 4))
    assert abs(frechet_distance(x, x)) < 1e-6
    same = palette_fd(a.images, b.images)
    blank = palette_fd(np.full_like(a.images, 128), b.images)
    assert same < 0.15 * blank


def test_judge_view_doubles():
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert judge_view(image).shape == (4, 4, 3) and (judge_view(image)[1, 1] == image[0, 0]).all()


def test_eight_object_scenes_are_assigned_exactly_and_fast():
    """The search over permutations took about a minute per 8-object image; the scenes allow 8."""
    import itertools
    import time

    s = make_images(ImageConfig(side=32, min_objects=8, max_objects=8), 3, 5)
    start = time.perf_counter()
    assert geneval(s.scenes, s.renders)["count"] == 1.0 and geneval(s.scenes, s.renders)["colour"] == 1.0
    assert time.perf_counter() - start < 60  # the search over permutations took about 3 minutes for these three
    five = make_images(ImageConfig(side=32, min_objects=5, max_objects=5), 4, 6)
    for scene, render_ in zip(five.scenes, five.renders):  # against brute force, fewer detections than objects
        found = detect(render_)[:4]
        pairs = assign(scene, found)
        score = lambda p: sum(4 * (found[k].colour == scene.objects[i].colour) + 2 * (found[k].shape == scene.objects[i].shape)  # noqa: E731
                              + (region(found[k].box, scene.width, scene.height) == region(scene.box(i), scene.width, scene.height))
                              for i, k in enumerate(p) if k is not None)
        best = max(score(c) for c in itertools.permutations(list(range(len(found))) + [None] * 5, 5))
        assert score(pairs) == best and len({k for k in pairs if k is not None}) == sum(k is not None for k in pairs)


def test_images_at_another_size_are_judged_at_the_render_size():
    """A 128-px image of a 64-px render scored position 0.10 and overall 0, with no error."""
    s = make_images(ImageConfig(side=32, max_objects=4), 8, 3)
    larger = s.renders.repeat(2, axis=1).repeat(2, axis=2)
    assert geneval(s.scenes, larger) == geneval(s.scenes, s.renders)
    assert geneval(s.scenes, s.images) == geneval(s.scenes, np.stack([judge_view(i) for i in s.images]))
    with pytest.raises(ValueError, match="another aspect ratio"):
        score_image(s.scenes[0], s.renders[0][:, :60])
