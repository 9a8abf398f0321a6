"""Token-exact properties of the engine (fp32, CPU): parity with transformers and with our own
training forward, batch invariance, abort/resume and preemption equivalence."""

import pytest
import torch

from reasonrl.engine import LLM, LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.models import load_model

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
SEEDED = SamplingParams(temperature=1.0, seed=1234, max_tokens=24, ignore_eos=True)


def prompts(n, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(L),), generator=g).tolist() for L in torch.randint(2, 40, (n,), generator=g)]


def run(engine, requests):
    """requests: {rid: (prompt, params, kwargs)} -> {rid: RequestOutput}"""
    for rid, (prompt, params, kw) in requests.items():
        engine.add_request(rid, prompt, params, **kw)
    return engine.drain()


def engine_for(path, **kw):
    kw.setdefault("kv_cache_memory", 1 << 22)
    kw.setdefault("block_size", 4)
    return LLMEngine(load_model(path, "cpu"), None, EngineConfig(**kw))


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_greedy_matches_transformers_generate(hf_checkpoint, family):
    path, ref = hf_checkpoint(family)
    ps = prompts(6, seed=1)
    outs = LLM(path, kv_cache_memory=1 << 22, block_size=4).generate(ps, GREEDY)
    for p, out in zip(ps, outs):
        expected = ref.generate(torch.tensor([p]), max_new_tokens=24, min_new_tokens=24, do_sample=False,
                                pad_token_id=0)[0, len(p):].tolist()
        assert out.outputs[0].token_ids == expected


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_engine_logprobs_equal_training_forward(hf_checkpoint, temperature):
    path, _ = hf_checkpoint("qwen2", hidden_size=112, num_attention_heads=14, num_key_value_heads=2)
    model = load_model(path, "cpu")
    engine = LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 22, block_size=4))
    ps = prompts(4, seed=2)
    params = SamplingParams(temperature=temperature, seed=7, max_tokens=20, ignore_eos=True)
    outs = run(engine, {str(i): (p, params, {}) for i, p in enumerate(ps)})
    for i, p in enumerate(ps):
        out = outs[str(i)].outputs[0]
        ids = torch.tensor([p + out.token_ids])
        with torch.no_grad():
            logits = model.compute_logits(model.forward_padded(ids))[0, len(p) - 1:-1] / temperature
        expected = logits.log_softmax(-1).gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]
        # fp32 paged attention vs one padded forward: rounding only (log-probs here reach about -10)
        torch.testing.assert_close(torch.tensor(out.logprobs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_batch_invariance(hf_checkpoint, params):
    path, _ = hf_checkpoint("llama")
    ps = prompts(12, seed=3)
    alone = run(engine_for(path), {"x": (ps[0], params, {})})["x"].outputs[0]
    crowd = {str(i): (p, params if i == 0 else SamplingParams(temperature=0.9, max_tokens=5 + i)) for i, p in enumerate(ps)}
    batched = run(engine_for(path, max_num_batched_tokens=64), {k: (p, q, {}) for k, (p, q) in crowd.items()})["0"].outputs[0]
    assert batched.token_ids == alone.token_ids
    torch.testing.assert_close(torch.tensor(batched.logprobs), torch.tensor(alone.logprobs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
@pytest.mark.parametrize("k", [1, 9])
def test_abort_then_resume_equals_uninterrupted(hf_checkpoint, params, k):
    path, _ = hf_checkpoint("qwen3", head_dim=32)
    ps = prompts(3, seed=4)
    full = run(engine_for(path), {str(i): (p, params, {}) for i, p in enumerate(ps)})

    engine = engine_for(path)
    for i, p in enumerate(ps):
        engine.add_request(str(i), p, params)
    while min(len(s.output_ids) for r in engine.requests.values() for s in r.seqs) < k:
        engine.step()
    partial = {rid: out.outputs[0] for rid, out in ((r, engine.abort(r)) for r in list(engine.requests))}
    assert all(o.finish_reason == "abort" and len(o.token_ids) >= k for o in partial.values())
    assert engine.block_manager.num_free == len(engine.block_manager.blocks)  # abort frees every block

    resumed = run(engine, {rid: (ps[int(rid)], SamplingParams(**{**_fields(params), "seed": o.seed}),
                                 {"output_ids": o.token_ids, "output_logprobs": o.logprobs})
                           for rid, o in partial.items()})
    for rid, out in full.items():
        got = resumed[rid].outputs[0]
        assert got.token_ids == out.outputs[0].token_ids
        torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(out.outputs[0].logprobs), atol=1e-5, rtol=0)
        assert len(got.token_ids) == params.max_tokens  # max_tokens counts the resumed tokens


def _fields(params):
    return {f: getattr(params, f) for f in params.__slots__}


def test_resumed_logprobs_are_kept_not_recomputed(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    engine = engine_for(path)
    prefix, marks = [5, 6, 7], [-0.125, -0.25, -0.5]  # deliberately not what the model would say
    out = run(engine, {"r": ([1, 2, 3], GREEDY, {"output_ids": prefix, "output_logprobs": marks})})["r"].outputs[0]
    assert out.token_ids[:3] == prefix and out.logprobs[:3] == marks
    assert len(out.token_ids) == GREEDY.max_tokens


def test_resume_at_the_limit_finishes_as_truncated(hf_checkpoint):
    engine = engine_for(hf_checkpoint("qwen2")[0])
    p = SamplingParams(temperature=0, max_tokens=3)
    out = run(engine, {"r": ([1, 2], p, {"output_ids": [4, 5, 6], "output_logprobs": [-1.0] * 3})})["r"]
    assert out.outputs[0].finish_reason == "length" and out.outputs[0].token_ids == [4, 5, 6]


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_preemption_under_tiny_kv_budget_gives_identical_outputs(hf_checkpoint, params):
    path, _ = hf_checkpoint("llama")
    ps = prompts(8, seed=5)
    reqs = {str(i): (p, params, {}) for i, p in enumerate(ps)}
    roomy = run(engine_for(path), reqs)
    # 18 blocks of 4 tokens: one sequence (<= 40 + 24 tokens) fits, eight do not
    block_bytes = 2 * 2 * 4 * 2 * 16 * 4
    tight = engine_for(path, kv_cache_memory=18 * block_bytes, max_model_len=72)
    squeezed = run(tight, reqs)
    assert tight.scheduler.num_preemptions > 0
    for rid in reqs:
        assert squeezed[rid].outputs[0].token_ids == roomy[rid].outputs[0].token_ids
        torch.testing.assert_close(torch.tensor(squeezed[rid].outputs[0].logprobs),
                                   torch.tensor(roomy[rid].outputs[0].logprobs), atol=1e-5, rtol=0)


def test_chunked_prefill_and_prefix_cache_do_not_change_outputs(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    ps = prompts(5, seed=6)
    shared = ps[0] * 3  # long prompt, reused
    reqs = {str(i): (p, GREEDY, {}) for i, p in enumerate([shared] + ps)}
    plain = run(engine_for(path, enable_prefix_caching=False), reqs)
    engine = engine_for(path, max_num_batched_tokens=7)  # every prompt is prefilled in chunks
    chunked = run(engine, reqs)
    again = run(engine, {"again": (shared, GREEDY, {})})["again"]
    assert again.num_cached_tokens >= len(shared) - 4  # all full blocks came from the cache
    assert again.outputs[0].token_ids == plain["0"].outputs[0].token_ids
    for rid in reqs:
        assert chunked[rid].outputs[0].token_ids == plain[rid].outputs[0].token_ids


def test_n_samples_share_the_prompt_blocks(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    engine = engine_for(path)
    prompt = prompts(1, seed=7)[0] * 2
    engine.add_request("r", prompt, SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=8, ignore_eos=True))
    engine.step()  # one step prefills all four: the siblings reuse the blocks the first one fills
    tables = [s.block_table for s in engine.requests["r"].seqs]
    full = len(prompt) // 4
    assert all(t[:full] == tables[0][:full] for t in tables)
    out = run(engine, {})  # drain
    seqs = out["r"].outputs
    assert len({tuple(s.token_ids) for s in seqs}) > 1  # different seeds, different samples
    assert [s.seed for s in seqs] == [3, 4, 5, 6]
