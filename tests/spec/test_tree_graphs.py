"""Draft trees grown in CUDA graphs (engine/spec/grow.py, `TreeGraphs`): the capture logic on CPU,
with a stand-in pool whose "graph" reruns the captured function on its static inputs (the budget
and key logic are the real ones), and the real thing on a GPU."""

import pytest
import torch

from reasonrl.engine import SamplingParams
from reasonrl.engine.cuda_graphs import GraphPool
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.engine.spec.draft_state import DraftState
from reasonrl.engine.spec.grow import GrowStep, TreeGraphs, row_buckets
from reasonrl.models.model import DecoderLM
from reasonrl.models.tiny import init_weights, tiny_config
from tests.engine.test_compiled import CPUPool
from tests.spec.test_spec_engine import assert_same, demo, engine, random_prompts, run  # noqa: F401  (demo: fixture)


def _tiny() -> DraftHead:
    """A random draft on a random target (few tokens accepted: every path of a tree is exercised)."""
    model = init_weights(DecoderLM(tiny_config("qwen2", vocab_size=32, hidden_size=64, eos_token_ids=(1,))), std=0.3, seed=1)
    return init_weights(DraftHead(model), std=0.3, seed=2)


@pytest.fixture(scope="module")
def draft():
    return _tiny()


def _inputs(draft, rows: list[int], seed: int):
    """Draft states with `rows` committed rows each, the roots' outputs and positions."""
    g, c = torch.Generator().manual_seed(seed), draft.config
    states = []
    for n in rows:
        st = DraftState.at(0)
        if n:
            st.cache.append(torch.randn(n, c.num_kv_heads, c.head_dim, generator=g),
                            torch.randn(n, c.num_kv_heads, c.head_dim, generator=g))
        states.append(st)
    return states, torch.randn(len(rows), c.hidden_size, generator=g), torch.tensor(rows)


def _no_rows(draft):
    return torch.empty(0, draft.config.num_kv_heads, draft.config.head_dim)


def _assert_same_search(a, b):
    for x, y in zip(a.tensors(), b.tensors(), strict=True):
        assert x.shape == y.shape
        if x.is_floating_point():
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)  # padded attention rounds differently
        else:
            assert torch.equal(x, y)


def _graphs(draft, pool, buckets=(1, 2, 4), max_rows=200):
    return TreeGraphs(draft.config, list(buckets), max_rows, draft.target.config.vocab_size, pool)


def test_row_buckets_double_from_64_until_one_holds_the_longest_context():
    assert row_buckets(200) == [64, 128, 256] and row_buckets(64) == [64] and row_buckets(1) == [64]


@torch.no_grad()
def test_a_captured_tree_grows_what_the_eager_one_does_and_reads_new_inputs_at_every_replay(draft):
    pool = CPUPool(1 << 30, lambda static: 0)
    graphs = _graphs(draft, pool)
    captured, eager = GrowStep(draft, compile=False, graphs=graphs), GrowStep(draft, compile=False)
    # three sequences (batch bucket 4: one padding row), one with no committed rows; rows bucket 64
    for seed, rows in enumerate(([5, 37, 0], [60, 2, 9], [1, 1, 1])):
        states, root_out, pos = _inputs(draft, rows, seed)
        got = captured.tree(states, root_out, pos, 3, 4, _no_rows(draft))
        _assert_same_search(got, eager.tree(states, root_out, pos, 3, 4, _no_rows(draft)))
        assert got.tokens[0].shape[0] == 3  # the padding row is dropped
    assert pool.captures == 1 and graphs.captures == 1 and graphs.replays == 3  # one key: captured once
    # another tree shape, batch size or row bucket is another graph
    for rows, top_k, depth in (([5, 37, 0], 2, 4), ([5, 37, 0], 3, 3), ([5], 3, 4), ([5, 100, 0], 3, 4)):
        states, root_out, pos = _inputs(draft, rows, 7)
        _assert_same_search(captured.tree(states, root_out, pos, top_k, depth, _no_rows(draft)),
                            eager.tree(states, root_out, pos, top_k, depth, _no_rows(draft)))
    assert graphs.captures == 5 and sorted(graphs.groups) == [(1, 64), (4, 64), (4, 128)]
    assert captured.builds() == 5  # what the speculator compares across a step


