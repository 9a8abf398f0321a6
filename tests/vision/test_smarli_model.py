"""SMARLI-mini: cell codebook, layout sequences, the mask inside the model, next-set sampling and replay, judge."""

import numpy as np
import pytest
import torch

from reasonrl.models.tiny import make_tokenizer
from reasonrl.vision.gen.images import make_images, subsample
from reasonrl.vision.gen.noise import row_generators
from reasonrl.vision.smarli.bench import images_for
from reasonrl.vision.smarli.cells import EMPTY, CellCodebook, fit_patterns
from reasonrl.vision.smarli.judge import flaw_map, judge, judge_with_flaws, pixel_box
from reasonrl.vision.smarli.layout import Layout, encode_layouts
from reasonrl.vision.smarli.model import Smarli, SmarliConfig, ZeroMLP
from reasonrl.vision.smarli.sampler import masked_after, replay, sample
from reasonrl.vision.smarli.train import smarli_images
from reasonrl.vision.world import COLOURS, quantise, render


@pytest.fixture(scope="module")
def world():
    data = make_images(smarli_images(), 200, seed=0)
    codebook = CellCodebook(fit_patterns(data.images, 4, 255))
    tok = make_tokenizer([Layout.of(s).prompt for s in data.scenes], vocab_size=384)
    return data, codebook, tok


def tiny(codebook, tok, rules="structured", layers=2):
    torch.manual_seed(0)
    return Smarli(SmarliConfig(tok.vocab_size, codebook.patterns, width=32, num_heads=2, num_layers=layers,
                               rules=rules)).eval()


def batch_of(model, tok, layouts):
    c = model.config
    return encode_layouts(layouts, tok, c.prompt_slots, c.layout_slots, c.grid, c.rules)


def test_cell_codebook_round_trip(world):
    data, codebook, _ = world
    complete = CellCodebook(fit_patterns(data.images, 4, 10 ** 6))  # every pattern the images have
    for image in data.images[:50]:
        tokens = codebook.encode(image)
        assert tokens.shape == (64,) and tokens.max() < codebook.vocab_size
        assert np.array_equal(quantise(complete.decode(complete.encode(image))), quantise(image))  # exact
        assert (quantise(codebook.decode(tokens)) != quantise(image)).sum() <= 4  # rare patterns: nearest stands in
    blank = np.full((32, 32, 3), 90, np.uint8)
    assert (codebook.encode(blank) == EMPTY).all()
    odd = blank.copy()
    odd[0, 0] = odd[3, 3] = (220, 40, 40)  # a two-pixel pattern no scene has: its nearest pattern stands in
    token = codebook.encode(odd)[0]
    assert token != EMPTY and (token - 1) % 8 == 0  # red


def test_layout_sequence(world, make_scene):
    _, codebook, tok = world
    scene = make_scene(("square", "blue", "large", 40, 40), ("circle", "red", "medium", 2, 2), size=64)
    layout = Layout.of(scene)
    assert [o.words for o in layout.objects] == ["medium red circle", "large blue square"]
    assert layout.objects[1].box == (40 / 64, 40 / 64, 58 / 64, 58 / 64)
    model = tiny(codebook, tok)
    b = batch_of(model, tok, [layout])
    assert b.is_box.sum() == 2 and b.attn.shape == (1, 128, 128)
    assert b.cover[0].view(8, 8)[0, 0] and b.cover[0].view(8, 8)[7, 7] and not b.cover[0].view(8, 8)[0, 7]


def test_structured_mask_isolates_objects_inside_the_model(world, make_scene):
    """Changing object B (its words and box) moves no image token outside B's boxes under the
    structured mask, in one layer (deeper, image tokens pass it on to each other: rule 4 lets them
    read all image tokens); without the isolation rules every image token moves."""
    _, codebook, tok = world
    scene = make_scene(("square", "blue", "large", 40, 40), ("circle", "red", "medium", 2, 2), size=64)
    other = scene.replace_object(0, colour="yellow", shape="star")
    tokens = torch.full((1, 64), codebook.vocab_size)  # all masked
    for rules, isolated in (("structured", True), ("no_isolation", False)):
        model = tiny(codebook, tok, rules, layers=1)
        a, b = batch_of(model, tok, [Layout.of(scene)]), batch_of(model, tok, [Layout.of(other)])
        b.text_ids[:, :model.config.prompt_slots] = a.text_ids[:, :model.config.prompt_slots]  # same prompt
        out_a, out_b = model(a, tokens), model(b, tokens)
        in_b = batch_of(model, tok, [Layout("", Layout.of(other).objects[1:] + Layout.of(scene).objects[1:])]).cover[0]
        moved = (out_a - out_b).abs().amax(-1)[0] > 1e-6
        if isolated:
            assert moved[in_b].all() and not moved[~in_b].any()
        else:
            assert moved.all()


def test_zero_mlp_starts_as_identity():
    mlp = ZeroMLP(8)
    mlp.zero()
    x = torch.randn(3, 8)
    assert torch.equal(mlp(x), x)


def test_next_set_schedule():
    counts = [masked_after(s, 8, 64) for s in range(8)]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 0 and counts[0] == 62  # floor(64 cos(pi/16))


