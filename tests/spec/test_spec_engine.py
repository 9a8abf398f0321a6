"""Speculative decoding inside the engine: lossless (fp32, CPU), batched, with every engine feature.

Greedy speculative output must be token-identical to plain greedy decoding. Two drafts are used:
random drafts on random checkpoints of each family (few tokens accepted: the fallback and
rejection paths) and the shipped draft distilled against the demo policy (several tokens accepted
per step: the cache compaction path)."""

from pathlib import Path

import pytest
import torch

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.models.loader import load_model
from reasonrl.models.model import DecoderLM
from reasonrl.models.tiny import init_weights, tiny_config
from reasonrl.models.tokenizer import Tokenizer

DEMO = Path(__file__).resolve().parents[2] / "reasonrl" / "demo"


def run(engine, requests):
    """requests: {rid: (prompt, params, kwargs)} -> {rid: RequestOutput}"""
    for rid, (prompt, params, kw) in requests.items():
        engine.add_request(rid, prompt, params, **kw)
    return engine.drain()


def greedy_requests(prompts, max_tokens: int = 48):
    """{rid: (prompt, greedy params, {})} for `run`."""
    return {str(i): (p, SamplingParams(temperature=0, max_tokens=max_tokens), {}) for i, p in enumerate(prompts)}


def plain_run(policy_model, reqs) -> dict:
    """What plain decoding (no draft) outputs for `reqs`: the reference every speculative run must match."""
    return run(engine(policy_model, max_model_len=256), reqs)


def random_prompts(n, vocab, seed=0, longest=40):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(n_),), generator=g).tolist() for n_ in torch.randint(2, longest, (n,), generator=g)]


@pytest.fixture(scope="module")
def demo():
    policy = load_model(DEMO / "policy", "cpu")
    tok = Tokenizer.from_dir(DEMO / "policy")
    draft = DraftHead.load(DEMO / "draft", policy)
    from reasonrl.envs.registry import load_environment

    prompts = [tok.apply_chat_template(p.messages, add_generation_prompt=True)
               for p in load_environment("sums:").prompts(n=24, seed=5, split="eval")]
    return policy, tok, draft, prompts


def engine(model, draft=None, tokenizer=None, **kw):
    """Trees of the configured size every step unless a test asks for the adaptive policy (whose
    choice follows the clock; tests/spec/test_adaptive.py). A tokenizer for tests with stop strings."""
    kw.setdefault("kv_cache_memory", 1 << 22)
    kw.setdefault("draft_adaptive", False)
    kw.setdefault("block_size", 4)
    return LLMEngine(model, tokenizer, EngineConfig(**kw), draft=draft)


def assert_same(plain, spec, logprob_tol=1e-4):
    for rid in plain:
        a, b = plain[rid].outputs[0], spec[rid].outputs[0]
        assert a.token_ids == b.token_ids, rid
        assert a.finish_reason == b.finish_reason
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=logprob_tol, rtol=0)


def assert_abort_resume_exact(e, reqs, plain, steps):
    """Abort the request with the longest output after `steps` steps and resume it from its partial
    output: the tokens must be the uninterrupted run's."""
    longest = max(plain, key=lambda rid: len(plain[rid].outputs[0].token_ids))
    prompt, params, _ = reqs[longest]
    e.add_request("r", prompt, params)
    for _ in range(steps):
        e.step()
    part = e.abort("r").outputs[0]
    assert 0 < len(part.token_ids) < len(plain[longest].outputs[0].token_ids)
    resumed = run(e, {"r": (prompt, params, {"output_ids": part.token_ids, "output_logprobs": part.logprobs})})
    assert resumed["r"].outputs[0].token_ids == plain[longest].outputs[0].token_ids


@pytest.mark.parametrize("family", ["qwen2", "llama", "qwen3"])
def test_greedy_with_a_random_draft_equals_plain_greedy(family):
    model = init_weights(DecoderLM(tiny_config(family, vocab_size=32, hidden_size=64, eos_token_ids=(1,))), std=0.3, seed=1)
    draft = init_weights(DraftHead(model), std=0.3, seed=2)
    reqs = {str(i): (p, SamplingParams(temperature=0, max_tokens=int(m)), {})
            for i, (p, m) in enumerate(zip(random_prompts(16, 32, seed=3), torch.randint(1, 48, (16,)).tolist()))}
    plain = run(engine(model), reqs)
    spec_engine = engine(model, draft, draft_top_k=4, draft_depth=4, draft_tokens=10)
    spec = run(spec_engine, reqs)
    assert_same(plain, spec)
    stats = spec_engine.stats()
    assert stats["spec_rounds"] > 0 and stats["kv_blocks_used"] == 0  # every reserved block came back