@torch.no_grad()
def test_trees_beyond_the_buckets_or_the_memory_budget_grow_eager(draft):
    states, root_out, pos = _inputs(draft, [5, 37, 0], 0)
    eager = GrowStep(draft, compile=False).tree(states, root_out, pos, 3, 4, _no_rows(draft))
    # the static buffers of the (4, 64) group do not fit: nothing is captured
    tight = _graphs(draft, CPUPool(1000, lambda static: 0))
    step = GrowStep(draft, compile=False, graphs=tight)
    _assert_same_search(step.tree(states, root_out, pos, 3, 4, _no_rows(draft)), eager)
    assert tight.captures == 0 and (4, 64) in tight.skipped and tight.pool.bytes == 0
    # the buffers fit, the capture would not: tried once, then the key grows eager without trying again
    pool = CPUPool(1 << 30, lambda static: 1 << 31)
    greedy_pool = _graphs(draft, pool)
    step = GrowStep(draft, compile=False, graphs=greedy_pool)
    for _ in range(2):
        _assert_same_search(step.tree(states, root_out, pos, 3, 4, _no_rows(draft)), eager)
    assert pool.captures == 1 and greedy_pool.replays == 0 and (4, 64, 3, 4) in greedy_pool.skipped
    assert pool.bytes == greedy_pool.groups[(4, 64)].nbytes  # the buffers are charged, the failed capture is not
    # more sequences than the largest batch bucket, or rows beyond the largest row bucket
    small = _graphs(draft, CPUPool(1 << 30, lambda static: 0), buckets=(1, 2), max_rows=64)
    step = GrowStep(draft, compile=False, graphs=small)
    _assert_same_search(step.tree(states, root_out, pos, 3, 4, _no_rows(draft)), eager)
    long_states, long_out, long_pos = _inputs(draft, [65], 1)
    step.tree(long_states, long_out, long_pos, 3, 4, _no_rows(draft))
    assert small.captures == 0 and small.groups == {}


@pytest.mark.slow
def test_speculation_with_captured_trees_is_exact_and_capture_steps_teach_the_policy_nothing(demo):
    policy_model, _, draft, prompts = demo
    reqs = {str(i): (p, SamplingParams(temperature=0, max_tokens=48), {}) for i, p in enumerate(prompts[:6])}
    plain = run(engine(policy_model, max_model_len=256), reqs)
    eager = engine(policy_model, draft, max_model_len=256, max_num_seqs=4)
    spec = engine(policy_model, draft, max_model_len=256, max_num_seqs=4)
    graphs = _graphs(draft, CPUPool(1 << 30, lambda static: 0), buckets=(1, 2, 4), max_rows=256)
    spec.speculator.grow_step = GrowStep(draft, compile=False, graphs=graphs)
    logs, observe = [], spec.speculator.policy.observe
    spec.speculator.policy.observe = lambda log, seconds: (logs.append(log), observe(log, seconds))
    assert_same(plain, run(spec, reqs))
    assert_same(plain, run(eager, reqs))
    stats = spec.stats()
    assert stats["spec_draft_graph_replays"] > 0 and stats["spec_draft_graphs"] == graphs.captures > 0
    assert sum(log.built for log in logs) == graphs.captures  # every capture step, and only those, left out
    # the captured trees propose what the eager ones do, up to rounding: about as many accepted
    assert abs(stats["spec_accepted_length"] - eager.stats()["spec_accepted_length"]) < 0.5


@pytest.mark.gpu
def test_cuda_graph_trees_keep_greedy_output_exact_on_a_gpu():
    cuda_draft = _tiny()
    model = cuda_draft.target.to("cuda")
    cuda_draft.to("cuda")
    reqs = {str(i): (p, SamplingParams(temperature=0, max_tokens=40), {})
            for i, p in enumerate(random_prompts(8, 32, seed=3))}
    plain = run(engine(model, cuda_graphs=False), reqs)
    for compile_ in (False, True):
        spec = engine(model, cuda_draft, draft_top_k=4, draft_depth=4, draft_tokens=10, max_num_seqs=4,
                      draft_compile=compile_)
        assert isinstance(spec.speculator.grow_step.graphs.pool, GraphPool)
        assert_same(plain, run(spec, reqs))
        stats = spec.stats()
        assert stats["spec_draft_graphs"] > 0 and stats["spec_draft_graph_replays"] > stats["spec_draft_graphs"]
        assert stats["spec_draft_graph_pool_bytes"] > 0
