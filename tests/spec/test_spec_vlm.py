"""EagleVLM in the engine (fp32, CPU, a tiny random Qwen2.5-VL): speculative decoding with images in
the requests is lossless: greedy output token-identical to plain greedy with several image
requests in flight, under KV pressure, with and without the elastic visual compressor (every
branch and mode), and seeded sampling token-identical to plain sampling; the residual rule keeps
the target distribution after an image prompt.

The draft is an "oracle": the target has one decoder layer and the draft copies it (fc passes
the token embedding through, embeddings scaled to unit RMS so the draft's input norm changes
nothing), so the draft predicts text exactly and visual rows nearly: many tokens are accepted
and tree rows past the prompt (M-RoPE text positions + rope_delta) are really verified."""

from dataclasses import replace

import pytest
import torch

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.models.qwen2_5_vl.model import Qwen2_5_VL
from reasonrl.models.tiny import init_weights
from reasonrl.models.tiny_vlm import make_vlm_tokenizer, tiny_vlm_config
from reasonrl.vision.spec.compressor import CompressorConfig
from tests.models.vlm_common import CORPUS, images_prompt
from tests.spec.test_spec_engine import assert_same, run

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def tok():
    return make_vlm_tokenizer(CORPUS, vocab_size=384)


@pytest.fixture(scope="module")
def model(tok):
    m = init_weights(Qwen2_5_VL(tiny_vlm_config(tok, num_layers=1)), std=0.2, seed=3)
    with torch.no_grad():
        w = m.embed_tokens.weight  # tied with the LM head
        w /= w.pow(2).mean(-1, keepdim=True).sqrt()
        m.norm.weight.fill_(1.0)
    return m


@pytest.fixture(scope="module")
def prompts(tok, model):
    cfg = model.vlm_config
    return [images_prompt(tok, cfg, [(56, 84)], seed=1), images_prompt(tok, cfg, [(56, 56), (28, 84)], seed=2),
            tok.apply_chat_template([{"role": "user", "content": "How many squares are there?"}]),
            images_prompt(tok, cfg, [(84, 56), (56, 56)], seed=3), images_prompt(tok, cfg, [(112, 112)], seed=4)]


def oracle_draft(model, compressor=None):
    draft = DraftHead(model, compressor)
    h = model.config.hidden_size
    with torch.no_grad():
        draft.fc.weight.zero_()
        draft.fc.weight[:, :h] = torch.eye(h)
        draft.fc.bias.zero_()
        draft.layer.load_state_dict(model.layers[0].state_dict())
    return draft


def engine(model, draft=None, **kw):
    kw = {"kv_cache_memory": 1 << 22, "block_size": 4, "draft_adaptive": False, **kw}
    return LLMEngine(model, None, EngineConfig(**kw), draft=draft)


def requests(prompts, params=GREEDY):
    return {str(i): (p, params, {}) for i, p in enumerate(prompts)}


def test_greedy_with_images_in_flight_equals_plain_and_accepts_drafts(model, prompts):
    reqs = requests(prompts)
    plain = run(engine(model), reqs)
    e = engine(model, oracle_draft(model), draft_top_k=4, draft_depth=4, draft_tokens=8)
    assert_same(plain, run(e, reqs))
    stats = e.stats()
    assert stats["spec_accepted_length"] > 2.0 and stats["kv_blocks_used"] == 0
    reports = e.speculator.visual_reports
    assert set(reports) == {"0", "1", "3", "4"}  # the text prompt has no visual rows
    for rid, r in reports.items():
        assert r.visual_tokens == r.draft_visual_tokens == len(prompts[int(rid)].image_rows)
        assert r.draft_visual_flops == r.visual_tokens * e.speculator.draft.flops_per_row()


