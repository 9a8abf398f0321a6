"""Sampler and request-level behaviour: filters, seeds, stops, limits, streaming, errors."""

import math

import pytest
import torch

from reasonrl.engine import LLM, LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.sampler import SamplingBatch, gumbel_noise, sample
from reasonrl.models import load_model


def batch(n, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0, steps=None):
    return SamplingBatch(
        temperature=torch.full((n,), temperature), top_k=torch.full((n,), top_k, dtype=torch.long),
        top_p=torch.full((n,), top_p), min_p=torch.full((n,), min_p),
        seeds=torch.full((n,), seed, dtype=torch.long) if steps is not None else torch.arange(n) + seed,
        steps=steps if steps is not None else torch.zeros(n, dtype=torch.long),
        any_filter=top_k > 0 or top_p < 1 or min_p > 0)


LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])


def draw(n, **kw):
    tokens, _, _ = sample(LOGITS.expand(n, -1), batch(n, **kw))
    return torch.bincount(tokens, minlength=len(LOGITS)).float()


def chi_square(counts, probs):
    expected = probs * counts.sum()
    keep = expected > 0
    return (((counts - expected) ** 2)[keep] / expected[keep]).sum().item()


def test_an_all_greedy_batch_needs_no_row_tensors_and_gives_the_same_tokens_and_logprobs():
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(0)) * 3
    rows = batch(5, temperature=0.0)
    for num_top in (0, 3):
        rows.num_top = num_top
        want = sample(logits, rows)  # the rows read back from their temperatures
        got = sample(logits, SamplingBatch.greedy(num_top))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])  # bit for bit
        assert (got[2] is None) == (want[2] is None) and (got[2] is None or all(map(torch.equal, got[2], want[2])))
    assert torch.equal(got[0], logits.argmax(-1))


def test_sampling_follows_the_softmax_distribution():
    # 20k draws over 6 categories: chi-square with 5 dof; 20.5 is the p = 0.001 critical value.
    for temperature in (1.0, 0.5):
        counts = draw(20000, temperature=temperature)
        assert chi_square(counts, (LOGITS / temperature).softmax(-1)) < 20.5


def test_top_k_top_p_min_p_restrict_the_support():
    probs = LOGITS.softmax(-1)  # [0.561, 0.206, 0.125, 0.076, 0.028, 0.004]
    assert (draw(4000, top_k=2)[2:] == 0).all()
    counts = draw(4000, top_p=0.7)  # 0.561 < 0.7 <= 0.561 + 0.206: keeps two tokens
    assert (counts[2:] == 0).all() and (counts[:2] > 0).all()
    counts = draw(4000, min_p=0.2)  # keeps p >= 0.2 * 0.561: three tokens
    assert (counts[(probs < 0.2 * probs[0])] == 0).all() and (counts[probs >= 0.2 * probs[0]] > 0).all()
    kept = probs[:2] / probs[:2].sum()
    assert chi_square(draw(20000, top_k=2)[:2], kept) < 10.8  # 1 dof, p = 0.001


def test_noise_is_a_pure_function_of_seed_step_and_token():
    seeds, steps = torch.tensor([1, 1, 2, 1]), torch.tensor([0, 1, 0, 0])
    g = gumbel_noise(seeds, steps, 1000)
    assert torch.equal(g[0], g[3]) and not torch.equal(g[0], g[1]) and not torch.equal(g[0], g[2])
    assert torch.equal(gumbel_noise(seeds[:1], steps[:1], 1000), g[:1])
    many = gumbel_noise(torch.arange(100), torch.arange(100), 1000)  # 100k draws: the mean's sd is about 0.001
    u = torch.exp(-torch.exp(-many.flatten()))  # back to uniforms: mean 1/2, variance 1/12
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002


def test_draws_of_different_seeds_and_steps_are_not_mirrored():
    """With one hash for seed and step, (seed a, step b) drew as (seed b, step a), and (s, s) always
    as the same noise: sample i and j of a request with n > 1 and seed 0 shared theirs."""
    seeds = torch.arange(8).repeat_interleave(8)
    steps = torch.arange(8).repeat(8)
    tokens = gumbel_noise(seeds, steps, 1000).argmax(-1).view(8, 8)  # uniform logits: the noise decides
    mirrored = sum(int(tokens[i, j] == tokens[j, i]) for i in range(8) for j in range(8) if i != j)
    assert mirrored <= 4 and len(set(tokens.diagonal().tolist())) > 4  # was 56 of 56, and one token on the diagonal


