"""Judge data on the shapes world: flaw maps are exact (they mark exactly what was changed), scores
are the analytic formulas, the same seed gives the same example, the target text parses back."""

import numpy as np
import pytest

from reasonrl.reward.imagedoctor.data import JudgeDataConfig, judge_example, perturb
from reasonrl.reward.imagedoctor.judgement import parse_judgement
from reasonrl.vision.world import Background, Scene, SceneObject, full_mask, render

SCENE = Scene(112, 112, Background((150, 150, 150), (150, 150, 150)),
              (SceneObject("circle", "red", "large", 10, 10), SceneObject("square", "blue", "medium", 60, 60)))


class Fixed:
    """An rng whose choices are scripted: perturbation kind first, then the replacement."""

    def __init__(self, kind, pick):
        self.kind, self.pick = kind, pick

    def integers(self, n):
        return self.kind

    def choice(self, options):
        return self.pick if self.pick in options else options[0]


@pytest.mark.parametrize("kind,pick", [(0, "green"), (1, "star"), (2, None)], ids=["recolour", "reshape", "drop"])
def test_misalignment_maps_are_exact(kind, pick):
    scene, miss, notes, boxes = perturb(SCENE, [0], Fixed(kind, pick))
    diff = (render(scene).image != render(SCENE).image).any(-1)
    assert not (diff & ~miss).any()  # every changed pixel is marked
    if kind == 0:
        assert scene.objects[0].colour == "green" and np.array_equal(miss, diff)  # solid recolour: exactly the changed pixels
    elif kind == 1:
        assert np.array_equal(miss, full_mask(SCENE, 0) | full_mask(scene, 0))  # where it should be and where it is
    else:
        x0, y0, x1, y1 = SCENE.box(0)
        assert len(scene.objects) == 1 and miss.sum() == (x1 - x0) * (y1 - y0) and miss[y0:y1, x0:x1].all()
    assert boxes[0] == (int(np.nonzero(miss)[1].min()), int(np.nonzero(miss)[0].min()),
                        int(np.nonzero(miss)[1].max()) + 1, int(np.nonzero(miss)[0].max()) + 1)
    assert len(notes) == 1


def test_artifact_maps_are_exactly_the_changed_pixels_and_scores_follow_the_formulas():
    cfg = JudgeDataConfig(misaligned_max=0, artifacts_max=3)
    rng, seen = np.random.default_rng(0), 0
    for _ in range(30):
        ex = judge_example(rng, cfg)
        clean = render(ex.prompt).image
        assert np.array_equal(ex.artifact.astype(bool), (ex.image != clean).any(-1))
        assert ex.misalignment.sum() == 0 and ex.scores["alignment"] == 1.0
        assert ex.scores["plausibility"] == pytest.approx(max(0.0, 1 - 10 * ex.artifact.mean()))
        seen += ex.artifact.sum() > 0
    assert seen >= 15


def test_mixed_examples_score_analytically_and_their_text_parses_back():
    cfg = JudgeDataConfig()
    rng = np.random.default_rng(1)
    for _ in range(30):
        ex = judge_example(rng, cfg)
        s = ex.scores
        assert all(0 <= v <= 1 for v in s.values())
        misaligned = sum("artifact" not in note for note in ex.notes)
        assert s["alignment"] == pytest.approx(1 - misaligned / len(ex.prompt.objects))
        assert s["overall"] == pytest.approx(0.5 * s["alignment"] + 0.3 * s["plausibility"] + 0.2 * s["aesthetics"])
        assert (ex.misalignment.sum() > 0) == (misaligned > 0) and ex.image.shape == (112, 112, 3)
        j = parse_judgement(ex.judgement())
        assert j.well_formed and j.boxes == [tuple(float(v) for v in b) for b in ex.boxes]
        assert all(abs(j.scores[k] - s[k]) <= 0.005 + 1e-9 for k in s)  # two decimals


def test_the_same_seed_gives_the_same_example():
    a, b = (judge_example(np.random.default_rng(7), JudgeDataConfig()) for _ in range(2))
    assert a.caption == b.caption and np.array_equal(a.image, b.image) and a.scores == b.scores
    assert np.array_equal(a.misalignment, b.misalignment) and np.array_equal(a.artifact, b.artifact)


# ---- a generator's kind of image (the judge a dense reward needs) -----------------------------------------

GENERATOR = "reasonrl/vision/gen/shipped/smarli"


@pytest.fixture(scope="module")
def viewed():
    from reasonrl.reward.imagedoctor.export import DoctorDataConfig, judge_examples

    cfg = DoctorDataConfig(out="unused", n=40, seed=3, generator=GENERATOR)
    return cfg.view(), judge_examples(cfg)