def test_sampling_records_states_and_replay_matches(world):
    data, codebook, tok = world
    model = tiny(codebook, tok)
    b = batch_of(model, tok, [Layout.of(s) for s in data.scenes[:3]])
    rollout = sample(model, b, steps=5, generator=torch.Generator().manual_seed(0))
    mask_id = model.config.mask_id
    assert (rollout.states[0] == mask_id).all() and (rollout.tokens != mask_id).all()
    kept = torch.stack(rollout.kept)  # every position is decided exactly once
    assert torch.equal(kept.sum(0), torch.ones(3, 64, dtype=torch.long))
    for state, new in zip(rollout.states, rollout.kept):
        assert (state[new] == mask_id).all()
    assert torch.allclose(replay(model, b, rollout), rollout.logp, atol=1e-5)
    again = sample(model, b, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.tokens, rollout.tokens)
    # at another temperature the recorded log-probs are the sampling policy's, and replay scores the same
    # (they were the model's at T = 1: layout GRPO's ratios were against another distribution)
    hot = sample(model, b, steps=5, temperature=0.5, generator=torch.Generator().manual_seed(0))
    policy = torch.zeros_like(hot.logp)
    with torch.no_grad():
        for state, new in zip(hot.states, hot.kept):
            step = (model(b, state) / 0.5).log_softmax(-1).gather(-1, hot.tokens[..., None])[..., 0]
            policy = torch.where(new, step, policy)
    assert torch.allclose(hot.logp, policy, atol=1e-5) and torch.allclose(replay(model, b, hot), policy, atol=1e-5)


def test_a_seeded_image_does_not_depend_on_the_batch_it_runs_in(world):
    data, codebook, tok = world
    model = tiny(codebook, tok)
    layouts = [Layout.of(s) for s in data.scenes[:3]]
    together = images_for(model, tok, codebook, layouts, steps=4, seed=3, batch=3)
    one_by_one = images_for(model, tok, codebook, layouts, steps=4, seed=3, batch=1)
    assert np.array_equal(together, one_by_one)
    assert not np.array_equal(images_for(model, tok, codebook, layouts, steps=4, seed=4, batch=3), together)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        sample(model, batch_of(model, tok, layouts), steps=2, generator=row_generators(0, 0, 2))


def test_judge_on_exact_and_wrong_images(make_scene):
    scene = make_scene(("square", "blue", "large", 40, 40), ("circle", "red", "medium", 2, 2), size=64)
    layout = Layout.of(scene)
    good = judge(layout, subsample(render(scene).image))
    assert good["miou"] > 0.8 and good["precision"] == good["recall"] == 1.0
    assert good["attribute"] == 1.0 and good["leakage"] == 0.0
    assert good["reward"] == pytest.approx(0.5 + 0.5 * good["miou"] + 0.1)
    swapped = scene.replace_object(0, colour="red").replace_object(1, colour="blue")
    bad = judge(layout, subsample(render(swapped).image))
    assert bad["colour"] == 0.0 and bad["shape"] == 1.0 and bad["leakage"] == 1.0
    empty = judge(layout, np.full((32, 32, 3), 128, np.uint8))
    assert empty["reward"] == 0.0 and empty["precision"] == 0.0


def test_the_oracles_flaw_map_flags_wrong_objects_stray_ones_and_leaked_pixels(make_scene):
    # left to right is not top to bottom here, and neither box is square to the other: a map transposed,
    # or boxes matched in the wrong order, fails
    square_spec, circle_spec = ("square", "blue", "large", 4, 36), ("circle", "red", "medium", 40, 2)
    scene = make_scene(square_spec, circle_spec, size=64)
    layout = Layout.of(scene)
    boxes = [pixel_box(o.box, 64) for o in layout.objects]  # the detector's scale: twice the 32-px image
    square = [o.shape for o in layout.objects].index("square")
    circle = 1 - square

    def box_mask(i):
        m = np.zeros((64, 64), bool)
        x0, y0, x1, y1 = boxes[i]
        m[y0:y1, x0:x1] = True
        return m

    def flags(s):
        image = subsample(render(s).image) if not isinstance(s, np.ndarray) else s
        scores, found = judge_with_flaws(layout, image)  # one detection pass for both
        assert scores == judge(layout, image) and np.array_equal(found, flaw_map(layout, image))
        return scores, found

    good = subsample(render(scene).image)
    assert flaw_map(layout, good).shape == (64, 64) and not flaw_map(layout, good).any()
    for wrong, failed in ((dict(colour="green"), "colour"), (dict(shape="circle"), "shape"),
                          (dict(size="small", x=8, y=40), "miou")):  # drawn small inside its box: IoU < 0.5
        scores, found = flags(scene.replace_object(0, **wrong))
        assert scores[failed] < 1 and found.dtype == np.float32 and set(np.unique(found)) == {0.0, 1.0}, wrong
        assert np.array_equal(found > 0, box_mask(square)), wrong  # that box alone
    # an object the layout does not have, outside both boxes: its pixels alone (it costs precision)
    stray = make_scene(square_spec, circle_spec, ("triangle", "green", "medium", 36, 40), size=64)
    scores, found = flags(stray)
    view = subsample(render(stray).image).repeat(2, axis=0).repeat(2, axis=1)
    assert scores["precision"] < 1 and scores["attribute"] == 1.0
    assert found.any() and np.array_equal(found > 0, quantise(view) == COLOURS.index("green"))
    # one pixel of the circle's red inside the square's box (outside the circle's): that pixel alone
    leaked = good.copy()
    ry, rx = np.argwhere(quantise(good) == COLOURS.index("red"))[0]
    ys, xs = np.nonzero(~box_mask(circle)[::2, ::2] & box_mask(square)[::2, ::2])
    leaked[ys[-1], xs[-1]] = good[ry, rx]
    scores, found = flags(leaked)
    expected = np.zeros((64, 64), bool)
    expected[2 * ys[-1]: 2 * ys[-1] + 2, 2 * xs[-1]: 2 * xs[-1] + 2] = True  # one pixel is four in the view
    assert scores["attribute"] == 1.0 and np.array_equal(found > 0, expected)
    # nothing drawn: every box flagged
    assert np.array_equal(flaw_map(layout, np.full((32, 32, 3), 128, np.uint8)) > 0, box_mask(0) | box_mask(1))
