"""The vision probe: dense per-token targets are exact; the probe trains either network."""

import numpy as np
import pytest

from reasonrl.demo.vision_probe import ProbeConfig, cell_targets, run_probe
from reasonrl.vision.world import SceneConfig, render, sample_scene
from reasonrl.vision.world.palette import COLOURS
from reasonrl.vision.world.shapes import SHAPES


def test_cell_targets_mark_where_each_object_shows():
    rng = np.random.default_rng(3)
    for _ in range(20):
        scene = sample_scene(rng, SceneConfig(min_objects=1, max_objects=4))
        r = render(scene)
        t = cell_targets(scene, r).reshape(4, 4, -1)
        assert 1 <= t[..., -1].sum() <= len(scene.objects)  # two centres may share a cell
        for i, obj in enumerate(scene.objects):
            pixels = (r.owner == i).reshape(4, 28, 4, 28).sum((1, 3))
            c, s = COLOURS.index(obj.colour), len(COLOURS) + SHAPES.index(obj.shape)
            assert (t[..., c][pixels >= 8] == 1).all() and (t[..., s][pixels >= 8] == 1).all()
            ys, xs = np.nonzero(r.owner == i)
            assert t[int(ys.mean()) // 28, int(xs.mean()) // 28, -1] == 1
        covered = np.zeros((4, 4), bool)
        for i in range(len(scene.objects)):
            covered |= (r.owner == i).reshape(4, 28, 4, 28).sum((1, 3)) >= 8
        assert (t[..., :-1].sum(-1)[~covered] == 0).all()  # nothing marked where no object shows 8 pixels


@pytest.mark.parametrize("model", ["tower", "cnn"])
def test_probe_runs_and_reports(model):
    history = run_probe(ProbeConfig(model=model, steps=2, eval_every=1), log=lambda *_: None)
    assert [h["step"] for h in history] == [1, 2]
    assert all(0.0 <= h["accuracy"] <= 1.0 and np.isfinite(h["loss"]) for h in history)
