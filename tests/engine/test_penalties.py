"""Logit adjustments (engine/penalties.py): greedy decoding with them equals a reference decode that
applies the documented formulas to a training forward's logits, in fp32."""

import pytest
import torch

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.sampling_params import ParamError
from reasonrl.models import load_model

from test_engine_exactness import prompts, run


@pytest.fixture(scope="module")
def model(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    return load_model(path, "cpu")


def reference(model, prompt, steps, presence=0.0, frequency=0.0, repetition=1.0, bias=None):
    out = []
    for _ in range(steps):
        with torch.no_grad():
            row = model.compute_logits(model.forward_padded(torch.tensor([prompt + out])))[0, -1].float()
        for t, b in (bias or {}).items():  # vLLM's order: the bias, then repetition, frequency, presence
            row[t] += b
        for t in set(prompt) | set(out):
            row[t] = row[t] / repetition if row[t] > 0 else row[t] * repetition
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=row.shape[0]) if out else torch.zeros_like(row)
        row = row - frequency * counts - presence * (counts > 0)
        out.append(int(row.argmax()))
    return out


@pytest.mark.parametrize("kw", [dict(frequency=1.5), dict(presence=2.0), dict(repetition=1.8),
                                dict(presence=-1.0, frequency=0.5, repetition=1.3), dict(bias={7: 6.0, 9: -50.0}),
                                dict(bias={7: 3.0, 9: 2.0}, repetition=2.0, presence=0.5, frequency=0.25)])
def test_greedy_with_adjustments_equals_the_reference(model, kw):
    eng = LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 22, block_size=4))
    ps = prompts(3, seed=8)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, presence_penalty=kw.get("presence", 0.0),
                            frequency_penalty=kw.get("frequency", 0.0), repetition_penalty=kw.get("repetition", 1.0),
                            logit_bias=kw.get("bias", {}))
    outs = run(eng, {str(i): (p, params, {}) for i, p in enumerate(ps)})
    plain = run(eng, {f"p{i}": (p, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True), {}) for i, p in enumerate(ps)})
    for i, p in enumerate(ps):
        assert outs[str(i)].outputs[0].token_ids == reference(model, p, 10, **kw)
    assert any(outs[str(i)].outputs[0].token_ids != plain[f"p{i}"].outputs[0].token_ids for i in range(3))


def test_a_biased_token_is_penalised_for_repeating_as_in_transformers(hf_checkpoint):
    """transformers applies a sequence bias before the repetition penalty (vLLM too): the bias
    was added after it, so a biased token escaped the penalty and repeated forever."""
    path, hf = hf_checkpoint("qwen2", initializer_range=0.05)  # flat logits: a bias of a few units decides
    eng = LLMEngine(load_model(path, "cpu"), None, EngineConfig(kv_cache_memory=1 << 22, block_size=4))
    bias = {5: 3.0, 77: 2.0}
    for i, p in enumerate(prompts(3, seed=4)):
        ours = run(eng, {"r": (p, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, repetition_penalty=2.0,
                                                 logit_bias=bias), {})})["r"].outputs[0].token_ids
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=12,
                                 do_sample=False, eos_token_id=None, pad_token_id=0, repetition_penalty=2.0,
                                 sequence_bias={(k,): v for k, v in bias.items()})
        assert ours == theirs[0, len(p):].tolist(), i


def test_min_tokens_holds_back_end_of_sequence(model):
    eng = LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 22, block_size=4))
    eos = 5
    eng.eos_ids.add(eos)  # the random checkpoint declares none; the runner shares the engine's set
    p = prompts(1, seed=9)[0]
    out = run(eng, {"r": (p, SamplingParams(temperature=0, max_tokens=20, min_tokens=5, logit_bias={eos: 100.0}), {})})
    o = out["r"].outputs[0]
    assert len(o.token_ids) == 6 and o.token_ids[-1] == eos and eos not in o.token_ids[:5]
    assert o.finish_reason == "stop" and o.stop_reason is None  # end-of-sequence: no stop reason, as vLLM says


@pytest.mark.parametrize("field,value", [("presence_penalty", 2.5), ("frequency_penalty", float("nan")),
                                         ("repetition_penalty", 0.0), ("min_tokens", 300), ("logit_bias", {1: 101.0}),
                                         ("logit_bias", {-1: 1.0})])
def test_out_of_range_adjustments_are_refused_naming_the_field(field, value):
    with pytest.raises(ParamError, match=field):
        SamplingParams(max_tokens=256, **{field: value})
