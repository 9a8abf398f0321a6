"""Structured outputs in the engine (engine/grammar.py): every output a random model produces under a
constraint is valid under it, batched with free requests, through abort/resume and with a draft head
configured."""

import json
import random
import re
import sys
from pathlib import Path

import jsonschema
import pytest

import reasonrl.demo
from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.grammar import Grammars
from reasonrl.engine.sampling_params import ParamError
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.engine.structured import StructuredOutput

DEMO = Path(reasonrl.demo.__file__).parent
ENGINE = dict(device="cpu", kv_cache_memory=1 << 23, block_size=8, max_model_len=1024, max_num_seqs=64)


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """A small bounded JSON schema: every instance has a bounded length, so an output always ends."""
    kinds = ["integer", "boolean", "enum", "string", "null", "array", "object", "anyOf"]
    kind = rng.choice(kinds if depth < 2 else kinds[:5])
    if kind == "integer":
        lo = rng.randint(-50, 50)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 500)}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "null":
        return {"type": "null"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "a b", "x\"y", "ünï"], rng.randint(1, 4))}
    if kind == "string":
        s = {"type": "string", "maxLength": rng.randint(0, 8)}
        if rng.random() < 0.3:
            s = {"type": "string", "pattern": "^[a-z]{1,4}[0-9]?$"}
        return s
    if kind == "array":
        lo = rng.randint(0, 2)
        return {"type": "array", "items": random_schema(rng, depth + 1), "minItems": lo, "maxItems": lo + rng.randint(0, 3)}
    if kind == "anyOf":
        return {"anyOf": [random_schema(rng, depth + 1), random_schema(rng, depth + 1)]}
    names = rng.sample(["id", "name", "tags", "ok", "score", "child", "when"], rng.randint(1, 4))
    return {"type": "object", "properties": {n: random_schema(rng, depth + 1) for n in names},
            "required": [n for n in names if rng.random() < 0.7], "additionalProperties": False}


@pytest.fixture(scope="module")
def engine():
    return LLMEngine.from_pretrained(DEMO / "policy", **ENGINE)


def prompt(engine, text="Answer in JSON."):
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": text}])


def test_random_schemas_always_give_valid_json_batched_with_free_requests(engine):
    rng = random.Random(0)
    schemas = [random_schema(rng) for _ in range(36)]
    for i, schema in enumerate(schemas):  # greedy and sampled, all in one continuous batch
        params = SamplingParams(max_tokens=700, temperature=0 if i % 3 == 0 else 1.0, seed=i,
                                structured=StructuredOutput(json=schema))
        engine.add_request(f"s{i}", prompt(engine), params)
        engine.add_request(f"free{i}", prompt(engine), SamplingParams(max_tokens=20, seed=i, ignore_eos=True))
    done = engine.drain()
    for i, schema in enumerate(schemas):
        out = done[f"s{i}"].outputs[0]
        assert out.finish_reason == "stop", (schema, out.text)
        jsonschema.validate(json.loads(out.text), schema)
        assert out.token_ids[-1] in engine.eos_ids  # the grammar's end allows only end-of-sequence
        assert len(done[f"free{i}"].outputs[0].token_ids) == 20  # free requests are not constrained
    # the free requests really are free: some of their text is not JSON
    assert any(not _is_json(done[f"free{i}"].outputs[0].text) for i in range(len(schemas)))


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def test_json_object_regex_and_choice(engine):
    specs = {"obj": StructuredOutput(json={"type": "object", "properties": {"k": {"type": "integer", "minimum": 0,
                                                                                   "maximum": 9}},
                                            "required": ["k"], "additionalProperties": False}),
             "re": StructuredOutput(regex=r"[a-z]{2,5}-\d{3}"),
             "choice": StructuredOutput(choice=["alpha", "beta gamma", "δ"])}
    for seed in range(4):
        for name, spec in specs.items():
            engine.add_request(f"{name}{seed}", prompt(engine), SamplingParams(max_tokens=60, seed=seed, structured=spec))
    done = engine.drain()
    for seed in range(4):
        assert json.loads(done[f"obj{seed}"].outputs[0].text)["k"] in range(10)
        assert re.fullmatch(r"[a-z]{2,5}-\d{3}", done[f"re{seed}"].outputs[0].text)
        assert done[f"choice{seed}"].outputs[0].text in ("alpha", "beta gamma", "δ")


