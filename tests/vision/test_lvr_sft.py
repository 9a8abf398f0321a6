"""LVR's SFT loss on a tiny Qwen2.5-VL (fp32, CPU): region tokens from boxes, CE without the latent
targets, MSE of the previous position's hidden state against the teacher-forced region tokens,
weight 0.1, the vision tower untouched."""

import pytest
import torch
import torch.nn.functional as F

from reasonrl.engine.latent import LatentConfig, nearest_token
from reasonrl.models.model import CausalAttention
from reasonrl.models.qwen2_5_vl.model import Qwen2_5_VL
from reasonrl.models.tiny import init_weights
from reasonrl.models.tiny_vlm import LVR_TOKENS, make_vlm_tokenizer, tiny_vlm_config
from reasonrl.rl.update import freeze_vision
from reasonrl.vision.lvr.sft import lvr_sequence, lvr_sft_loss, roi_tokens
from tests.models.vlm_common import CORPUS, images_prompt


@pytest.fixture(scope="module")
def setup():
    tok = make_vlm_tokenizer(CORPUS, vocab_size=400, extra_special_tokens=LVR_TOKENS)
    model = init_weights(Qwen2_5_VL(tiny_vlm_config(tok)), 0.1, 0)
    freeze_vision(model)
    latent = LatentConfig.from_tokenizer(tok)
    prompts = [images_prompt(tok, model.vlm_config, [(56, 84)], seed=1), images_prompt(tok, model.vlm_config, [(84, 84)], seed=2)]
    seqs = [lvr_sequence(prompts[0], [1, 2], tok.encode("red"), latent),
            lvr_sequence(prompts[1], [0, 3, 4], tok.encode("a blue square"), latent)]
    return tok, model, latent, prompts, seqs


def test_region_tokens_are_the_cells_the_box_touches():
    grid = (1, 4, 6)  # 2 x 3 merged tokens of 28 px: a 56 x 84 image, no resizing
    assert roi_tokens((30, 0, 40, 10), (56, 84), grid) == [1]
    assert roi_tokens((20, 20, 60, 40), (56, 84), grid) == [0, 1, 2, 3, 4, 5]
    assert roi_tokens((56, 28, 84, 56), (56, 84), grid) == [5]
    assert roi_tokens((56, 28, 84, 56), (112, 168), grid) == [1]  # the image was resized by half


def teacher_inputs(model, seq, prompt):
    """The sequence's input embeddings with the image rows and, at the latent rows, the region
    tokens written in (teacher forcing); and the image tokens."""
    with torch.no_grad():
        images = model.encode_images(prompt.pixel_values, prompt.image_grid_thw)
    x = model.embed_tokens(torch.tensor(seq.input_ids)).clone()
    x[prompt.image_rows] = images
    x[seq.latent_rows] = images[seq.targets]
    return x, images


def reference(model, seq, prompt):
    """Hidden states by a plain forward: image rows and latent rows overwritten in the embeddings."""
    x, images = teacher_inputs(model, seq, prompt)
    t = len(seq.input_ids)
    return model.forward_embeds(x, prompt.positions_for(0, t), CausalAttention(1, t)), images


def test_loss_is_ce_without_latent_targets_plus_a_tenth_of_the_latent_mse(setup):
    tok, model, latent, prompts, seqs = setup
    loss, stats = lvr_sft_loss(model, seqs, prompts)
    ce_terms, mse_terms = [], []
    for s, p in zip(seqs, prompts):
        hidden, images = reference(model, s, p)
        logits = model.compute_logits(hidden).float()
        targets = [j for j in range(s.answer_start, len(s.input_ids)) if j not in s.latent_rows]
        ce_terms.append(F.cross_entropy(logits[[j - 1 for j in targets]], torch.tensor(s.input_ids)[targets], reduction="sum"))
        mse_terms.append(((hidden[[r - 1 for r in s.latent_rows]] - images[s.targets]) ** 2).sum())
    n_tokens = sum(len(s.input_ids) - s.answer_start - len(s.latent_rows) for s in seqs)
    n_latent = sum(len(s.latent_rows) for s in seqs) * model.config.hidden_size
    expected = sum(ce_terms) / n_tokens + 0.1 * sum(mse_terms) / n_latent
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert stats["tokens"] == n_tokens
    torch.testing.assert_close(lvr_sft_loss(model, seqs, prompts, weight=0.0)[0], sum(ce_terms) / n_tokens, atol=1e-5, rtol=1e-5)


