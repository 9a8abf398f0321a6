"""Images in the engine (fp32, CPU, a tiny random Qwen2.5-VL that transformers builds): greedy tokens
equal transformers' generate with several requests in flight, under KV pressure and chunked
prefill; abort/resume, n > 1, the prefix cache keyed by image content, and the embeddings' memory."""

import numpy as np
import pytest
import torch

from reasonrl.engine import LLM, LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.kernels import cpu_ops
from reasonrl.models import load_model
from reasonrl.models.qwen2_5_vl import MultimodalPrompt
from reasonrl.models.tiny_vlm import make_vlm_tokenizer
from tests.models.vlm_common import CORPUS, hf_vlm_reference, images_prompt, noise_image

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
SEEDED = SamplingParams(temperature=1.0, seed=99, max_tokens=12, ignore_eos=True)
BYTES_PER_TOKEN = 2 * 2 * 2 * 16 * 4  # k and v, 2 layers, 2 KV heads of 16, fp32


@pytest.fixture(scope="module")
def tok():
    return make_vlm_tokenizer(CORPUS, vocab_size=384)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory, tok):
    """(checkpoint dir with tokenizer, transformers reference)"""
    hf = hf_vlm_reference(tok, seed=11)
    path = tmp_path_factory.mktemp("vlm_engine")
    hf.save_pretrained(path)
    tok.save(path)
    return path, hf


@pytest.fixture(scope="module")
def model(vlm):
    return load_model(vlm[0], "cpu")


@pytest.fixture(scope="module")
def prompts(tok, model):
    """Prompts with 1-3 images of different sizes, and a text-only one."""
    cfg = model.vlm_config
    return [images_prompt(tok, cfg, [(56, 84)], seed=1), images_prompt(tok, cfg, [(150, 150), (30, 200)], seed=2),
            tok.apply_chat_template([{"role": "user", "content": "How many squares are there?"}]),
            images_prompt(tok, cfg, [(84, 56), (56, 56), (60, 90)], seed=3)]


def engine_for(model, **kw):
    kw = {"kv_cache_memory": 1 << 22, "block_size": 4, **kw}
    return LLMEngine(model, None, EngineConfig(**kw))


def run(engine, requests):
    """requests: {rid: (prompt, params, kwargs)} -> {rid: RequestOutput}"""
    for rid, (prompt, params, kw) in requests.items():
        engine.add_request(rid, prompt, params, **kw)
    return engine.drain()


def hf_generate(hf, prompt, max_new_tokens):
    mm = prompt if isinstance(prompt, MultimodalPrompt) else None
    ids = torch.tensor([mm.input_ids if mm else prompt])
    kw = {} if mm is None else dict(pixel_values=mm.pixel_values, image_grid_thw=mm.image_grid_thw,
                                    mm_token_type_ids=(ids == hf.config.image_token_id).int())
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                          do_sample=False, **kw)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def expected(vlm, prompts):
    """transformers' greedy tokens of each prompt, generated alone (through EOS, as ignore_eos)."""
    hf = vlm[1]
    hf.generation_config.eos_token_id = None
    return [hf_generate(hf, p, GREEDY.max_tokens) for p in prompts]


def tokens(outs):
    return {rid: out.outputs[0].token_ids for rid, out in outs.items()}


def spy_chunks(engine):
    """Records (prompt, first token, tokens) of every multimodal chunk the engine runs."""
    seen, step_inputs = [], engine.images.step_inputs

    def spy(scheduled, query_start, positions):
        seen.extend((seq.mm, seq.num_computed, n) for seq, n in scheduled if seq.mm is not None)
        return step_inputs(scheduled, query_start, positions)

    engine.images.step_inputs = spy
    return seen


def splits_an_image(mm, start, n):
    """Whether tokens start..start+n-1 hold part of an image but not all of it."""
    return any(lo < start < hi or lo < start + n < hi for lo, hi, _ in engine_keys(mm))


def engine_keys(mm):
    from reasonrl.engine.images import content_keys

    return content_keys(mm, 2)


# ---- parity with transformers ------------------------------------------------------------------

def test_greedy_matches_transformers_with_several_requests_in_flight(model, prompts, expected):
    engine = engine_for(model)
    outs = run(engine, {str(i): (p, GREEDY, {}) for i, p in enumerate(prompts)})
    assert tokens(outs) == {str(i): e for i, e in enumerate(expected)}
    assert engine.stats()["images_encoded"] == 6 and engine.stats()["image_encode_batches"] == 1  # admitted together


