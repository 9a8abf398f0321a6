"""Prompt log-probs (SamplingParams.prompt_logprobs): each prompt token's log-prob under the model,
computed at prefill, equal to a training forward's in fp32 whatever the chunking, the prefix cache
or the batch."""

import pytest
import torch

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.sampling_params import ParamError
from reasonrl.models import load_model

from test_engine_exactness import prompts, run


@pytest.fixture(scope="module")
def model(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2", hidden_size=112, num_attention_heads=14, num_key_value_heads=2)
    return load_model(path, "cpu")


def expected(model, prompt, k=0):
    with torch.no_grad():
        logprobs = model.compute_logits(model.forward_padded(torch.tensor([prompt])))[0, :-1].log_softmax(-1)
    values = logprobs.gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]
    return values, (logprobs.topk(k, dim=-1) if k else None)


def engine(model, **kw):
    return LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 22, block_size=4, **kw))


@pytest.mark.parametrize("chunk", [None, 7])  # one prefill step, or chunks of 7 tokens that cut prompts anywhere
def test_prompt_logprobs_equal_a_training_forward(model, chunk):
    eng = engine(model, **({"max_num_batched_tokens": chunk, "max_num_seqs": 4} if chunk else {}))
    ps = prompts(5, seed=3)
    params = SamplingParams(temperature=0.8, seed=1, max_tokens=3, prompt_logprobs=3)
    outs = run(eng, {str(i): (p, params, {}) for i, p in enumerate(ps)})
    for i, p in enumerate(ps):
        out = outs[str(i)]
        assert out.prompt_logprobs[0] is None and out.prompt_top_logprobs[0] is None
        values, top = expected(model, p, 3)
        torch.testing.assert_close(torch.tensor(out.prompt_logprobs[1:]), values, atol=1e-5, rtol=1e-5)
        for pos, tops in enumerate(out.prompt_top_logprobs[1:]):
            assert list(tops) == top.indices[pos].tolist()
            torch.testing.assert_close(torch.tensor(list(tops.values())), top.values[pos], atol=1e-5, rtol=1e-5)


def test_a_cached_prefix_is_computed_again_for_prompt_logprobs(model):
    eng = engine(model)
    p = prompts(1, seed=4)[0] + list(range(40))  # several full blocks the first request caches
    run(eng, {"warm": (p, SamplingParams(max_tokens=1), {})})
    out = run(eng, {"r": (p, SamplingParams(max_tokens=1, prompt_logprobs=0), {})})["r"]
    again = run(eng, {"plain": (p, SamplingParams(max_tokens=1), {})})["plain"]
    assert out.num_cached_tokens == 0 and again.num_cached_tokens > 0  # the cache holds it; this request did not read it
    assert None not in out.prompt_logprobs[1:] and out.prompt_top_logprobs is None
    torch.testing.assert_close(torch.tensor(out.prompt_logprobs[1:]), expected(model, p)[0], atol=1e-5, rtol=1e-5)


def test_without_prompt_logprobs_outputs_carry_none_and_n_samples_share_one_list(model):
    eng = engine(model)
    p = prompts(1, seed=5)[0]
    outs = run(eng, {"a": (p, SamplingParams(max_tokens=2), {}),
                     "b": (p, SamplingParams(n=3, seed=2, max_tokens=2, prompt_logprobs=1), {})})
    assert outs["a"].prompt_logprobs is None and outs["a"].prompt_top_logprobs is None
    assert len(outs["b"].prompt_logprobs) == len(p) and len(outs["b"].outputs) == 3


def test_bad_prompt_logprobs_is_refused_naming_the_field():
    for bad in (-1, 21, 1.5, True):
        with pytest.raises(ParamError, match="prompt_logprobs"):
            SamplingParams(prompt_logprobs=bad)
