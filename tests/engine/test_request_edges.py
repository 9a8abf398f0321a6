"""Request options at their edges, each found by a review probe: a resumed request's top log-probs,
an integer logit bias, top_p = 1 next to a filtering neighbour, min_tokens against stop strings,
stop strings without text, the prefix-cache count of a request, and `LLM(path, tokenizer=...)`."""

import pytest
import torch

from reasonrl.engine import LLM, LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.sampler import SamplingBatch, filter_logits
from reasonrl.engine.sequence import Sequence
from reasonrl.engine.structured import StructuredOutput
from reasonrl.models import load_model
from reasonrl.models.tiny import make_checkpoint, make_tokenizer

CORPUS = ["The quick brown fox jumps over the lazy dog. 12 + 30 = 42.", "def add(a, b):\n    return a + b\n"] * 20


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok):
    return make_checkpoint(tmp_path_factory.mktemp("edges") / "m", "qwen2", tok, std=0.2, hidden_size=64, num_layers=2)


def engine(ckpt, tok=None, **kw):
    return LLMEngine(load_model(ckpt, "cpu"), tok, EngineConfig(**{"kv_cache_memory": 1 << 22, "block_size": 4, **kw}))


def run(eng, prompt, params, **kw):
    eng.add_request("r", prompt, params, **kw)
    return eng.drain()["r"]


def test_a_resumed_request_keeps_its_top_logprobs_aligned_with_its_tokens(ckpt):
    prompt = list(range(5, 20))
    params = SamplingParams(temperature=1.0, seed=11, max_tokens=10, ignore_eos=True, logprobs=2)
    full = run(engine(ckpt), prompt, params).outputs[0]
    resumed = run(engine(ckpt), prompt, params, output_ids=full.token_ids[:4], output_logprobs=full.logprobs[:4]).outputs[0]
    assert resumed.token_ids == full.token_ids
    assert len(resumed.top_logprobs) == len(resumed.token_ids)  # 6 of 10 before: entry i was token i + 4's
    assert resumed.top_logprobs[:4] == [{}] * 4
    for got, want in zip(resumed.top_logprobs[4:], full.top_logprobs[4:], strict=True):  # re-prefilled: float rounding
        assert got.keys() == want.keys() and all(abs(got[t] - want[t]) < 1e-4 for t in got)


def test_an_integer_logit_bias_applies(ckpt):
    out = run(engine(ckpt), [5, 6, 7], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logit_bias={9: 100})).outputs[0]
    assert out.finish_reason == "length" and out.token_ids == [9] * 5  # the request failed on an int64 bias before


def test_top_p_one_filters_nothing_whatever_the_neighbours_ask():
    """float32's cumulative sum reaches 1 before the tail of a large vocabulary: with top_p = 1 in a
    batch where another row filters (any_filter), the tail was dropped, and a seeded token depended
    on the batch it ran in."""
    logits = torch.randn(2, 152_064, generator=torch.Generator().manual_seed(0)) * 6
    batch = SamplingBatch(torch.ones(2), torch.tensor([0, 5]), torch.ones(2), torch.zeros(2), torch.zeros(2, dtype=torch.long),
                          torch.zeros(2, dtype=torch.long), any_filter=True)
    out = filter_logits(logits, batch)
    assert torch.equal(out[0], logits[0])  # about 135k tokens were dropped
    assert torch.isinf(out[1]).sum() == logits.shape[1] - 5


def test_min_tokens_holds_back_stop_strings_and_stop_strings_need_text(ckpt, tok):
    eng = engine(ckpt, tok)
    prompt = tok.encode("The quick brown fox")
    base = dict(temperature=1.0, seed=5, max_tokens=60, ignore_eos=True)
    text = run(eng, prompt, SamplingParams(**base)).outputs[0].text
    stop = text[10:13]
    early = run(eng, prompt, SamplingParams(**base, stop=[stop])).outputs[0]
    assert early.finish_reason == "stop" and len(early.token_ids) < 30
    held = run(eng, prompt, SamplingParams(**base, stop=[stop], min_tokens=30)).outputs[0]
    assert len(held.token_ids) >= 30  # ended at the early stop string before
    with pytest.raises(ValueError, match="stop strings .* need the output text, but detokenize=False"):
        eng.add_request("x", prompt, SamplingParams(stop=["ab"], detokenize=False))
    with pytest.raises(ValueError, match="this engine has no tokenizer"):
        engine(ckpt).add_request("x", prompt, SamplingParams(stop=["ab"]))


@pytest.mark.parametrize("stops", [["ed", "ken"], ["ken", "ed"]])
@pytest.mark.parametrize("include", [False, True])
def test_two_stop_strings_in_one_token_cut_at_the_earliest(stops, include):
    """A token's text ("kenized") holds two stop strings: the text is cut at the one that comes first in it,
    whatever their order in the list (the list's first won, and the text kept the other stop string)."""
    seq = Sequence(0, "r", 0, [1], SamplingParams(stop=stops, include_stop_str_in_output=include), seed=0)
    seq.text = "a text, tokenized"
    assert LLMEngine._stop_string(seq, len("kenized"))
    assert seq.stop_reason == "ken" and seq.text == ("a text, token" if include else "a text, to")