def test_greedy_matches_transformers_under_kv_pressure_and_chunked_prefill(model, prompts, expected):
    """30 blocks of 4 tokens hold one sequence, not four: sequences are preempted and re-prefilled
    (their embeddings kept); 9-token chunks cut through images."""
    engine = engine_for(model, kv_cache_memory=30 * 4 * BYTES_PER_TOKEN, max_model_len=120, max_num_batched_tokens=9)
    seen = spy_chunks(engine)
    outs = run(engine, {str(i): (p, GREEDY, {}) for i, p in enumerate(prompts)})
    assert engine.scheduler.num_preemptions > 0
    assert any(splits_an_image(mm, start, n) for mm, start, n in seen)
    assert tokens(outs) == {str(i): e for i, e in enumerate(expected)}
    assert engine.stats()["images_encoded"] == 6  # once per request, however often it was re-prefilled


@pytest.mark.skipif(not cpu_ops.available(), reason="the CPU kernels could not be built here")
def test_text_steps_of_image_requests_run_the_cpu_forward(model, prompts, expected):
    """Decode steps (text rows at their M-RoPE position, one number per row) go through the C++
    forward; steps with image rows do not. Same tokens as transformers, log-probs as the PyTorch
    forward's to float rounding."""
    outs = {}
    for kernel in (True, False):
        engine = engine_for(model, cpu_forward_kernel=kernel)
        outs[kernel] = run(engine, {str(i): (p, SEEDED, {}) for i, p in enumerate(prompts)})
        if kernel:
            stats = engine.stats()
            assert stats["cpu_forward_steps"] >= SEEDED.max_tokens - 1 and stats["cpu_forward_eager_steps"] >= 1
            greedy = run(engine, {str(i): (p, GREEDY, {}) for i, p in enumerate(prompts)})
            assert tokens(greedy) == {str(i): e for i, e in enumerate(expected)}
    for rid, out in outs[True].items():
        assert out.outputs[0].token_ids == outs[False][rid].outputs[0].token_ids
        torch.testing.assert_close(torch.tensor(out.outputs[0].logprobs), torch.tensor(outs[False][rid].outputs[0].logprobs),
                                   atol=1e-5, rtol=1e-5)


def test_logprobs_equal_the_training_forward(model, prompts):
    """The engine's log-probs of its samples are those the trainer's forward_padded gives them."""
    engine = engine_for(model, max_num_batched_tokens=16)
    outs = run(engine, {str(i): (p, SEEDED, {}) for i, p in enumerate(prompts)})
    for i, p in enumerate(prompts):
        out = outs[str(i)].outputs[0]
        ids = (p.input_ids if isinstance(p, MultimodalPrompt) else p)
        with torch.no_grad():
            logits = model.compute_logits(model.forward_padded(torch.tensor([ids + out.token_ids]),
                                                               [p if isinstance(p, MultimodalPrompt) else None]))
        expected = logits[0, len(ids) - 1:-1].log_softmax(-1).gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(out.logprobs), expected, atol=1e-5, rtol=1e-5)


# ---- abort, resume, n > 1 ------------------------------------------------------------------------

@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_abort_then_resume_equals_uninterrupted(model, prompts, params):
    reqs = {str(i): (p, params, {}) for i, p in enumerate(prompts)}
    full = run(engine_for(model), reqs)
    engine = engine_for(model)
    for rid, (p, q, _) in reqs.items():
        engine.add_request(rid, p, q)
    while min(len(s.output_ids) for r in engine.requests.values() for s in r.seqs) < 4:
        engine.step()
    partial = {rid: engine.abort(rid).outputs[0] for rid in list(engine.requests)}
    assert engine.stats()["image_embed_bytes"] == 0 and engine.stats()["image_requests"] == 0
    resumed = run(engine, {rid: (reqs[rid][0], SamplingParams(temperature=params.temperature, seed=o.seed, max_tokens=12,
                                                              ignore_eos=True),
                                 {"output_ids": o.token_ids, "output_logprobs": o.logprobs})
                           for rid, o in partial.items()})
    for rid, out in full.items():
        assert resumed[rid].outputs[0].token_ids == out.outputs[0].token_ids
        torch.testing.assert_close(torch.tensor(resumed[rid].outputs[0].logprobs), torch.tensor(out.outputs[0].logprobs),
                                   atol=1e-5, rtol=0)