def test_greedy_with_images_under_kv_pressure_stays_exact(model, prompts):
    reqs = requests(prompts * 2)
    plain = run(engine(model), reqs)
    c = model.config
    per_block = c.num_layers * 2 * 4 * c.num_kv_heads * c.head_dim * 4
    longest = max(len(p if isinstance(p, list) else p.input_ids) for p in prompts) + GREEDY.max_tokens
    small = engine(model, oracle_draft(model), kv_cache_memory=(longest // 4 + 12) * per_block, max_model_len=longest + 8)
    assert_same(plain, run(small, reqs))
    assert small.stats()["preemptions"] > 0 and small.stats()["spec_rounds"] > 0


COMPRESSORS = [CompressorConfig(mode="select", branches=(b,)) for b in ("prune", "pool", "conv", "resampler", "text_only")]
COMPRESSORS += [CompressorConfig(mode="weighted", ratio=2), CompressorConfig(mode="concat", coarse_ratio=4)]


@pytest.mark.parametrize("cfg", COMPRESSORS, ids=lambda c: f"{c.mode}-{'+'.join(c.branches) if c.mode == 'select' else 'all'}")
def test_the_compressor_changes_the_draft_not_the_output(model, prompts, cfg):
    chosen = prompts[:2] + prompts[3:]
    reqs = requests(chosen, replace(GREEDY, max_tokens=12))
    plain = run(engine(model), reqs)
    draft = oracle_draft(model, cfg)
    e = engine(model, draft, draft_top_k=4, draft_depth=4, draft_tokens=8)
    assert_same(plain, run(e, reqs))
    assert e.stats()["spec_rounds"] > 0
    for rid, r in e.speculator.visual_reports.items():
        merge = model.vlm_config.vision.spatial_merge_size
        sizes = [int(g.prod()) // merge ** 2 for g in chosen[int(rid)].image_grid_thw]
        assert r.visual_tokens == sum(sizes)
        assert r.draft_visual_tokens == sum(draft.compressor.output_rows(k, b) for k, b in zip(sizes, r.branches))
        if cfg.branches in (("prune",), ("pool",), ("text_only",)):
            assert r.draft_visual_tokens < r.visual_tokens
            assert r.draft_visual_flops < r.visual_tokens * draft.flops_per_row()


def test_seeded_sampling_with_images_is_token_identical_to_plain_sampling(model, prompts):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=24, seed=5, ignore_eos=True)
    reqs = {str(i): (p, replace(params, seed=5 + i), {}) for i, p in enumerate(prompts)}
    plain = run(engine(model), reqs)
    e = engine(model, oracle_draft(model, CompressorConfig()), max_num_batched_tokens=128)
    assert_same(plain, run(e, reqs))
    assert e.stats()["spec_accepted_length"] > 1.3


@pytest.mark.slow
def test_residual_rule_after_an_image_prompt_follows_the_target_distribution(model, prompts):
    """The statistical test of tests/spec/test_spec_engine.py on an image prompt: 2k samples under
    the residual tree rule, the first token sampled plainly after the prefill, the second decided
    at a tree's root (sibling acceptance or the residual); each one's counts (the second
    conditioned on the most frequent first) chi-square-tested against the target's distribution
    at temperature 3 (spread out). A third token is drawn so that the second has a tree."""
    from test_tree_verify import chi_square_p

    prompt, n = prompts[0], 2000
    params = SamplingParams(n=n, temperature=3.0, max_tokens=3, seed=11, ignore_eos=True, detokenize=False)
    e = engine(model, oracle_draft(model), kv_cache_memory=1 << 26, max_num_seqs=512, draft_top_k=12, draft_tokens=24,
               draft_sampling="residual")
    outs = [o.token_ids for o in run(e, {"s": (prompt, params, {})})["s"].outputs]
    assert e.stats()["spec_rounds"] > 0.8 * n  # the second token came from a tree (bar those over a step's token budget)
    prefix = []
    for position in range(2):
        group = [o for o in outs if o[:position] == prefix]
        ids = torch.tensor([prompt.input_ids + prefix])
        with torch.no_grad():
            logits = model.compute_logits(model.forward_padded(ids, [prompt]))[0, -1]
        p = (logits / 3.0).softmax(-1)
        counts = torch.bincount(torch.tensor([o[position] for o in group]), minlength=p.shape[0]).float()
        assert len(group) > 150 and chi_square_p(counts, p) > 0.001, (position, len(group))
        prefix.append(int(counts.argmax()))


def test_switching_tree_sizes_mid_request_with_images_in_flight_stays_exact(model, prompts):
    from tests.spec.test_adaptive import Cycling

    reqs = requests(prompts)
    plain = run(engine(model), reqs)
    e = engine(model, oracle_draft(model, CompressorConfig(branches=("pool", "resampler"))))
    n = len(e.speculator.shapes)
    e.speculator.policy = Cycling(e.speculator.shapes, [0, n - 1, n - 1, 2, n - 2, n - 1, 1])
    assert_same(plain, run(e, reqs))
    assert e.stats()["spec_steps_without_trees"] > 0 and e.stats()["spec_accepted_length"] > 1.5
    assert_same(plain, run(engine(model, oracle_draft(model), draft_adaptive=True, draft_explore_every=2), reqs))


def test_text_catch_ups_after_an_image_prompt_run_in_the_cpu_kernel_at_their_m_rope_positions(model, prompts):
    """Past an image prompt every row is text at one position on all three M-RoPE axes (shifted by
    the prompt's rope_delta): the C++ catch-up takes those rows, and drafts what the eager draft
    drafts (an oracle draft: a wrong position would cost it most of its accepted tokens)."""
    reqs = requests(prompts)
    plain = run(engine(model), reqs)
    accepted, native_rows = {}, []
    for kernel in (False, True):
        e = engine(model, oracle_draft(model), draft_top_k=4, draft_depth=4, draft_tokens=8, cpu_draft_kernel=kernel)
        step, catch_up_text = e.speculator.grow_step, e.speculator.grow_step.catch_up_text

        def spy(states, sources, catch_up_text=catch_up_text):
            out = catch_up_text(states, sources)
            native_rows.extend(s.mm is not None for s in sources if out is not None)
            return out

        step.catch_up_text = spy
        assert_same(plain, run(e, reqs))
        accepted[kernel] = e.stats()["spec_accepted_length"]
    assert any(native_rows)  # image requests' catch-ups went to the kernel
    assert any(p.rope_delta != 0 for p in prompts if not isinstance(p, list))  # so a left-out shift would show
    assert accepted[True] == pytest.approx(accepted[False], abs=0.05) and accepted[False] > 2.0


def test_block_features_are_keyed_by_image_content_as_the_prefix_cache_keys_blocks(tok, model):
    """Two prompts with the same token ids and different images: the draft's kept block features
    follow the prefix cache's keys (ids and image digests), so the second image's blocks get their
    own features, not the first image's."""
    cfg = model.vlm_config
    first, second = images_prompt(tok, cfg, [(56, 84)], seed=1), images_prompt(tok, cfg, [(56, 84)], seed=9)
    assert first.input_ids == second.input_ids
    e = engine(model, oracle_draft(model), draft_adaptive=True)
    policy, spec = e.speculator.policy, e.speculator
    b = policy._bucket(1)
    b.best, b.queue, b.countdown, b.interval = policy.off, [], 10 ** 6, 512  # resting: prompts keep their blocks only
    run(e, {"a": (first, GREEDY, {})})
    kept = len(spec.block_features)
    run(e, {"b": (second, GREEDY, {})})
    image_start = int(first.image_rows.min()) // 4 * 4  # blocks of 4 from the one holding the first image row
    assert len(spec.block_features) == kept + len(first.input_ids) // 4 - image_start // 4