def test_greedy_with_the_distilled_draft_equals_plain_greedy_and_accepts_several_tokens(demo):
    policy, _, draft, prompts = demo
    reqs = {str(i): (p, SamplingParams(temperature=0, max_tokens=96), {}) for i, p in enumerate(prompts)}
    plain = run(engine(policy, max_model_len=256), reqs)
    spec_engine = engine(policy, draft, max_model_len=256)
    spec = run(spec_engine, reqs)
    assert_same(plain, spec)
    assert spec_engine.stats()["spec_accepted_length"] > 2.5  # the compaction path runs many times


def test_mixed_batches_chunked_prefill_stop_strings_and_opt_out(demo):
    policy, tok, draft, prompts = demo
    reqs = {}
    for i, p in enumerate(prompts[:12]):
        params = SamplingParams(temperature=0, max_tokens=64, speculative=i % 3 != 0, stop=["="] if i % 4 == 1 else [],
                                logprobs=2 if i % 5 == 2 else 0)
        reqs[str(i)] = (p, params, {})
    kw = dict(max_model_len=256, max_num_batched_tokens=48, block_size=8)  # long prompts are chunked
    plain_engine, spec_engine = engine(policy, tokenizer=tok, **kw), engine(policy, draft, tokenizer=tok, **kw)
    plain, spec = run(plain_engine, reqs), run(spec_engine, reqs)
    assert_same(plain, spec)
    for rid in plain:
        assert plain[rid].outputs[0].text == spec[rid].outputs[0].text
        if plain[rid].outputs[0].top_logprobs:
            for a, b in zip(plain[rid].outputs[0].top_logprobs, spec[rid].outputs[0].top_logprobs):
                assert a.keys() == b.keys()


def test_preemption_prefix_cache_and_abort_resume_stay_exact(demo):
    policy, _, draft, prompts = demo
    shared = prompts[0]
    reqs = {str(i): (shared if i % 2 else p, SamplingParams(temperature=0, max_tokens=80), {})
            for i, p in enumerate(prompts[:16])}
    plain = run(engine(policy, max_model_len=256), reqs)
    # 33 blocks of 8 tokens (one sequence of max_model_len needs 32) cannot hold 16 growing
    # sequences: preemption and recompute happen, and draft trees find no room at times
    c = policy.config
    small = engine(policy, draft, max_model_len=256, block_size=8,
                   kv_cache_memory=33 * c.num_layers * 2 * 8 * c.num_kv_heads * c.head_dim * 4)
    spec = run(small, reqs)
    assert small.stats()["preemptions"] > 0
    assert_same(plain, spec)
    assert_abort_resume_exact(engine(policy, draft, max_model_len=256), reqs, plain, steps=3)


def test_residual_rule_sampled_tokens_follow_the_target_distribution():
    """The residual tree rule (draft_sampling="residual"): 10k samples of three tokens. The first is sampled plainly after the prefill; the second is
    decided at a tree's root (sibling acceptance or residual), the third at an accepted draft or as
    the bonus. Chi-square of each, conditioned on the most frequent prefix, against the target. A
    random target keeps the distributions spread out (a trained one is too sure to tell a biased
    rule apart); a wide tree makes likely tokens candidates, so acceptance decides most tokens."""
    from test_tree_verify import chi_square_p

    policy = init_weights(DecoderLM(tiny_config(vocab_size=32, hidden_size=64)), std=0.25, seed=4)
    draft = init_weights(DraftHead(policy), std=0.3, seed=5)
    prompt, n = [3, 9, 4, 17, 8], 10000
    params = SamplingParams(n=n, temperature=1.0, max_tokens=3, seed=11, ignore_eos=True, detokenize=False)
    spec_engine = engine(policy, draft, kv_cache_memory=1 << 26, max_num_seqs=512, draft_top_k=12, draft_tokens=24,
                         draft_sampling="residual")
    outs = [o.token_ids for o in run(spec_engine, {"s": (prompt, params, {})})["s"].outputs]
    assert spec_engine.stats()["spec_rounds"] > 0.9 * n  # the second token came from a tree (bar a few over the step budget)
    prefix = []
    for position in range(3):
        group = [o for o in outs if o[:position] == prefix]
        with torch.no_grad():
            p = policy.compute_logits(policy.forward_padded(torch.tensor([prompt + prefix])))[0, -1].softmax(-1)
        counts = torch.bincount(torch.tensor([o[position] for o in group]), minlength=p.shape[0]).float()
        assert len(group) > 500 and chi_square_p(counts, p) > 0.001, position
        prefix.append(int(counts.argmax()))