def test_n_samples_share_blocks_and_one_vision_pass(model, prompts):
    mm = prompts[1]
    engine = engine_for(model)
    engine.add_request("r", mm, SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=8, ignore_eos=True))
    engine.step()
    tables = [s.block_table for s in engine.requests["r"].seqs]
    full = (len(mm.input_ids) - 1) // 4
    assert all(t[:full] == tables[0][:full] for t in tables)  # the siblings reuse the first one's image blocks
    samples = engine.drain()["r"].outputs
    assert engine.stats()["images_encoded"] == 2 and engine.stats()["image_encode_batches"] == 1
    for i, sample in enumerate(samples):  # each sample is the n=1 request with its seed
        alone = run(engine_for(model), {"a": (mm, SamplingParams(temperature=1.0, seed=5 + i, max_tokens=8,
                                                                 ignore_eos=True), {})})["a"].outputs[0]
        assert sample.token_ids == alone.token_ids
    assert len({tuple(s.token_ids) for s in samples}) > 1


# ---- the prefix cache keys blocks by image content -------------------------------------------------

def test_same_image_shares_blocks_and_skips_the_tower(model, prompts, expected):
    engine = engine_for(model)
    mm = prompts[0]
    first = run(engine, {"a": (mm, GREEDY, {})})["a"]
    again = run(engine, {"b": (mm, GREEDY, {})})["b"]
    assert again.num_cached_tokens == (len(mm.input_ids) - 1) // 4 * 4  # every full block, image included
    assert engine.stats()["images_encoded"] == 1  # the second prompt's image was all in cached blocks
    assert again.outputs[0].token_ids == first.outputs[0].token_ids == expected[0]


def test_different_images_with_identical_ids_never_share(model, tok, vlm):
    cfg = model.vlm_config
    a, b = images_prompt(tok, cfg, [(56, 84)], seed=1), images_prompt(tok, cfg, [(56, 84)], seed=7)
    assert a.input_ids == b.input_ids and not torch.equal(a.pixel_values, b.pixel_values)
    engine = engine_for(model)
    run(engine, {"a": (a, GREEDY, {})})
    out_b = run(engine, {"b": (b, GREEDY, {})})["b"]
    first_image_row = int(b.image_rows[0])
    assert out_b.num_cached_tokens == first_image_row // 4 * 4  # only the blocks before the image
    hf = vlm[1]
    hf.generation_config.eos_token_id = None
    assert out_b.outputs[0].token_ids == hf_generate(hf, b, GREEDY.max_tokens)


# ---- memory, refusals, the LLM API ---------------------------------------------------------------