def test_n_samples_each_have_their_own_matcher(engine):
    spec = StructuredOutput(regex=r"(yes|no)( [0-9]{1,3}){2}")
    engine.add_request("n", prompt(engine), SamplingParams(n=6, max_tokens=40, seed=3, structured=spec))
    texts = [o.text for o in engine.drain()["n"].outputs]
    assert all(re.fullmatch(r"(yes|no)( [0-9]{1,3}){2}", t) for t in texts)
    assert len(set(texts)) > 1


def test_abort_and_resume_continue_exactly_under_the_constraint(engine):
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 12},
                                               "b": {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                                                "maximum": 999}, "maxItems": 4}},
              "required": ["a", "b"], "additionalProperties": False}
    params = SamplingParams(max_tokens=200, seed=11, structured=StructuredOutput(json=schema))
    engine.add_request("full", prompt(engine), params)
    full = engine.drain()["full"].outputs[0]
    engine.add_request("part", prompt(engine), params)
    for _ in range(6):
        engine.step()
    part = engine.abort("part").outputs[0]
    assert 0 < len(part.token_ids) < len(full.token_ids) - 1
    engine.add_request("resumed", prompt(engine), params, output_ids=part.token_ids, output_logprobs=part.logprobs)
    resumed = engine.drain()["resumed"].outputs[0]
    assert resumed.token_ids == full.token_ids  # the rebuilt matcher masks exactly as the first one did
    jsonschema.validate(json.loads(resumed.text), schema)


def test_resumed_tokens_that_break_the_constraint_are_refused(engine):
    bad = engine.tokenizer.encode("no json", add_special_tokens=False)
    with pytest.raises(ParamError, match="resumed tokens do not match"):
        engine.add_request("bad", prompt(engine), SamplingParams(structured=StructuredOutput(json={"type": "object"})),
                           output_ids=bad, output_logprobs=[0.0] * len(bad))
    assert not engine.requests


def test_constrained_requests_do_not_speculate_and_stay_exact():
    spec_engine = LLMEngine.from_pretrained(DEMO / "policy", draft=str(DEMO / "draft"), **ENGINE)
    plain = LLMEngine.from_pretrained(DEMO / "policy", **ENGINE)
    sums = spec_engine.tokenizer.apply_chat_template([{"role": "user", "content": "What is 12+7?"}])
    constrained = SamplingParams(max_tokens=40, temperature=0, structured=StructuredOutput(regex=r"[0-9]{1,3}"))
    free = SamplingParams(max_tokens=40, temperature=0)
    outs = []
    for e in (spec_engine, plain):
        e.add_request("c", sums, constrained)
        e.add_request("f", sums, free)
        outs.append(e.drain())
    assert outs[0]["c"].outputs[0].token_ids == outs[1]["c"].outputs[0].token_ids
    assert re.fullmatch(r"[0-9]{1,3}", outs[0]["c"].outputs[0].text)
    assert outs[0]["f"].outputs[0].token_ids == outs[1]["f"].outputs[0].token_ids
    assert spec_engine.speculator.drafted > 0  # the free request speculated alongside


def test_bad_constraints_are_parameter_errors_naming_the_field(engine):
    with pytest.raises(ParamError) as err:
        engine.add_request("x", prompt(engine), SamplingParams(structured=StructuredOutput(regex="(unclosed")))
    assert err.value.param == "structured.regex"
    with pytest.raises(ParamError, match="exactly one"):
        StructuredOutput(regex="a", choice=["b"])
    with pytest.raises(ParamError) as err:
        StructuredOutput(choice=[])
    assert err.value.param == "structured.choice"
    assert not engine.requests


def test_a_constraint_no_output_satisfies_and_min_tokens_with_a_constraint_are_refused(engine):
    """Both were answered with output that broke the constraint: an empty first mask let the row only
    end; min_tokens masked the end a finished constraint allows alone (token 0 sampled, NaN log-probs)."""
    with pytest.raises(ParamError, match="admits no output") as err:
        engine.add_request("x", prompt(engine), SamplingParams(structured=StructuredOutput(regex="[^\\x00-\\x{10FFFF}]")))
    assert err.value.param == "structured.regex"
    with pytest.raises(ParamError) as err:
        SamplingParams(min_tokens=4, structured=StructuredOutput(choice=["yes", "no"]))
    assert err.value.param == "min_tokens"
    assert not engine.requests


