import itertools

import numpy as np

from reasonrl.vision.world import SceneConfig, quantise, render
from reasonrl.vision.world.palette import (
    BACKGROUND_MAX, BACKGROUND_MIN, BACKGROUND_TINT, PALETTE_RGB, QUANTISE_RADIUS, is_background_colour,
)
from reasonrl.vision.world.sampling import sample_background
from reasonrl.vision.world.scene import Scene


def test_palette_colours_are_far_apart_and_far_from_every_background_colour():
    pairs = [np.linalg.norm(a - b) for a, b in itertools.combinations(PALETTE_RGB.astype(float), 2)]
    assert min(pairs) > 2 * QUANTISE_RADIUS
    # every colour a background can take: grey level plus tint, on a grid that includes the bounds
    greys = np.arange(BACKGROUND_MIN, BACKGROUND_MAX + 1)
    tints = np.array(list(itertools.product(range(-BACKGROUND_TINT, BACKGROUND_TINT + 1, 5), repeat=3)))
    backgrounds = (greys[:, None, None] + tints[None]).reshape(-1, 3).astype(float)
    nearest = np.linalg.norm(backgrounds[:, None] - PALETTE_RGB[None], axis=-1).min()
    assert nearest > 2 * QUANTISE_RADIUS  # a background pixel is never read as an object, even with noise


def test_quantise_reads_palette_pixels_and_rejects_background():
    image = np.array([[PALETTE_RGB[3], PALETTE_RGB[3] + 10, [128, 128, 128]]], dtype=np.uint8)
    assert quantise(image).tolist() == [[3, 3, -1]]


def test_rendered_backgrounds_plain_and_gradient_are_never_palette_colours():
    rng = np.random.default_rng(0)
    cfg = SceneConfig(gradient_fraction=0.5)
    kinds = set()
    for _ in range(300):
        background = sample_background(rng, cfg)
        kinds.add(background.kind)
        image = render(Scene(112, 112, background, ())).image
        assert (quantise(image) == -1).all()
        assert is_background_colour(image[0, 0]) and is_background_colour(image[-1, -1])
    assert kinds == {"plain", "gradient"}


def test_gradients_run_from_start_to_end_colour():
    rng = np.random.default_rng(1)
    background = sample_background(rng, SceneConfig(gradient_fraction=1.0))
    image = render(Scene(112, 112, background, ())).image.astype(int)
    corners = [image[0, 0], image[0, -1], image[-1, 0], image[-1, -1]]
    contrast = max(abs(int(a.mean()) - int(b.mean())) for a, b in itertools.combinations(corners, 2))
    assert contrast >= 40  # visibly a gradient