def test_top_p_is_taken_after_top_k_and_top_k_keeps_ties():
    """As vLLM and transformers: top-p over the distribution renormalised after top-k (the engine
    kept a fourth token at top_k 5, top_p 0.9, T 0.7 that both drop), and top-k keeps every token
    tied with the k-th."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    from reasonrl.engine.sampler import filter_logits

    logits = torch.tensor([[2.0, 1.3, 0.6, -0.1, -0.8, -1.5, -2.2, -2.9]]) / 0.7
    ours = filter_logits(logits, batch(1, top_k=5, top_p=0.9))
    theirs = TopPLogitsWarper(0.9)(None, TopKLogitsWarper(5)(None, logits.clone()))
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    ties = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(ties, batch(1, top_k=2))).tolist() == [[False, False, False, False, True]]


def test_greedy_and_reported_logprobs():
    tokens, lps, top = sample(LOGITS.expand(3, -1), SamplingBatch(
        torch.tensor([0.0, 0.0, 2.0]), torch.zeros(3, dtype=torch.long), torch.ones(3), torch.zeros(3),
        torch.arange(3), torch.zeros(3, dtype=torch.long), num_top=2))
    assert tokens[:2].tolist() == [0, 0]
    assert lps[0].item() == pytest.approx(LOGITS.log_softmax(-1)[0].item())
    assert lps[2].item() == pytest.approx((LOGITS / 2).log_softmax(-1)[tokens[2]].item())
    assert top[0][0].tolist() == [0, 1] and top[1][2].tolist() == pytest.approx((LOGITS / 2).log_softmax(-1)[:2].tolist())


# ---- requests through the engine -----------------------------------------------------------

@pytest.fixture(scope="module")
def llm(hf_checkpoint, tokenizer):
    path, _ = hf_checkpoint("qwen2", tokenizer=tokenizer)
    return LLM(path, kv_cache_memory=1 << 22, block_size=8)


def test_seeded_requests_reproduce_and_unseeded_differ(llm):
    p = SamplingParams(temperature=1.0, seed=11, max_tokens=16, ignore_eos=True)
    a, b = llm.generate(["hello there"] * 2, p)
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    c, d = llm.generate(["hello there"] * 2, SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True))
    assert c.outputs[0].token_ids != d.outputs[0].token_ids


def test_stop_token_ids_and_max_tokens(llm):
    free = llm.generate("the quick", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 12
    stop_at = free.token_ids[4]
    out = llm.generate("the quick", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                                   stop_token_ids=[stop_at]))[0].outputs[0]
    first = free.token_ids.index(stop_at)
    assert out.token_ids == free.token_ids[:first + 1] and out.finish_reason == "stop" and out.stop_reason == stop_at
    # the stop token's id is kept, its text is left out unless asked for (vLLM's rule; it was always kept)
    assert out.text == llm.tokenizer.decode(out.token_ids[:-1])
    kept = llm.generate("the quick", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop_token_ids=[stop_at],
                                                    include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text == llm.tokenizer.decode(out.token_ids) != out.text


def test_eos_stops_unless_ignored(llm):
    free = llm.generate("the quick", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0]
    saved, llm.engine.eos_ids = llm.engine.eos_ids, {free.token_ids[3]}
    try:
        out = llm.generate("the quick", SamplingParams(temperature=0, max_tokens=12))[0].outputs[0]
        ignored = llm.generate("the quick", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0]
    finally:
        llm.engine.eos_ids = saved
    first = free.token_ids.index(free.token_ids[3])
    assert out.token_ids == free.token_ids[:first + 1] and out.finish_reason == "stop"  # EOS kept in the ids
    assert out.text == llm.tokenizer.decode(out.token_ids[:-1])  # and out of the text, even if it is not special
    assert ignored.token_ids == free.token_ids


def test_stop_strings_cut_the_text(llm):
    free = llm.generate("the quick", SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))[0].outputs[0]
    text = free.text
    assert len(text) > 6
    stop = text[3:5]
    out = llm.generate("the quick", SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == text[:text.index(stop)]
    kept = llm.generate("the quick", SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop],
                                                    include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text == text[:text.index(stop) + len(stop)]
    assert out.token_ids == free.token_ids[:len(out.token_ids)] and len(out.token_ids) < len(free.token_ids)


def test_top_logprobs_and_text_match_token_ids(llm):
    out = llm.generate("hello", SamplingParams(temperature=0.8, seed=1, max_tokens=10, logprobs=3,
                                               ignore_eos=True))[0].outputs[0]
    assert len(out.top_logprobs) == 10 and all(len(t) == 3 for t in out.top_logprobs)
    for tok, lp, top in zip(out.token_ids, out.logprobs, out.top_logprobs):
        assert max(top.values()) >= lp - 1e-6
        if tok in top:
            assert top[tok] == pytest.approx(lp, abs=1e-6)
    assert out.text == llm.tokenizer.decode(out.token_ids)


def test_chat_uses_the_template(llm):
    out = llm.chat([{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_tokens=4))[0]
    expected = llm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert out.prompt_ids == expected


def test_streaming_reports_progress_every_step(hf_checkpoint):
    engine = LLMEngine(load_model(hf_checkpoint("qwen2")[0], "cpu"), None, EngineConfig(kv_cache_memory=1 << 22))
    engine.add_request("s", [1, 2, 3], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True), stream=True)
    lengths = []
    while engine.has_unfinished():
        lengths += [len(o.outputs[0].token_ids) for o in engine.step()]
    assert lengths == [1, 2, 3, 4, 5]


def test_bad_requests_name_the_problem(hf_checkpoint):
    engine = LLMEngine(load_model(hf_checkpoint("qwen2")[0], "cpu"), None,
                       EngineConfig(kv_cache_memory=1 << 22, max_model_len=64))
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("a", [], SamplingParams())
    with pytest.raises(ValueError, match="token id 999 is outside"):
        engine.add_request("a", [1, 999], SamplingParams())
    with pytest.raises(ValueError, match="max_model_len=64"):
        engine.add_request("a", list(range(64)), SamplingParams())
    with pytest.raises(ValueError, match="one log-prob per resumed token"):
        engine.add_request("a", [1], SamplingParams(), output_ids=[2, 3], output_logprobs=[-1.0])
    engine.add_request("a", [1], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="already running"):
        engine.add_request("a", [1], SamplingParams())
    for bad in (dict(temperature=-1), dict(top_p=0), dict(n=0), dict(max_tokens=0), dict(logprobs=50), dict(seed=-3)):
        with pytest.raises(ValueError, match=f"SamplingParams.{next(iter(bad))}"):
            SamplingParams(**bad)
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        LLMEngine(engine.model, None, EngineConfig(kv_cache_memory=1000, max_model_len=64))
    with pytest.raises(TypeError, match="unknown engine option"):
        EngineConfig.from_kwargs(max_seqs=3)


def test_sleep_frees_the_cache_and_wake_restores_it(hf_checkpoint):
    engine = LLMEngine(load_model(hf_checkpoint("qwen2")[0], "cpu"), None, EngineConfig(kv_cache_memory=1 << 20))
    before = engine.kv.allocated_bytes
    engine.add_request("a", [1, 2], SamplingParams(temperature=0, max_tokens=3))
    with pytest.raises(RuntimeError, match="in flight"):
        engine.sleep()
    engine.abort("a")
    engine.sleep()
    assert engine.kv.allocated_bytes == 0
    engine.wake()
    assert engine.kv.allocated_bytes == before
    engine.add_request("b", [1, 2], SamplingParams(temperature=0, max_tokens=3))
    while engine.has_unfinished():
        engine.step()
    assert math.isfinite(engine.stats()["kv_bytes_per_token"])


def test_a_request_resumed_with_all_its_tokens_reads_as_the_uninterrupted_one(llm):
    """Resubmitted with max_tokens response tokens it finishes at admission: its text lost the final
    flush of a character cut at the end ('' for what read '\ufffd'), and prompt_logprobs came back
    as Nones."""
    from reasonrl.engine.structured import StructuredOutput

    engine, prompt = llm.engine, llm.tokenizer.encode("emoji")
    cut = 0
    for max_tokens in range(1, 5):
        params = SamplingParams(temperature=0, max_tokens=max_tokens, structured=StructuredOutput(choice=["🙂🙂"]))
        full = llm.generate([prompt], params)[0].outputs[0]
        engine.add_request("again", prompt, params, output_ids=full.token_ids, output_logprobs=full.logprobs)
        again = engine.drain()["again"].outputs[0]
        assert again.text == full.text and again.finish_reason == "length", max_tokens
        cut += full.text.endswith("\ufffd")
    assert cut  # some max_tokens ends inside the emoji's bytes
    with pytest.raises(ValueError, match="prompt_logprobs cannot be computed"):
        engine.add_request("q", prompt, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1),
                           output_ids=[5], output_logprobs=[0.0])
