"""APRIL against a `reasonrl serve` endpoint: abort over HTTP, resume over HTTP, weights pushed."""

import asyncio
import threading
import time

import pytest
import torch
import uvicorn

from reasonrl.engine import LLMEngine
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.server import ServeConfig, create_app
from reasonrl.envs.letter import LetterEnvironment
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.tiny import make_checkpoint, make_tokenizer
from reasonrl.rl.config import load_config
from reasonrl.rl.trainer import Trainer
from reasonrl.rl.checkpoint import latest_checkpoint
from reasonrl.rl.metrics import read_metrics
from reasonrl.rollout.remote import RemoteBackend


STEP_S = 0.005
"""Seconds each engine step of the served model is held back (see `serve`)."""


def serve(path):
    """A `reasonrl serve` app over a fresh engine on `path`, in a thread: (url, engine, stop)."""
    engine = LLMEngine(load_model(path), Tokenizer.from_dir(path),
                       EngineConfig(kv_cache_memory=1 << 24, max_num_seqs=12, max_model_len=256))
    step = engine.step

    def paced_step():  # a step as slow as a real model's, so that a round of decoding outlasts the
        time.sleep(STEP_S)  # client's polling and the groups queued behind the 12 slots are still
        return step()  # running when the needed ones are done (with the tiny model it raced)
    engine.step = paced_step
    app = create_app(engine, ServeConfig(served_model_name="m"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    def stop():
        server.should_exit = True
        thread.join(timeout=10)
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", engine, stop


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tok = make_tokenizer(["Write the letter a many times. aaaa bbbb abab"] * 10, vocab_size=280)
    path = make_checkpoint(tmp_path_factory.mktemp("remote") / "m", "llama", tok, hidden_size=64, num_layers=2)
    url, engine, stop = serve(path)
    yield path, url, engine
    stop()


def remote_trainer(path, url, run_dir, steps, over_provision=1.0):
    cfg = load_config(None, {"model.path": str(path), "train.run_dir": str(run_dir), "rollout.remote_url": url,
                             "train.steps": steps, "train.save_every": 2, "rollout.prompts_per_step": 2,
                             "rollout.samples_per_prompt": 4, "rollout.over_provision": over_provision,
                             "rollout.max_tokens": 20, "optim.lr": 1e-2, "env.eval_size": 4})
    return Trainer(cfg, LetterEnvironment(), load_model(path), Tokenizer.from_dir(path), console=False)


def test_april_over_http_keeps_partial_groups_and_pushes_weights(served, tmp_path):
    path, url, server_engine = served
    # 8 groups of 4 for the server's 12 slots: groups still queued or running when two are done
    trainer = remote_trainer(path, url, tmp_path / "run", 2, over_provision=4.0)
    assert isinstance(trainer.backend, RemoteBackend)  # nothing allocated locally
    trainer.train()
    trainer.close()
    records = read_metrics(tmp_path / "run")
    rows = [r for r in records if "reward_mean" in r]
    assert len(rows) == 2 and all(r["dropped_groups"] == 0 for r in rows)
    assert sum(r["buffered_groups"] for r in rows) > 0  # over-provisioned groups were aborted over HTTP and kept
    assert "eval_accuracy" in records[0] and "eval_accuracy" in records[-1]  # held-out evaluation through the server
    assert rows[-1]["sync_seconds"] > 0
    for (name, p), q in zip(trainer.policy.state_dict().items(), server_engine.model.state_dict().values()):
        assert torch.equal(p, q), name  # the server runs the trained weights
    assert latest_checkpoint(tmp_path / "run").name == "step_000002"
    assert not server_engine.requests


def test_remote_training_checkpoints_and_resumes_like_an_uninterrupted_run(served, tmp_path):
    """A remote run stopped after step 2 and resumed by a new trainer ends with the weights and
    metrics of one that ran straight through (synchronous rollout: with over-provisioning, which
    partial tokens an abort catches depends on network timing)."""
    path, url, server_engine = served
    straight = remote_trainer(path, url, tmp_path / "straight", 4)
    straight.train()
    straight.close()
    rows = [r for r in read_metrics(tmp_path / "straight") if "reward_mean" in r]
    first = remote_trainer(path, url, tmp_path / "cut", 4)
    first.train(stop=lambda: first.step >= 2)  # as Ctrl-C after step 2 would
    first.close()
    assert latest_checkpoint(tmp_path / "cut").name == "step_000002"
    resumed = remote_trainer(path, url, tmp_path / "cut", 4)  # a new process would start from the base weights
    resumed.train()
    resumed.close()
    for (name, p), q in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(p, q), name
    again = [r for r in read_metrics(tmp_path / "cut") if "reward_mean" in r]
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    assert [r["reward_mean"] for r in rows] == [r["reward_mean"] for r in again]


def test_remote_abort_returns_partials_and_resume_is_exact(served):
    from reasonrl.engine import SamplingParams

    _, url, server_engine = served
    backend = RemoteBackend(url)
    params = [SamplingParams(temperature=1.0, seed=100 + i, max_tokens=200) for i in range(3)]  # an abort lands mid-way even on a loaded machine
    prompt = [5, 6, 7, 8]
    for i, p in enumerate(params):
        backend.submit(f"full:{i}", prompt, p, [], [])
    full = {}
    while len(full) < 3:
        full.update(dict(backend.poll()))
    for i, p in enumerate(params):
        backend.submit(f"cut:{i}", prompt, p, [], [])
    while len(server_engine.requests) < 3 or min(len(s.output_ids) for r in list(server_engine.requests.values())
                                                  for s in r.seqs) < 5:
        time.sleep(0.002)
    partial = dict(backend.abort_all())
    assert set(partial) == {"cut:0", "cut:1", "cut:2"}
    for i, p in enumerate(params):
        out = partial[f"cut:{i}"]
        assert out.finish_reason == "abort" and 5 <= len(out.token_ids) < 200
        assert out.token_ids == full[f"full:{i}"].token_ids[:len(out.token_ids)]
        backend.submit(f"resume:{i}", prompt, p, out.token_ids, out.logprobs)
    resumed = {}
    while len(resumed) < 3:
        resumed.update(dict(backend.poll()))
    for i in range(3):
        assert resumed[f"resume:{i}"].token_ids == full[f"full:{i}"].token_ids
        torch.testing.assert_close(torch.tensor(resumed[f"resume:{i}"].logprobs),
                                   torch.tensor(full[f"full:{i}"].logprobs), atol=1e-5, rtol=0)
    backend.close()



def test_abort_all_reaches_requests_still_on_their_way_to_the_server(served):
    """abort_all right after a burst of submissions: requests whose POST had not reached the server's
    engine when the abort did were not aborted (they ran to max_tokens, or abort_all timed out)."""
    from reasonrl.engine import SamplingParams

    _, url, server_engine = served
    backend = RemoteBackend(url)
    post = backend.client.post

    async def slow_post(*args, **kwargs):  # a network slower than the abort's
        await asyncio.sleep(0.3)
        return await post(*args, **kwargs)
    backend.client.post = slow_post
    for i in range(48):
        backend.submit(f"burst:{i}", [5, 6, 7, 8], SamplingParams(temperature=1.0, seed=i, max_tokens=200), [], [])
    outs = dict(backend.abort_all(timeout=20))
    assert len(outs) == 48 and "length" not in {o.finish_reason for o in outs.values()}  # (a few end on EOS)
    assert sum(o.finish_reason == "abort" for o in outs.values()) > 24
    assert not server_engine.requests
    backend.close()

def test_a_sample_the_server_fails_comes_back_as_an_error_to_resubmit(served, monkeypatch):
    """A 500 for one sample (the server's engine failed its request) is finish_reason "error" with the
    tokens it was submitted with, which APRIL resubmits (rollout/april.py), instead of an exception
    that ended the run; resubmitted, it gives what an unfailed run does."""
    from reasonrl.engine import SamplingParams

    _, url, server_engine = served
    backend = RemoteBackend(url)
    params = SamplingParams(temperature=1.0, seed=4242, max_tokens=12)
    backend.submit("ok:0", [5, 6, 7, 8], params, [], [])
    want = []
    while not want:
        want = backend.poll()
    sampling_batch, failures = server_engine.runner.sampling_batch, []

    def faulty(seqs):
        if not failures and any(s.params.seed == 4242 for s in seqs):
            failures.append(1)
            raise RuntimeError("injected server-side fault")
        return sampling_batch(seqs)

    monkeypatch.setattr(server_engine.runner, "sampling_batch", faulty)
    backend.submit("bad:0", [5, 6, 7, 8], params, [], [])
    got = []
    while not got:
        got = backend.poll()  # raised RuntimeError("server refused sample bad:0: 500 ...") before
    [(key, out)] = got
    assert key == "bad:0" and out.finish_reason == "error" and out.token_ids == [] and failures
    backend.submit("bad:0", [5, 6, 7, 8], params, out.token_ids, out.logprobs)
    again = []
    while not again:
        again = backend.poll()
    assert again[0][1].token_ids == want[0][1].token_ids
    backend.close()



def test_sampling_parameters_a_dialect_cannot_carry_are_refused_not_dropped(served):
    """The dialects send temperature, top_p, seed, max_tokens and stop ids: top_k or ignore_eos were
    dropped without a word, and the server sampled from another distribution than asked."""
    from reasonrl.engine import SamplingParams

    _, url, _ = served
    backend = RemoteBackend(url)
    try:
        for field in ({"top_k": 5}, {"ignore_eos": True}, {"presence_penalty": 0.5}, {"n": 2}):
            with pytest.raises(ValueError, match=f"{next(iter(field))} would be dropped"):
                backend.submit("x", [5, 6], SamplingParams(max_tokens=4, **field), [], [])
        assert not backend.in_flight
    finally:
        backend.close()

def test_dead_endpoint_gives_one_clear_error():
    with pytest.raises(ConnectionError, match="no reasonrl server at http://127.0.0.1:9"):
        RemoteBackend("http://127.0.0.1:9")


def test_openai_completions_dialect_resumes_by_prompt_extension(served, tmp_path):
    """The vLLM dialect (plain OpenAI completions with token ids) against `reasonrl serve`: a partial
    sample resumes as a longer prompt, its tokens and behaviour log-probs kept, and greedy decoding
    continues exactly where the uninterrupted sample went."""
    from reasonrl.engine import SamplingParams

    _, url, _ = served
    backend = RemoteBackend(url, sync_dir=tmp_path, engine="vllm")
    params, prompt = SamplingParams(temperature=0, max_tokens=12), [5, 6, 7, 8]
    backend.submit("full", prompt, params, [], [])
    full = {}
    while "full" not in full:
        full.update(dict(backend.poll()))
    whole = full["full"]
    assert len(whole.token_ids) == len(whole.logprobs) > 5
    kept_logprobs = [-0.5] * 5  # behaviour log-probs of an older policy: carried, never recomputed
    backend.submit("resumed", prompt, params, whole.token_ids[:5], kept_logprobs)
    out = {}
    while "resumed" not in out:
        out.update(dict(backend.poll()))
    resumed = out["resumed"]
    assert resumed.token_ids == whole.token_ids and resumed.logprobs[:5] == kept_logprobs
    torch.testing.assert_close(torch.tensor(resumed.logprobs[5:]), torch.tensor(whole.logprobs[5:]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="pushing weights to a vLLM server is not supported"):
        backend.sync(None, 1)  # refused before anything is written
    assert not any(tmp_path.iterdir())
    backend.close()


def test_april_over_two_servers_balances_aborts_everywhere_and_syncs_both(served, tmp_path):
    from reasonrl.rollout.remote_pool import RemotePool

    path, url, first = served
    second_url, second, stop = serve(path)
    try:
        before = [first.num_generated_tokens, second.num_generated_tokens]
        trainer = remote_trainer(path, f"{url},{second_url}", tmp_path / "run", 2, over_provision=4.0)  # > 24 slots
        assert isinstance(trainer.backend, RemotePool)
        trainer.train()
        trainer.close()
        rows = [r for r in read_metrics(tmp_path / "run") if "reward_mean" in r]
        assert len(rows) == 2 and all(r["dropped_groups"] == 0 for r in rows)
        assert sum(r["buffered_groups"] for r in rows) > 0  # aborted on both servers, kept
        assert first.num_generated_tokens > before[0] and second.num_generated_tokens > before[1]  # both rolled out
        for engine in (first, second):
            assert not engine.requests
            for (name, p), q in zip(trainer.policy.state_dict().items(), engine.model.state_dict().values()):
                assert torch.equal(p, q), name  # each server runs the trained weights
    finally:
        stop()


@pytest.mark.parametrize("down", ["before", "between"])
def test_a_pool_rolls_out_on_the_servers_that_answer(served, tmp_path, down):
    """One of two servers down: its stats() ended the step with a ConnectError, and its failed
    samples were resubmitted to it (the least loaded) until the rollout gave up."""
    from reasonrl.models.chat import ChatEncoder
    from reasonrl.rollout.config import RolloutConfig
    from reasonrl.rollout.manager import RolloutManager
    from reasonrl.rollout.remote_pool import RemotePool

    path, url, engine = served
    url_b, _, stop_b = serve(path)
    tok = Tokenizer.from_dir(path)
    pool = RemotePool([RemoteBackend(u, sync_dir=tmp_path / "sync", tokenizer=tok) for u in (url, url_b)])
    if down == "between":
        pool.stats = lambda: {}  # past the counters: the failed samples' resubmission is what is tested
    stop_b()
    manager = RolloutManager(pool, LetterEnvironment(), ChatEncoder(tok),
                             RolloutConfig(prompts_per_step=2, samples_per_prompt=2, max_tokens=8), seed=0)
    try:
        groups, _ = manager.collect(step=1, version=0)
        assert len(groups) == 2 and all(len(s.response_ids) > 0 for g in groups for s in g.samples)
    finally:
        pool.close()
