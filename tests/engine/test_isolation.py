"""A request whose part of a step raises fails alone; everyone else gets exactly what a clean run
gives them (greedy, token for token), and no block leaks. Faults are injected for one request."""

from __future__ import annotations

import pytest
from serve_helpers import demo_engine

from reasonrl.engine import SamplingParams

PARAMS = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
PROMPTS = {f"r{i}": [5 + i, 40, 41, 42 + i, 7] for i in range(5)}


def run(engine, prompts: dict[str, list[int]], params=PARAMS):
    for rid, prompt in prompts.items():
        engine.add_request(rid, prompt, params)
    return engine.drain()


@pytest.fixture(scope="module")
def clean():
    return {rid: out.outputs[0].token_ids for rid, out in run(demo_engine(), PROMPTS).items()}


def assert_clean_after(engine, outs, clean, bad: set[str]):
    for rid, out in outs.items():
        if rid in bad:
            assert out.error and repr(rid) in out.error and out.outputs[0].finish_reason == "error"
        else:
            assert out.error is None and out.outputs[0].token_ids == clean[rid], rid
    bm = engine.block_manager
    assert not engine.requests and not engine.scheduler.waiting and bm.num_free == len(bm.blocks)


def fail_sampling(engine, monkeypatch, rid: str, at: int | None = None, error: Exception = ValueError("injected")):
    """Sampling raises `error` for steps with request `rid` (only when it has `at` tokens, if given)."""
    sampling_batch = engine.runner.sampling_batch

    def faulty(seqs):
        if any(s.request_id == rid and (at is None or len(s.output_ids) == at) for s in seqs):
            raise error
        return sampling_batch(seqs)

    monkeypatch.setattr(engine.runner, "sampling_batch", faulty)


def test_sampling_fault_fails_only_its_request(clean, monkeypatch):
    engine = demo_engine()
    fail_sampling(engine, monkeypatch, "r3", error=RuntimeError("injected sampling fault"))
    outs = run(engine, PROMPTS)
    assert set(outs) == set(PROMPTS)
    assert_clean_after(engine, outs, clean, {"r3"})
    assert "injected sampling fault" in outs["r3"].error


def test_fault_mid_decode_fails_only_its_request(clean, monkeypatch):
    """r1 fails at its 6th token: it keeps what it had, the others run on to the end."""
    engine = demo_engine()
    fail_sampling(engine, monkeypatch, "r1", at=5)
    outs = run(engine, PROMPTS)
    assert_clean_after(engine, outs, clean, {"r1"})
    assert outs["r1"].outputs[0].token_ids == clean["r1"][:5]


@pytest.mark.parametrize("kv", [{"kv_format": "tada", "kv_options": {"bits": 4}}, {"kv_format": "kivi"}])
def test_a_fault_in_a_step_that_fills_blocks_fails_only_its_request_with_staged_formats(kv, monkeypatch):
    """tada and kivi hand a filled block's staging slot back during the step: the others' rerun found
    its rows gone and failed them too, until the failed attempt's slot changes were rolled back
    (`KVFormat.rollback`). r1 fails at its 3rd token, in the step whose tokens fill every sequence's
    first block (block size 8: 5 prompt tokens, then 3 generated); and, in another run, before the
    forward of the step after one that started blocks (a rollback must undo only the failed
    attempt's writes: one that undid the previous step's took the new blocks' slots away)."""
    kv = {**kv, "max_num_seqs": 8}  # the staging pool is sized by it
    clean = {rid: out.outputs[0].token_ids for rid, out in run(demo_engine(**kv), PROMPTS).items()}
    engine = demo_engine(**kv)
    fail_sampling(engine, monkeypatch, "r1", at=3)
    outs = run(engine, PROMPTS)
    assert_clean_after(engine, outs, clean, {"r1"})  # every request failed before
    engine = demo_engine(**kv)
    step = engine.runner.run

    def fails_before_the_forward(scheduled, *args):
        if any(seq.request_id == "r1" and len(seq.output_ids) == 4 for seq, _ in scheduled):
            raise RuntimeError("injected before the forward")
        return step(scheduled, *args)

    monkeypatch.setattr(engine.runner, "run", fails_before_the_forward)
    assert_clean_after(engine, run(engine, PROMPTS), clean, {"r1"})


