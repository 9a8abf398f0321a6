"""LVR's latent mode in the engine (engine/latent.py), fp32 on CPU, a tiny random Qwen2.5-VL.

The reference is a plain torch loop: the full model forward over the growing embedding sequence,
the last hidden state appended as the next embedding in latent mode. The engine must give the same
tokens and latents alone, mixed in one batch with ordinary requests, under preemption and chunked
prefill, and after abort and resume."""

import dataclasses
import warnings

import pytest
import torch

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.latent import EXIT_KEY, FEEDBACK_KEY, SCALE_KEY, LatentConfig, Latents, nearest_token
from reasonrl.kernels import cpu_ops
from reasonrl.models import load_model
from reasonrl.models.model import CausalAttention
from reasonrl.models.qwen2_5_vl import MultimodalPrompt
from reasonrl.models.tiny_vlm import make_vlm_tokenizer
from tests.models.vlm_common import CORPUS, hf_vlm_reference, images_prompt

MAX = 16
GREEDY = SamplingParams(temperature=0, max_tokens=MAX, ignore_eos=True)
BYTES_PER_TOKEN = 2 * 2 * 2 * 16 * 4  # k and v, 2 layers, 2 KV heads of 16, fp32


@pytest.fixture(scope="module")
def tok():
    return make_vlm_tokenizer(CORPUS, vocab_size=384)