def test_embedding_memory_is_held_while_running_and_released(model, prompts):
    engine = engine_for(model)
    engine.add_request("a", prompts[1], GREEDY)
    engine.add_request("b", prompts[3], GREEDY)
    engine.step()
    stats = engine.stats()
    tokens_of = {rid: int(p.image_grid_thw.prod(-1).sum()) // 4 for rid, p in (("a", prompts[1]), ("b", prompts[3]))}
    assert stats["image_requests"] == 2
    assert stats["image_embed_bytes"] == sum(tokens_of.values()) * 64 * 4  # (K, hidden 64) fp32 per request
    assert stats["image_pixel_bytes"] == sum(p.pixel_values.numel() * 4 for p in (prompts[1], prompts[3]))
    engine.abort("a")
    assert engine.stats()["image_embed_bytes"] == tokens_of["b"] * 64 * 4
    engine.drain()
    assert engine.stats()["image_embed_bytes"] == engine.stats()["image_pixel_bytes"] == 0


def test_refusals_name_the_problem(model, prompts, vlm):
    mm = prompts[0]
    evicting = engine_for(model, evict_budget=8)
    with pytest.raises(ValueError, match=r"token eviction \(evict_budget\) cannot take image requests"):
        evicting.add_request("x", mm, GREEDY)
    assert not evicting.requests
    evicting.add_request("t", prompts[2], GREEDY)  # text prompts still run there
    assert len(evicting.drain()["t"].outputs[0].token_ids) == GREEDY.max_tokens
    engine = engine_for(model)
    bad = MultimodalPrompt(mm.input_ids, mm.pixel_values[:-4], mm.image_grid_thw, mm.positions, mm.rope_delta, mm.image_rows)
    with pytest.raises(ValueError, match="pixel_values"):
        engine.add_request("x", bad, GREEDY)
    assert not engine.requests
    with pytest.raises(ValueError, match="image placeholder tokens .* but no images"):  # ran as text before
        engine.add_request("x", list(mm.input_ids), GREEDY)
    assert not engine.requests


def test_text_model_refuses_images(hf_checkpoint, prompts):
    text = LLMEngine(load_model(hf_checkpoint("qwen2", vocab_size=384)[0], "cpu"), None, EngineConfig(kv_cache_memory=1 << 22))
    with pytest.raises(ValueError, match="takes no images"):
        text.add_request("x", prompts[0], GREEDY)


def test_llm_chat_and_generate_take_pil_arrays_and_paths(vlm, tok, model, tmp_path):
    llm = LLM(vlm[0], device="cpu", kv_cache_memory=1 << 22, block_size=4)
    image = noise_image(56, 84, 4)
    image.save(tmp_path / "a.png")
    chats = [[{"role": "user", "content": [{"type": "image", "image": x}, {"type": "text", "text": "What is in the picture?"}]}]
             for x in (image, np.asarray(image), tmp_path / "a.png", str(tmp_path / "a.png"))]
    outs = llm.chat(chats, GREEDY)
    assert len({tuple(o.outputs[0].token_ids) for o in outs}) == 1
    from reasonrl.models.qwen2_5_vl import build_prompt

    mm = build_prompt(tok, chats[0], model.vlm_config, model.image_config)
    assert outs[0].prompt_ids == mm.input_ids
    hf = vlm[1]
    hf.generation_config.eos_token_id = None
    assert outs[0].outputs[0].token_ids == hf_generate(hf, mm, GREEDY.max_tokens)
    text = tok.apply_chat_template(chats[0], add_generation_prompt=True, tokenize=False)
    by_dict = llm.generate({"prompt": text, "images": [image]}, GREEDY)[0]
    assert by_dict.prompt_ids == mm.input_ids and by_dict.outputs[0].token_ids == outs[0].outputs[0].token_ids
    assert llm.generate(mm, GREEDY)[0].outputs[0].token_ids == outs[0].outputs[0].token_ids
    with pytest.raises(ValueError, match="1 image placeholder"):
        llm.generate({"prompt": text, "images": [image, image]}, GREEDY)


def test_llm_chat_reads_openai_image_url_parts(vlm, tok, model, tmp_path):
    """image_url parts were dropped: the chat ran text-only, even with a file that does not exist."""
    import base64
    import io

    llm = LLM(vlm[0], device="cpu", kv_cache_memory=1 << 22, block_size=4)
    image = noise_image(56, 84, 5)
    image.save(tmp_path / "a.png")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    data = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    def chat(part):
        return [{"role": "user", "content": [part, {"type": "text", "text": "What is in the picture?"}]}]

    urls = [chat({"type": "image_url", "image_url": {"url": u}}) for u in (str(tmp_path / "a.png"), data)]
    outs = llm.chat([chat({"type": "image", "image": image}), *urls], GREEDY)
    assert outs[0].prompt_ids == outs[1].prompt_ids == outs[2].prompt_ids != llm.chat(chat({"type": "text", "text": ""}),
                                                                                     GREEDY)[0].prompt_ids
    assert outs[0].outputs[0].token_ids == outs[1].outputs[0].token_ids == outs[2].outputs[0].token_ids
    with pytest.raises(FileNotFoundError, match="x.png does not exist"):
        llm.chat(chat({"type": "image_url", "image_url": {"url": str(tmp_path / "x.png")}}), GREEDY)
    with pytest.raises(ValueError, match="messages.0.content.0: image URL 'https://e.com/a.png': only local paths"):
        llm.chat(chat({"type": "image_url", "image_url": {"url": "https://e.com/a.png"}}), GREEDY)
    with pytest.raises(ValueError, match="messages.0.content.0: an image_url part is"):
        llm.chat(chat({"type": "image_url", "image_url": "a.png"}), GREEDY)


def test_a_failing_vision_pass_fails_its_request_alone(model, prompts, expected):
    """The tower runs inside the isolated step: a request whose images make it raise fails alone."""
    poisoned = prompts[0]
    poisoned = MultimodalPrompt(poisoned.input_ids, poisoned.pixel_values.clone(), poisoned.image_grid_thw,
                                poisoned.positions, poisoned.rope_delta, poisoned.image_rows)
    poisoned.pixel_values[0, 0] = 123.0
    engine = engine_for(model)
    encode = model.encode_images

    def fragile(pixel_values, grid):
        if (pixel_values[:, 0] == 123.0).any():
            raise RuntimeError("vision tower failed")
        return encode(pixel_values, grid)

    engine.images.model = type("Fragile", (), {"encode_images": staticmethod(fragile), "vlm_config": model.vlm_config})()
    outs = run(engine, {"bad": (poisoned, GREEDY, {}), **{str(i): (p, GREEDY, {}) for i, p in enumerate(prompts)}})
    assert "vision tower failed" in outs["bad"].error and outs["bad"].outputs[0].finish_reason == "error"
    assert tokens({k: v for k, v in outs.items() if k != "bad"}) == {str(i): e for i, e in enumerate(expected)}
    assert engine.stats()["image_requests"] == 0 and engine.block_manager.num_free == len(engine.block_manager.blocks)