def test_fault_applying_results_fails_only_its_request(clean, monkeypatch):
    engine = demo_engine()
    append = engine._append

    def faulty(seq, s):
        if seq.request_id == "r0":
            raise KeyError("injected detokeniser fault")
        return append(seq, s)

    monkeypatch.setattr(engine, "_append", faulty)
    outs = run(engine, PROMPTS)
    assert_clean_after(engine, outs, clean, {"r0"})


def test_reader_of_a_failed_requests_fresh_prefix_blocks_recomputes_them(monkeypatch):
    """Two requests with one prompt, admitted in one step: the second reuses prefix blocks the first
    computes in that very step. The first writes garbage there and fails; the second must not read
    the garbage (it recomputes), and gives exactly its clean output."""
    prompt = list(range(10, 34))  # 3 blocks of 8: 2 are shared through the prefix cache
    clean = run(demo_engine(), {"b": prompt})["b"].outputs[0].token_ids
    engine = demo_engine()
    run_batch = engine.runner.run

    def corrupting(scheduled, *args):
        result = run_batch(scheduled, *args)
        seqs = [s for s, _ in scheduled if s.request_id == "a"]
        if seqs:
            engine.kv.cache[:, :, seqs[0].block_table] = 1e4  # what a crash halfway through may leave
            raise RuntimeError("injected after the forward")
        return result

    monkeypatch.setattr(engine.runner, "run", corrupting)
    engine.add_request("a", prompt, PARAMS)
    engine.add_request("b", prompt, PARAMS)
    outs = engine.drain()
    assert outs["a"].error is not None
    assert outs["b"].error is None and outs["b"].outputs[0].token_ids == clean
    bm = engine.block_manager
    assert bm.num_free == len(bm.blocks)


def test_every_step_failing_fails_every_request_and_frees_everything(monkeypatch):
    engine = demo_engine()
    monkeypatch.setattr(engine.runner, "run", lambda *a: (_ for _ in ()).throw(RuntimeError("device lost")))
    outs = run(engine, PROMPTS)
    assert all(o.error and "device lost" in o.error for o in outs.values())
    bm = engine.block_manager
    assert not engine.requests and bm.num_free == len(bm.blocks)


@pytest.mark.parametrize("kwargs,field", [
    (dict(seed=1 << 63), "seed"), (dict(seed=(1 << 63) - 1, n=2), "seed"), (dict(top_k=1 << 63), "top_k"),
    (dict(temperature=1e-30), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=float("nan")), "top_p"), (dict(min_p=float("inf")), "min_p"), (dict(n=True), "n"),
    (dict(stop_token_ids=[1 << 64]), "stop_token_ids"), (dict(max_tokens=1 << 64), "max_tokens"),
])
def test_sampling_params_refuse_what_the_engine_cannot_represent(kwargs, field):
    with pytest.raises(ValueError, match=field) as err:
        SamplingParams(**kwargs)
    assert err.value.param == field


def test_engine_admission_checks_ids_and_resumed_logprobs():
    engine = demo_engine()
    vocab = engine.model.config.vocab_size
    for kwargs, what in [(dict(prompt=[1, vocab]), "prompt"), (dict(prompt=[1, True]), "prompt"),
                         (dict(params=SamplingParams(stop_token_ids=[vocab])), "stop_token_ids"),
                         (dict(output_ids=[3], output_logprobs=[float("nan")]), "output_logprobs"),
                         (dict(output_ids=[vocab], output_logprobs=[-1.0]), "output_ids")]:
        args = {"prompt": [1, 2, 3], "params": SamplingParams(max_tokens=4), **kwargs}
        with pytest.raises(ValueError, match=what):
            engine.add_request("x", **args)
        assert not engine.requests
    engine.add_request("ok", [1, 2], SamplingParams(seed=(1 << 63) - 1, top_k=(1 << 63) - 1, max_tokens=3))
    assert engine.drain()["ok"].error is None  # the largest representable values run