@pytest.fixture(scope="module")
def model(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("latent_engine")
    hf_vlm_reference(tok, seed=11).save_pretrained(path)
    return load_model(path, "cpu")


@pytest.fixture(scope="module")
def ids(tok):
    """start, latent, end: three special tokens the random model does not favour."""
    return tuple(tok.tok.token_to_id(t) for t in ("<|quad_start|>", "<|vision_pad|>", "<|quad_end|>"))


def with_start(mm: MultimodalPrompt, token: int, model) -> MultimodalPrompt:
    return MultimodalPrompt.from_ids(mm.input_ids + [token], mm.pixel_values, mm.image_grid_thw, model.vlm_config)


@torch.no_grad()
def reference(model, prompt: MultimodalPrompt, cfg: LatentConfig, max_tokens=MAX):
    """Greedy LVR decoding by full forwards: -> (tokens, latents (K, hidden), argmax at each latent row)."""
    image = model.encode_images(prompt.pixel_values, prompt.image_grid_thw) if prompt.num_images else None
    embeds = model.embed(torch.tensor(prompt.input_ids), image, prompt.image_rows if prompt.num_images else None)
    open_ = 0 if prompt.input_ids[-1] == cfg.start_id else None
    tokens, latents, argmaxes = [], [], []
    while len(tokens) < max_tokens:
        t = embeds.shape[0]
        h = model.forward_embeds(embeds, prompt.positions_for(0, t), CausalAttention(1, t))[-1]
        token = int(model.compute_logits(h[None]).argmax())
        nxt = None
        if open_ is None:
            open_ = 0 if token == cfg.start_id else None
        elif open_ >= cfg.steps or (cfg.exit == "end_token" and token == cfg.end_id):
            token, open_ = cfg.end_id, None
        else:
            argmaxes.append(token)
            nxt = h * cfg.scale if cfg.feedback == "state" else nearest_token(h[None] * cfg.scale, image)[0]
            token, open_ = cfg.latent_id, open_ + 1
            latents.append(nxt)
        tokens.append(token)
        nxt = model.embed_tokens(torch.tensor([token]))[0] if nxt is None else nxt
        embeds = torch.cat([embeds, nxt[None]])
    return tokens, (torch.stack(latents) if latents else torch.zeros(0, h.shape[0])), argmaxes


def engine_for(model, cfg, **kw):
    kw = {"kv_cache_memory": 1 << 22, "block_size": 4, **kw}
    return LLMEngine(model, None, EngineConfig(**kw), latent=cfg)


def run(engine, requests):
    for rid, (prompt, params, kw) in requests.items():
        engine.add_request(rid, prompt, params, **kw)
    return {rid: out.outputs[0] for rid, out in engine.drain().items()}


@pytest.fixture(scope="module")
def cases(model, tok, ids):
    """{name: (prompt, LatentConfig)}: forced entry (the prompt ends with start) with the fixed
    quota; entry by sampling start mid-output; exit by sampling end; and a text-only prompt."""
    start, latent, end = ids
    cfg = model.vlm_config
    image = images_prompt(tok, cfg, [(56, 84)], seed=1)
    forced = LatentConfig(start, latent, end, steps=4)
    plain = reference(model, image, LatentConfig(start, latent, end))[0]  # never enters: start is not sampled
    natural_start = next(t for i, t in enumerate(plain) if i >= 2 and t not in plain[:i])
    natural = LatentConfig(natural_start, latent, end, steps=3)
    probe = reference(model, with_start(image, start, model), LatentConfig(start, latent, end, steps=6))[2]
    k = next(k for k in range(1, 6) if probe[k] not in probe[:k] and probe[k] not in ids)
    by_token = LatentConfig(start, latent, probe[k], steps=6, exit="end_token")  # leaves after k latents
    text = MultimodalPrompt.from_ids(tok.apply_chat_template([{"role": "user", "content": "How many squares?"}]) + [start],
                                     None, None, cfg)
    return {"forced": (with_start(image, start, model), forced), "natural": (image, natural),
            "end_token": (with_start(image, start, model), by_token), "text": (text, forced), "k": k}


@pytest.mark.parametrize("name", ["forced", "natural", "end_token", "text"])
def test_engine_matches_the_full_forward_reference(model, cases, name):
    prompt, cfg = cases[name]
    tokens, latents, _ = reference(model, prompt, cfg)
    engine = engine_for(model, cfg)
    out = run(engine, {"a": (prompt, GREEDY, {})})["a"]
    assert out.token_ids == tokens
    if cpu_ops.available():  # token steps run the C++ forward, latent steps (and image chunks) PyTorch
        assert engine.stats()["cpu_forward_steps"] > 0 and engine.stats()["cpu_forward_eager_steps"] > 0
    assert cfg.latent_id in tokens and cfg.end_id in tokens  # a whole span ran
    assert out.latents.positions == [i for i, t in enumerate(tokens) if t == cfg.latent_id]
    torch.testing.assert_close(out.latents.vectors, latents, atol=1e-4, rtol=1e-4)
    if name == "end_token":  # left by the sampled end after k latents, before the quota of 6
        assert tokens.index(cfg.end_id) == cases["k"]
    if name == "forced":
        assert tokens[:5] == [cfg.latent_id] * 4 + [cfg.end_id]
        assert out.logprobs[:5] == [0.0] * 5  # forced tokens are not sampled


def mixed_requests(model, tok, cases):
    prompt, cfg = cases["forced"]
    ordinary = images_prompt(tok, model.vlm_config, [(84, 56)], seed=3)
    seeded = SamplingParams(temperature=1.0, seed=7, max_tokens=MAX, ignore_eos=True)
    return cfg, {"latent": (prompt, GREEDY, {}), "latent_seeded": (prompt, seeded, {}),
                 "text_latent": (cases["text"][0], GREEDY, {}), "ordinary": (ordinary, GREEDY, {}),
                 "ordinary_text": (tok.apply_chat_template([{"role": "user", "content": "What is in the picture?"}]), seeded, {})}


def test_a_batch_mixing_latent_and_ordinary_requests_equals_each_alone(model, tok, cases):
    cfg, reqs = mixed_requests(model, tok, cases)
    alone = {rid: run(engine_for(model, cfg), {rid: r})[rid] for rid, r in reqs.items()}
    engine = engine_for(model, cfg)
    mixed_steps, step_inputs = [], engine.latents.step_inputs

    def spy(scheduled, query_start, model_inputs):
        kinds = {seq.latent.open is not None for seq, _ in scheduled}
        mixed_steps.append(len(kinds) == 2)
        return step_inputs(scheduled, query_start, model_inputs)

    engine.latents.step_inputs = spy
    together = run(engine, reqs)
    assert sum(mixed_steps) >= 3  # decode steps held latent and ordinary sequences at once
    for rid, out in alone.items():
        assert together[rid].token_ids == out.token_ids, rid
        assert together[rid].latents.positions == out.latents.positions
        torch.testing.assert_close(together[rid].latents.vectors, out.latents.vectors, atol=1e-4, rtol=1e-4)  # fp32 batch-shape noise
    assert not alone["ordinary_text"].latents.positions and alone["ordinary"].latents.positions[0] > 0  # never / later


def roomy_and_tight(model, cfg, reqs):
    """The requests' outputs from a roomy engine and from one of 26 blocks of 4 tokens and 7-token chunks,
    which must preempt."""
    full = run(engine_for(model, cfg), reqs)
    engine = engine_for(model, cfg, kv_cache_memory=26 * 4 * BYTES_PER_TOKEN, max_model_len=100, max_num_batched_tokens=7)
    tight = run(engine, reqs)
    assert engine.scheduler.num_preemptions > 0
    return full, tight


def test_preemption_and_chunked_prefill_replay_the_latents(model, tok, cases):
    """26 blocks of 4 tokens cannot hold the batch: sequences are preempted and their latents are
    recomputed from the recorded vectors; 7-token chunks."""
    cfg, reqs = mixed_requests(model, tok, cases)
    full, tight = roomy_and_tight(model, cfg, reqs)
    for rid, out in full.items():
        assert tight[rid].token_ids == out.token_ids, rid
        torch.testing.assert_close(tight[rid].latents.vectors, out.latents.vectors, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stop_at", [2, 5, 9])  # inside the first span, just after it, in a later part
def test_abort_then_resume_equals_uninterrupted(model, tok, cases, stop_at):
    cfg, reqs = mixed_requests(model, tok, cases)
    full = run(engine_for(model, cfg), reqs)
    engine = engine_for(model, cfg)
    for rid, (p, q, _) in reqs.items():
        engine.add_request(rid, p, q)
    while min(len(s.output_ids) for r in engine.requests.values() for s in r.seqs) < stop_at:
        engine.step()
    partial = {rid: engine.abort(rid).outputs[0] for rid in list(engine.requests)}
    assert any(o.latents.positions for o in partial.values())
    resumed = run(engine, {rid: (reqs[rid][0], SamplingParams(temperature=reqs[rid][1].temperature, seed=o.seed,
                                                              max_tokens=MAX, ignore_eos=True),
                                 {"output_ids": o.token_ids, "output_logprobs": o.logprobs, "output_latents": o.latents})
                           for rid, o in partial.items()})
    for rid, out in full.items():
        assert resumed[rid].token_ids == out.token_ids, rid
        assert resumed[rid].latents.positions == out.latents.positions
        torch.testing.assert_close(resumed[rid].latents.vectors, out.latents.vectors, atol=1e-4, rtol=1e-4)


def test_the_prefix_cache_keys_latent_positions_by_their_vectors(model, cases):
    """Two resumed outputs with equal tokens but different latents share the prompt's blocks, not the span's."""
    prompt, cfg = cases["forced"]
    out = run(engine_for(model, cfg), {"a": (prompt, GREEDY, {})})["a"]
    engine = engine_for(model, cfg)
    kw = {"output_ids": out.token_ids[:8], "output_logprobs": out.logprobs[:8]}
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    first = run(engine, {"x": (prompt, params, {**kw, "output_latents": out.latents})})["x"]
    noisy = Latents(out.latents.positions, out.latents.vectors + 0.5)
    engine.add_request("y", prompt, params, **kw, output_latents=noisy)
    engine.step()
    seq = engine.requests["y"].seqs[0]
    assert seq.num_cached <= len(prompt.input_ids)  # no block holding a (different) latent was reused
    second = engine.drain()["y"].outputs[0]
    again = run(engine, {"z": (prompt, params, {**kw, "output_latents": out.latents})})
    assert again["z"].token_ids == first.token_ids
    assert second.latents.positions[:4] == first.latents.positions[:4]


def test_bad_latent_input_is_refused_with_the_reason(model, tok, cases, ids):
    prompt, cfg = cases["forced"]
    out = run(engine_for(model, cfg), {"a": (prompt, GREEDY, {})})["a"]
    engine = engine_for(model, cfg)
    with pytest.raises(ValueError, match="positions"):
        engine.add_request("b", prompt, GREEDY, output_ids=out.token_ids[:6], output_logprobs=out.logprobs[:6])
    with pytest.raises(ValueError, match="vectors must be"):
        engine.add_request("b", prompt, GREEDY, output_ids=out.token_ids[:6], output_logprobs=out.logprobs[:6],
                           output_latents=Latents(out.latents.positions, torch.zeros(4, 3)))
    with pytest.raises(ValueError, match="inside a latent span"):
        engine.add_request("b", prompt, GREEDY, output_ids=[ids[1], 5], output_logprobs=[0.0, 0.0],
                           output_latents=Latents([0], out.latents.vectors[:1]))
    with pytest.raises(ValueError, match="no latent mode"):
        LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 22)).add_request(
            "b", prompt, GREEDY, output_latents=out.latents)
    with pytest.raises(ValueError, match="three different"):
        LatentConfig(1, 1, 2)
    with pytest.raises(ValueError, match="no token"):
        LatentConfig.from_tokenizer(tok)