def test_generator_view_images_are_what_the_dense_reward_shows_the_judge(viewed):
    """The judge data's image of a scene is the generator's codebook image of it, repeated up to 224
    pixels exactly as dense.py's scorer repeats a generated image: a judge trained on it sees the
    generator's kind of image (the judge trained on renders scored every generated image 0.936)."""
    from reasonrl.vision.gen.images import subsample

    view, examples = viewed
    assert (view.side, view.scale) == (32, 7)
    scene = examples[0].prompt
    small = view.codebook.decode(view.codebook.encode(subsample(render(scene).image)))
    assert np.array_equal(view.image(render(scene).image), small.repeat(7, axis=0).repeat(7, axis=1))
    for ex in examples:
        assert ex.image.shape == (224, 224, 3) and ex.misalignment.shape == ex.artifact.shape == (224, 224)
        # the generator's kind of scene: no stripes, no small objects (neither survives 32 px)
        assert all(o.texture == "solid" and o.size in ("medium", "large") for o in ex.prompt.objects)
        blocks = ex.image.reshape(32, 7, 32, 7, 3)
        assert (blocks == blocks[:, :1, :, :1]).all()  # constant on each 7 x 7 block
        tiny = np.ascontiguousarray(ex.image[::7, ::7])
        assert np.array_equal(view.codebook.decode(view.codebook.encode(tiny)), tiny)  # a codebook image


def test_generator_view_flaw_maps_and_scores_are_those_of_the_viewed_image(viewed):
    from reasonrl.reward.imagedoctor.data import centring, contrast

    view, examples = viewed
    flawed = artifacts = 0
    for ex in examples:
        judged = drop_missing(ex)
        clean = view.image(render(judged).image)
        prompt_view = view.image(render(ex.prompt).image)
        aesthetics = (contrast(ex.image) + centring(view.mask(render(judged).owner))) / 2
        assert ex.scores["aesthetics"] == pytest.approx(aesthetics)  # of the viewed image
        # the artifact map is exactly where the image differs from the flawless generator image
        assert np.array_equal(ex.artifact.astype(bool), (ex.image != clean).any(-1))
        assert ex.scores["plausibility"] == pytest.approx(max(0.0, 1 - 10 * ex.artifact.mean()))
        misaligned = sum("artifact" not in note for note in ex.notes)
        assert ex.scores["alignment"] == pytest.approx(1 - misaligned / len(ex.prompt.objects))
        assert len(ex.boxes) == len(ex.notes) and sum("artifact" in n for n in ex.notes) <= 2
        for (x0, y0, x1, y1), note in zip(ex.boxes, ex.notes):
            assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
            if "artifact" not in note:  # a misalignment: in viewed pixels, on its map, and visible there
                assert all(v % 7 == 0 for v in (x0, y0, x1, y1))
                assert ex.misalignment[y0:y1, x0:x1].any()
                assert (clean[y0:y1, x0:x1] != prompt_view[y0:y1, x0:x1]).any()
            else:  # each artifact's box lies inside the map, in viewed pixels
                assert ex.artifact[y0:y1, x0:x1].any()
                x, y = (int(v) for v in note.rpartition("(")[2].rstrip(").").split(","))
                assert x0 - 14 <= x <= x1 + 14 and y0 - 14 <= y <= y1 + 14  # the note's position, scaled
        flawed += misaligned > 0
        artifacts += ex.artifact.any()
    assert flawed >= 10 and artifacts >= 10


def drop_missing(ex):
    """The scene the judged image was drawn from, less its artifacts: the prompt with the notes' changes."""
    from reasonrl.reward.imagedoctor.data import COLOURS, SHAPES, drop
    from reasonrl.vision.world.refer import object_phrase

    scene, dropped = ex.prompt, []
    for note in ex.notes:
        for i, obj in enumerate(ex.prompt.objects):
            if note.startswith(f"The {object_phrase(obj)} is missing"):
                dropped.append(i)
            elif note.startswith(f"The {object_phrase(obj)} is drawn as a "):
                scene = scene.replace_object(i, shape=next(s for s in SHAPES if note.endswith(f"a {s}.")))
            elif note.startswith(f"The {object_phrase(obj)} is "):
                scene = scene.replace_object(i, colour=next(c for c in COLOURS if note.endswith(f"is {c}.")))
    return drop(scene, dropped)


def test_a_render_box_becomes_the_box_of_the_pixels_the_view_keeps():
    """Kept render pixels are the odd rows and columns: column 2j + 1 becomes column j, then j x scale."""
    from reasonrl.reward.imagedoctor.data import GeneratorView

    view = GeneratorView(codebook=None, side=32, scale=7)
    assert view.box((1, 1, 3, 3)) == (0, 0, 7, 7)  # columns 1, 2 hold one kept column: 1
    assert view.box((2, 2, 4, 4)) == (7, 7, 14, 14)  # columns 2, 3: kept 3
    assert view.box((1, 2, 4, 6)) == (0, 7, 14, 21)  # columns 1-3: kept 1, 3; rows 2-5: kept 3, 5
    mask = np.zeros((64, 64), dtype=bool)
    mask[2:4, 1:4] = True
    ys, xs = np.nonzero(view.mask(mask))
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == view.box((1, 2, 4, 4))


def test_a_judge_image_size_that_the_generator_side_does_not_divide_is_refused():
    from reasonrl.reward.imagedoctor.export import DoctorDataConfig

    with pytest.raises(ValueError, match="--image-size 200 is not a multiple of the generator's side 32"):
        DoctorDataConfig(out="unused", n=1, image_size=200, generator=GENERATOR).view()
