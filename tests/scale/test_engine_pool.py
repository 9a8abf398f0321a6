"""APRIL over two engine actors: balancing, aborts everywhere, resumes anywhere, and no sample lost
when an actor is killed mid-rollout (a local Ray cluster, CPU)."""

import pytest
import torch

from reasonrl.engine.config import EngineConfig
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.envs.letter import LetterEnvironment
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.chat import ChatEncoder
from reasonrl.rollout.config import RolloutConfig
from reasonrl.rollout.manager import RolloutManager
from reasonrl.scale.cluster import Cluster
from reasonrl.scale.config import ClusterConfig
from reasonrl.scale.engine_pool import EnginePool
from tests.scale.common import on_each_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool(ray_cluster, policy_dir):
    cluster = Cluster(ClusterConfig(ray=True, engines=2))
    pool = EnginePool(cluster, str(policy_dir), EngineConfig(kv_cache_memory=1 << 24, max_num_seqs=4))  # a queue: groups finish in turn
    yield pool
    pool.close()
    cluster.close()


def manager(pool, policy_dir, **rollout):
    cfg = RolloutConfig(**{"prompts_per_step": 2, "samples_per_prompt": 4, "max_tokens": 48, **rollout})
    tok = Tokenizer.from_dir(policy_dir)
    return RolloutManager(pool, LetterEnvironment(), ChatEncoder(tok), cfg, seed=0)


def test_requests_go_to_the_engine_with_the_fewest_outstanding_tokens(pool):
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=m, detokenize=False) for i, m in enumerate([40, 10, 10, 10, 25, 10])]
    for i, p in enumerate(params):
        pool.submit(f"b:{i}", [5, 6, 7], p, [], [])
    placed = {k: r.engine for k, r in pool.requests.items()}
    # costs (prompt + max_tokens) 43 -> e0; 13, 13, 13 -> e1 (13, 26, 39 < 43); 28 -> e1 (39 < 43); 13 -> e0 (43 < 67)
    assert [placed[f"b:{i}"] for i in range(6)] == [0, 1, 1, 1, 1, 0]
    got = {}
    while len(got) < 6:
        got.update(pool.poll())
    assert {k: len(o.token_ids) for k, o in got.items()} == {f"b:{i}": p.max_tokens for i, p in enumerate(params)}
    assert not pool.balance.where and all(load == 0 for load in pool.balance.load.values())


def test_april_aborts_on_every_engine_and_resumes_partials_on_any(pool, policy_dir):
    m = manager(pool, policy_dir, over_provision=3.0)
    groups, stats = m.collect(step=1, version=0)
    assert stats["done_groups"] >= 2 and stats["buffered_groups"] > 0 and stats["dropped_groups"] == 0
    assert not pool.requests and not pool.balance.where  # aborted everywhere
    buffered = {(g.group_id, s.index): (list(s.response_ids), list(s.logprobs)) for g in m.april.buffer.groups
                for s in g.samples if s.response_ids and not s.status.finished}
    assert buffered  # partial samples kept with their tokens
    where = {}
    original_submit = pool.submit

    def spy(key, prompt, params, output_ids, output_logprobs):
        original_submit(key, prompt, params, output_ids, output_logprobs)
        where[key] = (pool.requests[key].engine, len(output_ids))
    pool.submit = spy
    try:
        groups, stats = m.collect(step=2, version=1)
    finally:
        del pool.submit
    assert stats["resumed_samples"] > 0 and stats["dropped_groups"] == 0
    resumed = [s for g in groups for s in g.samples if (g.group_id, s.index) in buffered]
    assert resumed
    for s in resumed:
        ids, logprobs = buffered[(s.group_id, s.index)]
        assert s.response_ids[:len(ids)] == ids and s.logprobs[:len(logprobs)] == logprobs  # kept, not recomputed
        assert s.versions == [0] * len(ids) + [1] * (len(s.response_ids) - len(ids))  # each token's policy version
    resumed_on = {where[f"{g}:{i}"][0] for (g, i) in buffered if f"{g}:{i}" in where}
    assert resumed_on == {0, 1}  # partial samples resume on whichever engine has room


def test_an_engine_killed_mid_rollout_loses_no_sample(pool, policy_dir, ray_cluster):
    m = manager(pool, policy_dir, prompts_per_step=3, max_tokens=64)
    victim = pool.engines[0]
    seen: dict[str, list[int]] = {}
    original_poll = pool.poll

    def poll():
        out = original_poll()
        if victim not in pool.engines:
            return out
        mine = {k: list(pool.requests[k].output_ids) for k in pool.balance.keys(victim.index)}
        if sum(map(len, mine.values())) >= 4 * len(mine) > 0:
            seen.update(mine)  # the partial tokens the driver holds when the actor dies
            ray_cluster.kill(victim.actor)
        return out
    pool.poll = poll
    try:
        groups, stats = m.collect(step=1, version=0)
    finally:
        del pool.poll
    counters = pool.stats()
    assert counters["engine_deaths"] == 1 and counters["engine_restarts"] == 1 and counters["engines"] == 2
    assert stats["done_groups"] == 3 and stats["dropped_groups"] == 0
    samples = {f"{g.group_id}:{s.index}": s for g in groups for s in g.samples}
    assert len(samples) == 12 and all(s.status.finished for s in samples.values())
    assert seen and counters["recovered_samples"] == len(seen) and counters["recovered_tokens"] > 0
    for key, ids in seen.items():
        assert samples[key].response_ids[:len(ids)] == ids  # resumed from its partial tokens elsewhere
        assert len(samples[key].logprobs) == len(samples[key].response_ids)
    # the replacement engine serves the current weights and takes requests
    probe = SamplingParams(temperature=0, seed=0, max_tokens=4, detokenize=False)
    pool.submit("after", [5, 6, 7], probe, [], [])
    out = {}
    while "after" not in out:
        out.update(pool.poll())
    assert len(out["after"].token_ids) == 4


def test_sync_loads_new_weights_on_every_engine(pool, policy_dir):
    from reasonrl.engine import LLMEngine

    policy = load_model(policy_dir)
    with torch.no_grad():
        policy.lm_head.weight.add_(0.1 * torch.randn_like(policy.lm_head.weight))
    prompt = list(range(5, 45))  # longer than a KV block: stale prefix-cache blocks would change the output
    greedy = SamplingParams(temperature=0, max_tokens=6, detokenize=False)
    before = on_each_engine(pool, prompt, greedy)
    pool.sync(policy, version=7)
    after = on_each_engine(pool, prompt, greedy)
    reference = LLMEngine(policy, Tokenizer.from_dir(policy_dir), EngineConfig(kv_cache_memory=1 << 24))
    reference.add_request("r", prompt, greedy)
    expected = reference.drain()["r"].outputs[0]
    for out in after:  # both engines now generate what the new policy generates, with its log-probs
        assert out.token_ids == expected.token_ids
        torch.testing.assert_close(torch.tensor(out.logprobs), torch.tensor(expected.logprobs))
    assert all(not torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs)) for a, b in zip(before, after))
    assert [s["version"] for s in pool._each("stats")] == [7, 7]
    assert on_each_engine(pool, prompt, greedy)[0].token_ids == expected.token_ids
