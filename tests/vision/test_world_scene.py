import numpy as np
import pytest

from reasonrl.vision.world import (
    PALETTE, SHAPES, SIZES, Background, Scene, SceneConfig, SceneObject, full_mask, render, sample_scene, size_extent,
)
from reasonrl.vision.world.detect import STRIPE_MIN_FRACTION
from reasonrl.vision.world.sampling import GAP
from reasonrl.vision.world.shapes import MIN_SIDE, stripe_template, stripe_width, template


def test_sizes_are_16_24_32_pixels_at_112_and_scale_with_the_image():
    assert [size_extent(s, 112) for s in SIZES] == [16, 24, 32]
    assert [size_extent(s, 224) for s in SIZES] == [32, 48, 64]


@pytest.mark.parametrize("side", range(MIN_SIDE, 260, 4))
def test_every_striped_shape_shows_stripes_inside_a_body_coloured_outline(side):
    width = stripe_width(side)
    for shape in SHAPES:
        for size in SIZES:
            extent = size_extent(size, side)
            body, stripes = template(shape, extent), stripe_template(shape, extent, width)
            assert stripes.sum() >= 4 and not (stripes & ~body).any()
            # enough stripes for the detector, and the body colour stays the majority
            assert STRIPE_MIN_FRACTION * body.sum() <= stripes.sum() < (body & ~stripes).sum()
            inner = body.copy()
            inner[1:] &= body[:-1]
            inner[:-1] &= body[1:]
            inner[:, 1:] &= body[:, :-1]
            inner[:, :-1] &= body[:, 1:]
            assert not (stripes & ~inner).any()  # the outline is body colour


def test_sample_scene_is_deterministic_and_seeds_differ():
    cfg = SceneConfig()
    a = [sample_scene(np.random.default_rng(7), cfg) for _ in range(2)]
    assert a[0] == a[1]
    assert sample_scene(np.random.default_rng(8), cfg) != a[0]


def test_clean_scenes_keep_objects_apart_and_cover_the_object_range():
    rng, counts = np.random.default_rng(0), set()
    for _ in range(300):
        scene = sample_scene(rng, SceneConfig())
        counts.add(len(scene.objects))
        boxes = np.array([scene.box(i) for i in range(len(scene.objects))])
        for i in range(len(boxes)):
            for j in range(i):
                a, b = boxes[i], boxes[j]
                assert a[0] >= b[2] + GAP or b[0] >= a[2] + GAP or a[1] >= b[3] + GAP or b[1] >= a[3] + GAP
        rendering = render(scene)
        for i in range(len(scene.objects)):  # fully visible, and the visible box is the object's box
            assert rendering.visible_box(i) == scene.box(i)
    assert counts == set(range(1, 9))


def test_occluded_scenes_overlap_but_keep_half_of_each_object_and_never_hide_a_same_colour_object():
    rng, overlapping = np.random.default_rng(1), 0
    cfg = SceneConfig(occlusion=True, min_objects=4)
    for _ in range(100):
        scene = sample_scene(rng, cfg)
        rendering = render(scene)
        for i in range(len(scene.objects)):
            assert rendering.mask(i).sum() >= 0.5 * scene.area(i)
            for j in range(i):
                if (full_mask(scene, i) & full_mask(scene, j)).any():
                    overlapping += 1
                    assert scene.objects[i].colour != scene.objects[j].colour
    assert overlapping > 50


def test_render_paints_exact_colours_and_masks(make_scene):
    scene = make_scene(("circle", "red", "large", 10, 10), ("square", "blue", "small", 60, 60, "yellow"))
    rendering = render(scene)
    image, masks = rendering.image, rendering.masks
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8 and masks.shape == (2, 112, 112)
    assert (image[masks[0]] == PALETTE["red"]).all()
    square = image[masks[1]]
    is_blue, is_yellow = (square == PALETTE["blue"]).all(1), (square == PALETTE["yellow"]).all(1)
    assert (is_blue | is_yellow).all() and is_yellow.sum() > 20 and is_blue.sum() > is_yellow.sum()
    assert (image[rendering.owner == -1] == 120).all()
    assert masks[0].sum() == scene.area(0) and scene.box(1) == (60, 60, 76, 76)


def test_later_objects_cover_earlier_ones(make_scene):
    scene = make_scene(("square", "red", "large", 10, 10), ("circle", "blue", "small", 20, 20))
    rendering = render(scene)
    assert rendering.mask(0).sum() == scene.area(0) - scene.area(1)
    assert (full_mask(scene, 0) & rendering.mask(1)).sum() == scene.area(1)


def test_scene_round_trips_through_json_and_perturbations_change_only_what_they_say(make_scene):
    scene = make_scene(("star", "green", "medium", 30, 40, "pink"), ("cross", "cyan", "small", 80, 80))
    assert Scene.from_dict(scene.to_dict()) == scene and Scene.from_dict(scene.to_dict()).key() == scene.key()
    recoloured = scene.replace_object(1, colour="red")
    assert recoloured.objects[1].colour == "red" and recoloured.objects[0] == scene.objects[0]
    before, after = render(scene), render(recoloured)
    changed = (before.image != after.image).any(-1)
    assert (changed == before.mask(1)).all()  # the perturbation's exact mask
    assert len(scene.remove_object(0).objects) == 1


@pytest.mark.parametrize("bad, field", [
    (dict(shape="hexagon"), "shape"), (dict(colour="grey"), "colour"), (dict(size="huge"), "size"),
    (dict(texture="striped"), "stripe_colour"), (dict(stripe_colour="red"), "stripe_colour"),
])
def test_bad_objects_name_the_field(bad, field):
    args = dict(shape="circle", colour="red", size="small", x=0, y=0) | bad
    with pytest.raises(ValueError, match=field):
        SceneObject(**args)


def test_bad_scenes_are_refused():
    grey = Background((100, 100, 100), (100, 100, 100))
    with pytest.raises(ValueError, match="leaves"):
        Scene(112, 112, grey, (SceneObject("circle", "red", "large", 100, 0),))
    with pytest.raises(ValueError, match="near-grey"):
        Background((220, 40, 40), (220, 40, 40))
    with pytest.raises(ValueError, match="max_objects"):
        SceneConfig(min_objects=3, max_objects=2)