def test_the_trainer_replays_the_latents_and_matches_the_engine_logprobs(model, tok, cases):
    """Log-probs of the sampled tokens by a training forward with the recorded latents replayed
    equal the engine's; without the replay they do not."""
    from reasonrl.vision.lvr.replay import replay_logprobs

    cfg, reqs = mixed_requests(model, tok, cases)
    seeded = SamplingParams(temperature=1.0, seed=3, max_tokens=MAX, ignore_eos=True)
    rids = ["latent", "text_latent", "ordinary"]
    outs = run(engine_for(model, cfg), {rid: (reqs[rid][0], seeded, {}) for rid in rids})
    prompts = [reqs[rid][0] for rid in rids]
    prompts = [p if isinstance(p, MultimodalPrompt) else MultimodalPrompt.from_ids(p, None, None, model.vlm_config)
               for p in prompts]
    with torch.no_grad():
        logp, mask = replay_logprobs(model, prompts, [outs[r].token_ids for r in rids], [outs[r].latents for r in rids])
        plain, _ = replay_logprobs(model, prompts, [outs[r].token_ids for r in rids], [None] * 3)
    for i, rid in enumerate(rids):
        out = outs[rid]
        used = mask[i, :len(out.token_ids)]
        closed = sum(1 for j, tok_id in enumerate(out.token_ids) if tok_id == cfg.end_id and j - 1 in out.latents.positions)
        assert (~used).sum() == len(out.latents.positions) + closed  # placeholders and the ends closing their spans
        assert (closed > 0) == (rid != "ordinary" or bool(out.latents.positions))
        torch.testing.assert_close(logp[i, :len(out.token_ids)][used], torch.tensor(out.logprobs)[used], atol=1e-4, rtol=1e-4)
    after_span = [j for j in range(6, MAX)]  # the first span (4 latents and its end) is over from output 5 on
    assert not torch.allclose(plain[0, after_span], logp[0, after_span], atol=1e-3)  # replay matters


