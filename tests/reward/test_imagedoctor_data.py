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