def test_schemas_differing_only_in_property_order_keep_their_own_order(engine):
    """The grammar cache keyed schemas with sorted keys: the second schema got the first's grammar."""
    props = {"answer": {"enum": [1, 2]}, "reasoning": {"const": "x"}}
    outs = []
    for order in (["answer", "reasoning"], ["reasoning", "answer"]):
        schema = {"type": "object", "properties": {k: props[k] for k in order}, "required": ["answer", "reasoning"],
                  "additionalProperties": False}
        engine.add_request(order[0], prompt(engine), SamplingParams(max_tokens=40, structured=StructuredOutput(json=schema)))
        outs.append(list(json.loads(engine.drain()[order[0]].outputs[0].text)))
    assert outs == [["answer", "reasoning"], ["reasoning", "answer"]]


def test_without_llguidance_the_error_names_the_extra(monkeypatch, engine):
    monkeypatch.setitem(sys.modules, "llguidance", None)
    grammars = Grammars(engine.tokenizer, engine.model.config.vocab_size, engine.eos_ids)
    with pytest.raises(ImportError, match=r"reasonrl\[structured\]"):
        grammars.compile(StructuredOutput(regex="a"))


def test_preempted_constrained_requests_continue_exactly(engine):
    from reasonrl.bench.structured import SCHEMA  # an array of >= 1000 records: it never ends early

    spec = StructuredOutput(json=SCHEMA)
    reqs = {f"p{i}": SamplingParams(max_tokens=40, seed=i, structured=spec) for i in range(4)}
    tight = LLMEngine.from_pretrained(DEMO / "policy", **{**ENGINE, "max_model_len": 96, "block_size": 8,
                                                          "kv_cache_memory": int(120 * engine.kv.bytes_per_token)})
    outs = []
    for e in (engine, tight):
        for rid, params in reqs.items():
            e.add_request(rid, prompt(e), params)
        outs.append(e.drain())
    assert tight.scheduler.num_preemptions > 0
    for rid in reqs:
        assert outs[1][rid].outputs[0].token_ids == outs[0][rid].outputs[0].token_ids
        assert outs[1][rid].outputs[0].text.startswith('[{"id": ')


def test_parallel_mask_fill_equals_one_at_a_time(engine):
    import torch
    from types import SimpleNamespace

    from reasonrl.engine.grammar import mask_logits

    spec = StructuredOutput(json={"type": "array", "items": {"type": "string", "maxLength": 6}})
    text = '["ab", "cdef", "g"]'
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    seqs = [SimpleNamespace(guide=engine.grammars.guide(spec, ids[:k])) for k in range(len(ids))]
    seqs.insert(2, SimpleNamespace(guide=None))  # an unconstrained row in between
    logits = torch.randn(len(seqs), engine.model.config.vocab_size)
    one = mask_logits(logits, seqs, engine.eos_ids)
    par = mask_logits(logits, seqs, engine.eos_ids, engine.grammars)
    assert torch.equal(one, par) and torch.equal(par[2], logits[2])
    assert (par.isinf().sum(-1)[[0, 1, 3]] > 0).all()  # constrained rows lose tokens


def test_server_without_llguidance_answers_400_naming_the_extra(monkeypatch, engine):
    from reasonrl.engine.server import ServeConfig
    from reasonrl.engine.server.errors import APIError
    from reasonrl.engine.server.prepare import Preparer

    monkeypatch.setitem(sys.modules, "llguidance", None)
    preparer = Preparer(engine.tokenizer, 1024, ServeConfig(), None,
                        Grammars(engine.tokenizer, engine.model.config.vocab_size, engine.eos_ids))
    body = {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}
    with pytest.raises(APIError) as err:
        preparer.chat(json.dumps(body).encode())
    assert err.value.status == 400 and err.value.param == "response_format"
    assert "reasonrl[structured]" in str(err.value)
    assert preparer.chat(json.dumps({"messages": body["messages"]}).encode()).params[0].structured is None