def test_n_samples_each_equal_the_single_request_with_their_seed(model, cases):
    prompt, cfg = cases["forced"]
    params = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=MAX, ignore_eos=True)
    engine = engine_for(model, cfg)
    engine.add_request("r", prompt, params)
    samples = engine.drain()["r"].outputs
    for i, sample in enumerate(samples):
        alone = run(engine_for(model, cfg), {"a": (prompt, SamplingParams(temperature=1.0, seed=11 + i, max_tokens=MAX,
                                                                          ignore_eos=True), {})})["a"]
        assert sample.token_ids == alone.token_ids and sample.latents.positions == alone.latents.positions
        torch.testing.assert_close(sample.latents.vectors, alone.latents.vectors, atol=1e-4, rtol=1e-4)
    assert len({tuple(s.token_ids) for s in samples}) > 1
    torch.testing.assert_close(samples[0].latents.vectors[:4], samples[1].latents.vectors[:4], atol=1e-4, rtol=1e-4)  # same context


def test_an_lvr_checkpoint_without_latent_mode_warns(model):
    """A checkpoint LVR SFT trained (its config records lvr_latent_scale) was run with latent mode off,
    silently: reasonrl eval scored it 0.625 where it scores 0.688 as trained."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 22, block_size=4))  # no record: no warning
    model.vlm_config.raw[SCALE_KEY] = 1.5
    try:
        with pytest.warns(UserWarning, match="trained for LVR latent reasoning"):
            LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 22, block_size=4))
    finally:
        del model.vlm_config.raw[SCALE_KEY]


def test_image_token_feedback_feeds_back_the_nearest_image_token(model, tok, cases):
    """Feedback image_token: each latent is the prompt's merged image token nearest to the state (the
    reference snaps it the same way), exactly one of the image's tokens, in a mixed batch under
    preemption as alone; a request without an image is fed its state."""
    prompt, forced = cases["forced"]
    cfg = LatentConfig(forced.start_id, forced.latent_id, forced.end_id, steps=4, scale=2.0, feedback="image_token")
    tokens, latents, _ = reference(model, prompt, cfg)
    out = run(engine_for(model, cfg), {"a": (prompt, GREEDY, {})})["a"]
    assert out.token_ids == tokens and len(out.latents.positions) == tokens.count(cfg.latent_id) >= 4
    torch.testing.assert_close(out.latents.vectors, latents, atol=1e-4, rtol=1e-4)
    image = model.encode_images(prompt.pixel_values, prompt.image_grid_thw)
    assert all((image == v).all(-1).any() for v in out.latents.vectors)  # a real token, bit for bit
    state = reference(model, prompt, dataclasses.replace(cfg, feedback="state"))[1]
    assert not torch.allclose(state, latents, atol=1e-3)  # the states themselves are not image tokens

    full, tight = roomy_and_tight(model, cfg, mixed_requests(model, tok, cases)[1])
    for rid, o in full.items():
        assert tight[rid].token_ids == o.token_ids, rid
        if rid != "text_latent":  # image tokens: the same, not nearly (the text request's states: fp32 noise)
            assert torch.equal(tight[rid].latents.vectors, o.latents.vectors), rid
    text_tokens, text_latents, _ = reference(model, cases["text"][0], dataclasses.replace(cfg, feedback="state"))
    assert full["text_latent"].token_ids == text_tokens and len(text_latents) >= 4
    torch.testing.assert_close(full["text_latent"].latents.vectors, text_latents, atol=1e-4, rtol=1e-4)


def test_the_checkpoint_records_feedback_and_exit_and_the_engine_config_overrides_them(model, tok, ids):
    tok_ids = dict(zip(("<|lvr_start|>", "<|lvr|>", "<|lvr_end|>"), ids))

    class Tok:  # the three LVR tokens under the fixture's ids
        class tok:
            token_to_id = staticmethod(tok_ids.get)

    assert LatentConfig.for_model(model, Tok).feedback == "state"
    model.vlm_config.raw[FEEDBACK_KEY] = "image_token"
    try:
        assert LatentConfig.for_model(model, Tok).feedback == "image_token"
        assert LatentConfig.for_model(model, Tok, feedback=None).feedback == "image_token"
        assert LatentConfig.for_model(model, Tok, feedback="state").feedback == "state"
    finally:
        del model.vlm_config.raw[FEEDBACK_KEY]
    assert LatentConfig.for_model(model, Tok).exit == "steps"
    model.vlm_config.raw[EXIT_KEY] = "end_token"
    try:
        assert LatentConfig.for_model(model, Tok, exit=None).exit == "end_token"
        assert LatentConfig.for_model(model, Tok, exit="steps").exit == "steps"
    finally:
        del model.vlm_config.raw[EXIT_KEY]
    with pytest.raises(ValueError, match="latent_exit"):
        EngineConfig(latent_steps=2, latent_exit="never")
    with pytest.raises(ValueError, match="latent_feedback"):
        EngineConfig(latent_steps=2, latent_feedback="hidden")
    with pytest.raises(ValueError, match="feedback"):
        LatentConfig(*ids, feedback="hidden")