def test_the_prefix_cache_count_is_of_the_prompt_and_of_the_first_admission(ckpt):
    eng = engine(ckpt)
    prompt = list(range(5, 15))  # 10 tokens: two full blocks of 4
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    full = run(eng, prompt, params)
    assert full.num_cached_tokens == 0
    resumed = run(eng, prompt, params, output_ids=full.outputs[0].token_ids[:20], output_logprobs=full.outputs[0].logprobs[:20])
    assert resumed.num_cached_tokens == 10  # 28 before: the resumed output tokens' blocks counted too
    # preempted sequences find their own blocks when re-admitted: not what the request was served
    tight = engine(ckpt, kv_cache_memory=20 * 2 * 2 * 2 * 4 * 16 * 4, max_model_len=72)
    for i in range(6):
        tight.add_request(str(i), [20 + i] * (8 + i % 4), params)
    outs = tight.drain()
    assert tight.scheduler.num_preemptions > 0
    assert all(o.num_cached_tokens <= len(o.prompt_ids) for o in outs.values())


def test_llm_with_a_tokenizer_uses_it_everywhere(tmp_path, tok):
    path = make_checkpoint(tmp_path / "bare", "qwen2", None, vocab_size=tok.vocab_size, eos_token_ids=(tok.vocab_size - 1,),
                           hidden_size=64, num_layers=2)  # no tokenizer.json, another end-of-sequence id
    llm = LLM(path, tokenizer=tok, kv_cache_memory=1 << 22, block_size=4)
    assert llm.engine.eos_ids == set(tok.eos_token_ids)
    out = llm.generate("The quick", SamplingParams(temperature=0, max_tokens=8, structured=StructuredOutput(choice=["yes", "no"])))
    assert out[0].outputs[0].text in ("yes", "no")  # "structured outputs need the model's tokenizer" before


def test_a_request_finished_on_arrival_still_holds_its_id_until_stepped(ckpt):
    """A resumed request already at max_tokens finishes when added and waits for the next step to be
    returned: a second request under the same id was accepted, and both came back under it."""
    eng = engine(ckpt)
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    eng.add_request("r", [5, 6, 7], params, output_ids=[8, 9], output_logprobs=[-0.1, -0.2])
    with pytest.raises(ValueError, match="'r' is already running"):
        eng.add_request("r", [5, 6, 7], params)
    assert [o.request_id for o in eng.step()] == ["r"]
    eng.add_request("r", [5, 6, 7], params)  # returned: the id is free again


def test_the_prefix_cache_count_is_taken_when_an_admission_holds(ckpt):
    """A first attempt that failed for memory recorded the hit it would have had; by the real
    admission those blocks had been reclaimed, and the request reported 32 cached tokens for 0."""
    import random

    rng = random.Random(0)
    eng = engine(ckpt, kv_cache_memory=20 * 2 * 2 * 2 * 8 * 16 * 4, block_size=8, max_model_len=160)
    shared = [rng.randrange(3, 300) for _ in range(32)]  # 4 full blocks, cached once A is done
    run(eng, shared + [7], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    eng.add_request("R", [rng.randrange(3, 300) for _ in range(100)], SamplingParams(temperature=0, max_tokens=58, ignore_eos=True))
    eng.add_request("B", shared + [rng.randrange(3, 300) for _ in range(60)], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    b, served = eng.requests["B"].seqs[0], None
    while eng.has_unfinished():
        for out in eng.step():
            if out.request_id == "B" and out.finished:
                assert out.num_cached_tokens == served
        if served is None and b.status.name == "RUNNING":
            served = b.num_cached
    assert served is not None


def test_generate_leaves_nothing_behind_when_a_prompt_is_refused(ckpt, tok):
    """Prompts before a refused one stayed in the engine; the next generate then returned early and
    raised KeyError. An empty list of parameters silently meant the defaults."""
    llm = LLM(load_model(ckpt, "cpu"), tok, kv_cache_memory=1 << 22, max_model_len=64)
    params = SamplingParams(temperature=0, max_tokens=4)
    with pytest.raises(ValueError):
        llm.generate([[5, 6, 7], [8, 9], list(range(3, 70))], params)
    assert not llm.engine.requests
    assert [len(o.outputs[0].token_ids) for o in llm.generate([[5, 6, 7], [8, 9]], params)] == [4, 4]
    with pytest.raises(ValueError, match="got 0 SamplingParams for 2 prompts"):
        llm.generate([[5, 6, 7], [8, 9]], [])


def test_token_ids_as_numpy_or_torch_integers(ckpt):
    import numpy as np

    llm = LLM(ckpt, kv_cache_memory=1 << 22, block_size=4)
    greedy = SamplingParams(temperature=0, max_tokens=4)
    want = llm.generate([5, 6, 7], greedy)[0].outputs[0].token_ids
    for prompt in (list(np.array([5, 6, 7])), np.array([5, 6, 7]), torch.tensor([5, 6, 7]), (5, 6, 7)):
        [out] = llm.generate(prompt, greedy)  # one prompt, not three
        assert out.outputs[0].token_ids == want
    assert [o.outputs[0].token_ids for o in llm.generate(np.array([[5, 6, 7], [5, 6, 7]]), greedy)] == [want, want]
    with pytest.raises(ValueError, match="prompt token id 5.5 is not an integer"):
        llm.engine.add_request("x", [5, 5.5], greedy)
    with pytest.raises(ValueError, match="prompt token id 400 is outside the vocabulary"):
        llm.engine.add_request("x", np.array([5, 400]), greedy)
    llm.engine.sleep()
    with pytest.raises(RuntimeError, match="the engine is asleep"):
        llm.engine.add_request("x", [5, 6], greedy)
    llm.engine.wake()
    assert llm.generate([5, 6, 7], greedy)[0].outputs[0].token_ids == want