def test_the_placeholder_id_does_not_matter_and_gradients_skip_the_vision_tower(setup):
    tok, model, latent, prompts, seqs = setup
    loss, _ = lvr_sft_loss(model, seqs, prompts)
    other = [type(s)([5 if j in s.latent_rows else v for j, v in enumerate(s.input_ids)], s.latent_rows, s.targets,
                     s.answer_start) for s in seqs]
    torch.testing.assert_close(lvr_sft_loss(model, other, prompts)[0], loss)  # embeddings overwritten, targets left out
    loss.backward()
    assert all(p.grad is None for p in model.visual.parameters())
    assert model.layers[0].self_attn.qkv_proj.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_a_few_steps_lower_both_terms(setup):
    tok, model, latent, prompts, seqs = setup
    model = init_weights(Qwen2_5_VL(model.vlm_config), 0.1, 1)
    freeze_vision(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = lvr_sft_loss(model, seqs, prompts)[1]
    for _ in range(15):
        loss, _ = lvr_sft_loss(model, seqs, prompts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = lvr_sft_loss(model, seqs, prompts)[1]
    assert last["ce"] < first["ce"] and last["latent_mse"] < first["latent_mse"]


def test_shapes_world_examples_target_the_tokens_of_the_question_region(setup):
    import numpy as np

    from reasonrl.vision.lvr.data import lvr_example
    from reasonrl.vision.world import SceneConfig, ask, render, sample_scene

    tok, model, latent, _, _ = setup
    rng, done = np.random.default_rng(0), 0
    while done < 5:
        scene = sample_scene(rng, SceneConfig(width=112, height=112))
        item = ask("detail", scene, rng)
        if item is None:
            continue
        image = render(scene).image
        seq, prompt = lvr_example(tok, model, image, item, latent)
        _, gh, gw = prompt.image_grid_thw[0].tolist()
        assert (gh, gw) == (8, 8)  # 112 px: no resizing, 4 x 4 cells of 28 px
        x0, y0, x1, y1 = item.roi
        touched = [r * 4 + c for r in range(4) for c in range(4)
                   if c * 28 < x1 and (c + 1) * 28 > x0 and r * 28 < y1 and (r + 1) * 28 > y0]
        assert seq.targets == touched
        first = len(prompt.input_ids)
        assert seq.input_ids[first] == latent.start_id and seq.input_ids[first + 1 + len(touched)] == latent.end_id
        assert tok.decode(seq.input_ids[first + 2 + len(touched):]).startswith(f"\\boxed{{{item.answer}}}")
        done += 1
    with pytest.raises(ValueError, match="no region"):
        lvr_example(tok, model, image, type(item)("How many?", "3", "count", "number", True), latent)


class Recorder:
    """The latent rows' input embeddings of every forward of the model (a forward pre-hook)."""

    def __init__(self, model, seqs, t):
        self.calls, self.seqs, self.t = [], seqs, t
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        ids, _, _, embeds, rows = args
        flat = dict(zip(rows.tolist(), embeds))
        self.calls.append([torch.stack([flat[i * self.t + r] for r in s.latent_rows]) for i, s in enumerate(self.seqs)])
        self.requires_grad = embeds.requires_grad


def autoregressive(model, seq, prompt, scale, passes=None):
    """The latents inference feeds back, by a plain loop: latent k = scale x the final hidden state of
    the row before it, the earlier latents being the model's own (after `passes` refinements of the
    teacher-forced inputs when given: each pass feeds the previous one's predictions at once)."""
    with torch.no_grad():
        x, _ = teacher_inputs(model, seq, prompt)
        t = len(seq.input_ids)
        steps = passes if passes is not None else len(seq.latent_rows)
        for k in range(steps):
            hidden = model.forward_embeds(x, prompt.positions_for(0, t), CausalAttention(1, t))
            if passes is not None:
                x[seq.latent_rows] = hidden[[r - 1 for r in seq.latent_rows]] * scale
            else:
                x[seq.latent_rows[k]] = hidden[seq.latent_rows[k] - 1] * scale
    return x[seq.latent_rows]


@pytest.mark.parametrize("passes", [1, 2, 3])
def test_own_latents_feed_the_graded_pass_the_models_predictions_not_the_region_tokens(setup, passes):
    tok, model, latent, prompts, seqs = setup
    scale, t = 2.5, max(len(s.input_ids) for s in seqs)
    rec = Recorder(model, seqs, t)
    try:
        loss, stats = lvr_sft_loss(model, seqs, prompts, 0.1, scale=scale, latent_inputs="own", own_passes=passes)
    finally:
        rec.handle.remove()
    assert len(rec.calls) == passes + 1  # passes without gradient, then the graded one
    first, graded = rec.calls[0], rec.calls[-1]
    assert not rec.requires_grad  # the fed latents are detached
    for i, (s, p) in enumerate(zip(seqs, prompts)):
        _, images = reference(model, s, p)
        torch.testing.assert_close(first[i], images[s.targets])  # the first pass is teacher-forced
        torch.testing.assert_close(graded[i], autoregressive(model, s, p, scale, passes), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(graded[i], images[s.targets], atol=1e-3)
        if passes >= len(s.latent_rows):  # as many passes as latents: exactly what inference feeds back
            torch.testing.assert_close(graded[i], autoregressive(model, s, p, scale), atol=1e-5, rtol=1e-5)
    assert stats["input_cosine"] < 0.99


def test_own_latents_keep_the_loss_ce_plus_mse_to_the_true_region_tokens(setup):
    tok, model, latent, prompts, seqs = setup
    scale = 2.5
    loss, stats = lvr_sft_loss(model, seqs, prompts, 0.1, scale=scale, latent_inputs="own", own_passes=2)
    ce_terms, mse_terms = [], []
    for s, p in zip(seqs, prompts):
        with torch.no_grad():
            images = model.encode_images(p.pixel_values, p.image_grid_thw)
            x = model.embed_tokens(torch.tensor(s.input_ids)).clone()
            x[p.image_rows] = images
            x[s.latent_rows] = autoregressive(model, s, p, scale, passes=2)
            t = len(s.input_ids)
            hidden = model.forward_embeds(x, p.positions_for(0, t), CausalAttention(1, t))
        logits = model.compute_logits(hidden).float()
        targets = [j for j in range(s.answer_start, len(s.input_ids)) if j not in s.latent_rows]
        ce_terms.append(F.cross_entropy(logits[[j - 1 for j in targets]], torch.tensor(s.input_ids)[targets], reduction="sum"))
        mse_terms.append(((hidden[[r - 1 for r in s.latent_rows]] - images[s.targets] / scale) ** 2).sum())
    n_tokens = sum(len(s.input_ids) - s.answer_start - len(s.latent_rows) for s in seqs)
    n_latent = sum(len(s.latent_rows) for s in seqs) * model.config.hidden_size
    torch.testing.assert_close(loss, sum(ce_terms) / n_tokens + 0.1 * sum(mse_terms) / n_latent, atol=1e-5, rtol=1e-5)
    teacher = lvr_sft_loss(model, seqs, prompts, 0.1, scale=scale)
    assert teacher[1]["input_cosine"] == pytest.approx(1.0) and abs(float(teacher[0].detach()) - float(loss.detach())) > 1e-4
    loss.backward()
    assert all(p.grad is None for p in model.visual.parameters())
    model.zero_grad()


def test_latent_inputs_options_are_checked(setup):
    tok, model, latent, prompts, seqs = setup
    with pytest.raises(ValueError, match="latent_inputs"):
        lvr_sft_loss(model, seqs, prompts, latent_inputs="mine")
    with pytest.raises(ValueError, match="own_passes"):
        lvr_sft_loss(model, seqs, prompts, latent_inputs="own", own_passes=0)


@pytest.mark.parametrize("target", ["token", "region", "remaining"])
def test_the_pointer_loss_is_the_region_tokens_cross_entropy_among_the_image_tokens_by_cosine(setup, target):
    """CE + weight x MSE + pointer_weight x the mean CE of each latent's target among its prompt's image
    tokens, logits cos(scale x state, token) / 0.1 (target "token": region token k; "region": the region's
    summed probability; "remaining": region tokens k onwards); pointer_top1 counts the latents whose top
    logit is a target."""
    tok, model, latent, prompts, seqs = setup
    scale = 2.5
    base, _ = lvr_sft_loss(model, seqs, prompts, 0.1, scale=scale)
    loss, stats = lvr_sft_loss(model, seqs, prompts, 0.1, scale=scale, pointer_weight=0.5, pointer_target=target)
    terms, hits = [], 0
    for s, p in zip(seqs, prompts):
        hidden, images = reference(model, s, p)
        states = hidden[[r - 1 for r in s.latent_rows]] * scale
        logits = F.normalize(states, dim=-1) @ F.normalize(images, dim=-1).T / 0.1
        probs = logits.softmax(-1)
        for k, row in enumerate(probs):
            right = {"token": [s.targets[k]], "region": s.targets, "remaining": s.targets[k:]}[target]
            terms.append(-row[right].sum().log())
            hits += int(int(row.argmax()) in right)
    n = sum(len(s.latent_rows) for s in seqs)
    torch.testing.assert_close(loss, base + 0.5 * sum(terms) / n, atol=1e-5, rtol=1e-5)
    assert stats["pointer_ce"] == pytest.approx(float(sum(terms) / n), rel=1e-5) and stats["pointer_top1"] == hits / n
    with pytest.raises(ValueError, match="pointer_target"):
        lvr_sft_loss(model, seqs, prompts, pointer_weight=1.0, pointer_target="set")


def test_training_the_pointer_points_the_states_at_their_region_tokens(setup):
    tok, model, latent, prompts, seqs = setup
    model = init_weights(Qwen2_5_VL(model.vlm_config), 0.1, 1)
    freeze_vision(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = lvr_sft_loss(model, seqs, prompts, 0.0, pointer_weight=1.0)[1]
    for _ in range(15):
        loss, _ = lvr_sft_loss(model, seqs, prompts, 0.0, pointer_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = lvr_sft_loss(model, seqs, prompts, 0.0, pointer_weight=1.0)[1]
    assert last["pointer_ce"] < 0.5 * first["pointer_ce"] and last["pointer_top1"] == 1.0 > first["pointer_top1"]


def test_own_passes_with_image_token_feedback_feed_the_nearest_image_tokens(setup):
    tok, model, latent, prompts, seqs = setup
    scale, t = 2.5, max(len(s.input_ids) for s in seqs)
    rec = Recorder(model, seqs, t)
    try:
        lvr_sft_loss(model, seqs, prompts, 0.1, scale=scale, latent_inputs="own", own_passes=1, feedback="image_token")
    finally:
        rec.handle.remove()
    for i, (s, p) in enumerate(zip(seqs, prompts)):
        hidden, images = reference(model, s, p)  # the first pass is teacher-forced
        expected = nearest_token(hidden[[r - 1 for r in s.latent_rows]] * scale, images)
        torch.testing.assert_close(rec.calls[-1][i], expected)  # rows of the image's tokens
        assert not torch.allclose(rec.calls[-1][i], images[s.targets])  # the model's choice, not the region
    with pytest.raises(ValueError, match="feedback"):
        lvr_sft_loss(model, seqs, prompts, feedback="hidden")


def test_exit_end_token_trains_the_placeholder_targets_too(setup):
    """exit "end_token": the CE runs over every target from the start token on, the `<|lvr|>` placeholders
    included (each span row predicts whether the span goes on); the MSE is unchanged."""
    tok, model, latent, prompts, seqs = setup
    loss, stats = lvr_sft_loss(model, seqs, prompts, exit="end_token")
    ce_terms, mse_terms = [], []
    for s, p in zip(seqs, prompts):
        hidden, images = reference(model, s, p)
        logits = model.compute_logits(hidden).float()
        targets = list(range(s.answer_start, len(s.input_ids)))
        ce_terms.append(F.cross_entropy(logits[[j - 1 for j in targets]], torch.tensor(s.input_ids)[targets], reduction="sum"))
        mse_terms.append(((hidden[[r - 1 for r in s.latent_rows]] - images[s.targets]) ** 2).sum())
    n_tokens = sum(len(s.input_ids) - s.answer_start for s in seqs)
    n_latent = sum(len(s.latent_rows) for s in seqs) * model.config.hidden_size
    torch.testing.assert_close(loss, sum(ce_terms) / n_tokens + 0.1 * sum(mse_terms) / n_latent, atol=1e-5, rtol=1e-5)
    assert stats["tokens"] == n_tokens == lvr_sft_loss(model, seqs, prompts)[1]["tokens"] + sum(len(s.latent_rows) for s in seqs)
    with pytest.raises(ValueError, match="exit"):
        lvr_sft_loss(model, seqs, prompts, exit="never")


def test_a_trained_exit_ends_the_engines_spans_at_the_training_length(setup):
    """Trained with exit "end_token", the model leaves latent mode in the engine (exit "end_token", a quota of
    8) after as many latents as its training spans had (2 and 3), not at the quota."""
    from reasonrl.engine.config import EngineConfig
    from reasonrl.engine.llm_engine import LLMEngine
    from reasonrl.engine.sampling_params import SamplingParams

    tok, model, latent, prompts, seqs = setup
    trained = init_weights(Qwen2_5_VL(model.vlm_config), 0.1, 1)
    freeze_vision(trained)

    def p_continue() -> float:  # P(<|lvr|>) at the <|lvr_start|> row, teacher-forced
        with torch.no_grad():
            hidden = reference(trained, seqs[0], prompts[0])[0]
            return float(trained.compute_logits(hidden[seqs[0].answer_start]).float().softmax(-1)[latent.latent_id])

    before = p_continue()
    opt = torch.optim.Adam([p for p in trained.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(25):
        loss, _ = lvr_sft_loss(trained, seqs, prompts, 1.0, pointer_weight=1.0, pointer_target="region", exit="end_token")
        opt.zero_grad()
        loss.backward()
        opt.step()
    cfg = LatentConfig.from_tokenizer(tok, steps=8, exit="end_token", feedback="image_token")
    eng = LLMEngine(trained, None, EngineConfig(kv_cache_memory=1 << 22, block_size=4), latent=cfg)
    for i, p in enumerate(prompts):
        eng.add_request(str(i), p, SamplingParams(temperature=0.0, max_tokens=16, detokenize=False))
    outs = eng.drain()
    assert [len(outs[str(i)].outputs[0].latents.positions) for i in range(len(prompts))] == [2, 3]
    assert before < 0.05 and p_continue() > 0.5  # taught to go on (a model trained without the targets is not)