def test_a_kv_format_that_cannot_move_slots_is_refused():
    from reasonrl.engine.kv import FORMATS
    from reasonrl.engine.kv.dense import DenseKV

    class Frozen(DenseKV):  # declares the capability away, whatever methods it inherits
        name = "frozen"
        supports_speculation = False

    FORMATS["frozen"] = Frozen
    try:
        model = init_weights(DecoderLM(tiny_config(vocab_size=32)))
        with pytest.raises(ValueError, match="'frozen' cannot"):
            engine(model, DraftHead(model), kv_format="frozen")
    finally:
        del FORMATS["frozen"]


@pytest.mark.parametrize("rule", ["coupled", "residual"])
def test_sampled_speculative_logprobs_are_the_targets(demo, rule):
    """RL trains on these: each reported log-prob must be the target's log_softmax(logits / T)."""
    policy, _, draft, prompts = demo
    e = engine(policy, draft, max_model_len=256, draft_sampling=rule)
    outs = run(e, {str(i): (p, SamplingParams(temperature=0.8, max_tokens=48, seed=i), {}) for i, p in enumerate(prompts[:6])})
    assert e.stats()["spec_accepted_length"] > 1.5
    for i, p in enumerate(prompts[:6]):
        out = outs[str(i)].outputs[0]
        with torch.no_grad():
            logits = policy.compute_logits(policy.forward_padded(torch.tensor([p + out.token_ids])))[0, len(p) - 1:-1]
        expected = (logits / 0.8).log_softmax(-1).gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(out.logprobs), expected, atol=1e-4, rtol=1e-4)


def test_llm_takes_a_draft_path_like_any_engine_option():
    from reasonrl.engine import LLM

    llm = LLM(DEMO / "policy", draft=str(DEMO / "draft"), draft_depth=3, max_model_len=256, kv_cache_memory=1 << 24)
    out = llm.chat([{"role": "user", "content": "3 + 4 + 5"}], SamplingParams(temperature=0, max_tokens=32))
    assert out[0].outputs[0].token_ids and llm.engine.stats()["spec_rounds"] > 0
    assert llm.engine.speculator.config.depth == 3


def test_coupled_sampling_is_token_identical_to_plain_sampling_and_survives_abort_resume(demo):
    """The default rule accepts a draft only when it is the token plain sampling draws with the same
    seed: sampled output equals plain sampled output, whatever the tree size, budget or batch."""
    policy, _, draft, prompts = demo
    reqs = {str(i): (p, SamplingParams(temperature=1.0, top_p=0.95, max_tokens=64, seed=100 + i), {})
            for i, p in enumerate(prompts[:12])}
    plain = run(engine(policy, max_model_len=256), reqs)
    for kw in ({}, {"draft_tokens": 4, "draft_depth": 2}, {"max_num_batched_tokens": 40}):
        e = engine(policy, draft, max_model_len=256, **kw)
        assert_same(plain, run(e, reqs))
        assert e.stats()["spec_accepted_length"] > 1.3
    assert_abort_resume_exact(engine(policy, draft, max_model_len=256), reqs, plain, steps=2)


def test_draft_trees_do_not_push_prompts_out_of_the_prefix_cache(demo):
    """Blocks reserved for a tree and freed after it cached nothing: they are reused first, so a
    prompt seen before stays cached as long as it would without speculation."""
    policy, _, draft, prompts = demo
    c = policy.config
    cached = {}
    for name, d in (("plain", None), ("spec", draft)):
        e = engine(policy, d, max_model_len=256, block_size=4,
                   kv_cache_memory=100 * c.num_layers * 2 * 4 * c.num_kv_heads * c.head_dim * 4)
        greedy = SamplingParams(temperature=0, max_tokens=48)
        run(e, {"a": (prompts[0], greedy, {})})
        for i in range(1, 6):
            run(e, {str(i): (prompts[i], greedy, {})})
        cached[name] = run(e, {"again": (prompts[0], greedy, {})})["again"].num_cached_tokens
    assert cached["plain"] > 0 and cached["spec"] == cached["plain"]


def test_samples_served_from_the_prefix_cache_draft_with_their_whole_prompt(demo):
    """n > 1 samples of a prompt (GRPO groups) hit each other's cached blocks; the draft takes the
    cached blocks' features, so they accept as many tokens as with prefix caching off."""
    policy, _, draft, prompts = demo
    accepted = {}
    for caching in (False, True):
        e = engine(policy, draft, max_model_len=256, enable_prefix_caching=caching)
        run(e, {str(i): (p, SamplingParams(n=4, temperature=1.0, max_tokens=48, seed=i), {})
                for i, p in enumerate(prompts[:6])})
        accepted[caching] = e.stats()["spec_accepted_length"]
    assert accepted[True] > 0.95 * accepted[False]
