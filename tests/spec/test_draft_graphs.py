"""The draft's steps in CUDA graphs (engine/spec/grow.py, `DraftGraphs`): tree growth and catch-up.

Every unit test runs twice: on CPU with a stand-in pool whose "graph" reruns the captured
function on its static inputs (the key, padding, budget and re-read logic are the real ones), and
on CUDA with real graphs (marked `gpu`), where a replay that read stale inputs or a value frozen
at capture would differ from the eager result."""

import pytest
import torch

from reasonrl.engine import SamplingParams
from reasonrl.engine.cuda_graphs import GraphPool
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.engine.spec.draft_state import DraftState, NewestRowAttention
from reasonrl.engine.spec.grow import DraftGraphs, GrowStep, row_buckets
from reasonrl.models.model import DecoderLM
from reasonrl.models.tiny import init_weights, tiny_config
from tests.engine.test_compiled import CPUPool
from tests.spec.test_spec_engine import assert_same, demo, engine, greedy_requests, plain_run, random_prompts, run  # noqa: F401  (demo: fixture)


def _tiny(device: str = "cpu") -> DraftHead:
    """A random draft on a random target (few tokens accepted: every path of a tree is exercised)."""
    model = init_weights(DecoderLM(tiny_config("qwen2", vocab_size=32, hidden_size=64, eos_token_ids=(1,))), std=0.3, seed=1)
    draft = init_weights(DraftHead(model), std=0.3, seed=2)
    model.to(device)
    return draft.to(device)


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def draft(request):
    return _tiny(request.param)


def _pool(draft, budget: int, grows=lambda static: 0):
    """The real pool on CUDA; on CPU the stand-in, whose captures grow it by `grows(static)` bytes."""
    dev = draft.target.device
    return GraphPool(dev, budget) if dev.type == "cuda" else CPUPool(budget, grows)


def _inputs(draft, rows: list[int], seed: int):
    """Draft states with `rows` committed rows each, the roots' outputs and positions."""
    g, c, dev = torch.Generator().manual_seed(seed), draft.config, draft.target.device
    states = []
    for n in rows:
        st = DraftState.at(0)
        if n:
            st.cache.append(torch.randn(n, c.num_kv_heads, c.head_dim, generator=g).to(dev),
                            torch.randn(n, c.num_kv_heads, c.head_dim, generator=g).to(dev))
        states.append(st)
    return states, torch.randn(len(rows), c.hidden_size, generator=g).to(dev), torch.tensor(rows, device=dev)


def _no_rows(draft):
    return torch.empty(0, draft.config.num_kv_heads, draft.config.head_dim, device=draft.target.device)


def _assert_same_search(a, b):
    for x, y in zip(a.tensors(), b.tensors(), strict=True):
        assert x.shape == y.shape
        if x.is_floating_point():
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)  # padded attention rounds differently
        else:
            assert torch.equal(x, y)


def _graphs(draft, pool, buckets=(1, 2, 4), max_rows=200):
    return DraftGraphs(draft.config, list(buckets), max_rows, draft.target.config.vocab_size, pool)


def _group_bytes(draft, batch: int, rows: int) -> int:
    """What a group's static buffers take: root outputs, roots' positions, committed keys and values, row counts."""
    c, item = draft.config, draft.target.dtype.itemsize
    return batch * (c.hidden_size + 2 * rows * c.num_kv_heads * c.head_dim) * item + 2 * batch * 8


def test_row_buckets_double_from_64_until_one_holds_the_longest_context():
    assert row_buckets(200) == [64, 128, 256] and row_buckets(64) == [64] and row_buckets(1) == [64]


@torch.no_grad()
def test_a_captured_tree_grows_what_the_eager_one_does_and_reads_new_inputs_at_every_replay(draft):
    graphs = _graphs(draft, _pool(draft, 1 << 30))
    captured, eager = GrowStep(draft, compile=False, graphs=graphs), GrowStep(draft, compile=False)
    # three sequences (batch bucket 4: one padding row), one with no committed rows; rows bucket 64
    for seed, rows in enumerate(([5, 37, 0], [60, 2, 9], [1, 1, 1])):
        states, root_out, pos = _inputs(draft, rows, seed)
        got = captured.tree(states, root_out, pos, 3, 4, _no_rows(draft))
        _assert_same_search(got, eager.tree(states, root_out, pos, 3, 4, _no_rows(draft)))
        assert got.tokens[0].shape[0] == 3  # the padding row is dropped
    assert graphs.captures == 1 and graphs.replays == 3  # one key: captured once
    # another tree shape, batch size or row bucket is another graph
    for rows, top_k, depth in (([5, 37, 0], 2, 4), ([5, 37, 0], 3, 3), ([5], 3, 4), ([5, 100, 0], 3, 4)):
        states, root_out, pos = _inputs(draft, rows, 7)
        _assert_same_search(captured.tree(states, root_out, pos, top_k, depth, _no_rows(draft)),
                            eager.tree(states, root_out, pos, top_k, depth, _no_rows(draft)))
    assert graphs.captures == 5 and sorted(graphs.groups) == [(1, 64), (4, 64), (4, 128)]
    assert captured.builds() == 5  # what the speculator compares across a step
    # grown to the shape's depth (one graph for every sequence's room), cut to the room by selection
    states, root_out, pos = _inputs(draft, [5, 37, 0], 8)
    deep = captured.tree(states, root_out, pos, 3, 2, _no_rows(draft), graph_depth=4)
    assert graphs.captures == 5 and deep.depth == 4  # the (4, 64, 3, 4) graph again
    want = eager.tree(states, root_out, pos, 3, 2, _no_rows(draft))
    assert [t.size for t in deep.select([0, 1, 2], 6, [2, 2, 1])] == [t.size for t in want.select([0, 1, 2], 6, [2, 2, 1])]
    for a, b in zip(deep.select([0, 1, 2], 6, [2, 2, 1]), want.select([0, 1, 2], 6, [2, 2, 1])):
        assert (a.tokens, a.parents) == (b.tokens, b.parents)


@torch.no_grad()
def test_the_shortest_contexts_graphs_are_captured_at_start_for_every_batch_bucket(draft):
    graphs = _graphs(draft, _pool(draft, 1 << 30), buckets=(1, 2, 4))
    step = GrowStep(draft, compile=False, graphs=graphs)
    step.warm_up(3, 4)  # full tree top-k 3, depth 4: catch-ups of up to 5 rows (buckets 1, 2, 4, 8)
    assert sorted(graphs.graphs) == sorted([("tree", b, 64, 3, 4) for b in (1, 2, 4)] +
                                           [("catch_up", b, 64, n) for b in (1, 2, 4) for n in (1, 2, 4, 8)])
    assert graphs.stats()["spec_draft_capture_seconds"] > 0
    captures = graphs.captures
    states, root_out, pos = _inputs(draft, [5, 37, 0], 0)  # a short context at batch 3: nothing new to capture
    _assert_same_search(step.tree(states, root_out, pos, 3, 4, _no_rows(draft)),
                        GrowStep(draft, compile=False).tree(states, root_out, pos, 3, 4, _no_rows(draft)))
    assert graphs.captures == captures and graphs.replays > 0


@torch.no_grad()
def test_draft_steps_beyond_the_buckets_or_the_memory_budget_run_eager(draft):
    states, root_out, pos = _inputs(draft, [5, 37, 0], 0)
    eager = GrowStep(draft, compile=False).tree(states, root_out, pos, 3, 4, _no_rows(draft))
    # the static buffers of the (4, 64) group do not fit: nothing is allocated or captured
    tight = _graphs(draft, _pool(draft, _group_bytes(draft, 4, 64) - 1))
    step = GrowStep(draft, compile=False, graphs=tight)
    _assert_same_search(step.tree(states, root_out, pos, 3, 4, _no_rows(draft)), eager)
    assert tight.captures == 0 and (4, 64) in tight.skipped and tight.pool.bytes == 0 and tight.groups == {}
    # the buffers fit, the capture would not: tried once, then the key grows eager without trying again
    pool = _pool(draft, _group_bytes(draft, 4, 64) + 1, grows=lambda static: 2)
    refused = _graphs(draft, pool)
    step = GrowStep(draft, compile=False, graphs=refused)
    for _ in range(2):
        _assert_same_search(step.tree(states, root_out, pos, 3, 4, _no_rows(draft)), eager)
    assert refused.captures == 1 and refused.replays == 0 and ("tree", 4, 64, 3, 4) in refused.skipped
    assert pool.bytes == refused.groups[(4, 64)].nbytes == _group_bytes(draft, 4, 64)  # the failed capture is not charged
    # more sequences than the largest batch bucket, or rows beyond the largest row bucket
    small = _graphs(draft, _pool(draft, 1 << 30), buckets=(1, 2), max_rows=64)
    step = GrowStep(draft, compile=False, graphs=small)
    _assert_same_search(step.tree(states, root_out, pos, 3, 4, _no_rows(draft)), eager)
    long_states, long_out, long_pos = _inputs(draft, [65], 1)
    step.tree(long_states, long_out, long_pos, 3, 4, _no_rows(draft))
    assert small.captures == 0 and small.groups == {}


@torch.no_grad()
def test_a_draft_step_whose_capture_fails_runs_eager_and_is_not_tried_again(draft, caplog):
    graphs = _graphs(draft, _pool(draft, 1 << 30))
    graphs.pool.record = lambda fn, static: (_ for _ in ()).throw(torch.OutOfMemoryError("out of memory"))
    step = GrowStep(draft, compile=False, graphs=graphs)
    states, root_out, pos = _inputs(draft, [5, 37, 0], 0)
    for _ in range(2):
        _assert_same_search(step.tree(states, root_out, pos, 3, 4, _no_rows(draft)),
                            GrowStep(draft, compile=False).tree(states, root_out, pos, 3, 4, _no_rows(draft)))
    assert "capturing a CUDA graph failed" in caplog.text and graphs.captures == 1 and graphs.graphs == {}


@torch.no_grad()
def test_a_captured_catch_up_decodes_what_the_eager_one_does_and_long_ones_run_eager(draft):
    graphs = _graphs(draft, _pool(draft, 1 << 30))
    step = GrowStep(draft, compile=False, graphs=graphs)
    g, dev, h = torch.Generator().manual_seed(3), draft.target.device, draft.config.hidden_size
    for seed, (past, lengths) in enumerate((([5, 37, 0], [3, 1, 5]), ([9, 2, 60], [6, 4, 2]))):  # one key
        states, _, _ = _inputs(draft, past, seed)
        x = torch.randn(sum(lengths), h, generator=g).to(dev)
        positions = torch.cat([torch.arange(p + 1, p + 1 + n) for p, n in zip(past, lengths)]).to(dev)
        got = step.catch_up(states, x, positions, lengths)
        newest = torch.tensor(lengths, device=dev).cumsum(0) - 1
        want = draft.decode_newest(x, positions, newest, NewestRowAttention(states, lengths, _no_rows(draft)))
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # padded attention rounds differently
    assert graphs.captures == 1 and graphs.replays == 2 and list(graphs.graphs) == [("catch_up", 4, 64, 8)]
    # a catch-up longer than the largest bucket (a prompt's), or M-RoPE positions: eager
    states, _, _ = _inputs(draft, [5], 0)
    assert step.catch_up(states, torch.randn(17, h, device=dev), torch.arange(6, 23, device=dev), [17]) is None
    assert step.catch_up(states, torch.randn(2, h, device=dev), torch.zeros(3, 2, dtype=torch.long, device=dev), [2]) is None
    assert graphs.captures == 1


@pytest.mark.slow
def test_speculation_with_captured_draft_steps_is_exact_and_capture_steps_are_not_measured(demo):
    policy_model, _, draft, prompts = demo
    reqs = greedy_requests(prompts[:6])
    plain = plain_run(policy_model, reqs)
    eager = engine(policy_model, draft, max_model_len=256, max_num_seqs=4)
    spec = engine(policy_model, draft, max_model_len=256, max_num_seqs=4)
    graphs = _graphs(draft, CPUPool(1 << 30, lambda static: 0), buckets=(1, 2, 4), max_rows=256)
    spec.speculator.grow_step = GrowStep(draft, compile=False, graphs=graphs)
    logs, observe = [], spec.speculator.policy.observe
    spec.speculator.policy.observe = lambda log, seconds: (logs.append((log.built, graphs.captures)), observe(log, seconds))
    assert_same(plain, run(spec, reqs))
    assert_same(plain, run(eager, reqs))
    stats = spec.stats()
    assert stats["spec_draft_graph_replays"] > 0 and stats["spec_draft_graphs"] == graphs.captures > 0
    assert 0 < stats["spec_draft_catch_up_graphs"] < stats["spec_draft_graphs"]  # catch-ups and trees both captured
    # exactly the steps that captured a graph (a catch-up's, a tree's or both) are flagged, which
    # the adaptive policy skips (tests/spec/test_compiled_draft.py; trees are fixed-size here)
    captured = [now > before for (_, before), (_, now) in zip([(False, 0), *logs], logs)]
    assert [built for built, _ in logs] == captured and any(captured)
    # the captured steps propose what the eager ones do, up to rounding: about as many accepted
    assert abs(stats["spec_accepted_length"] - eager.stats()["spec_accepted_length"]) < 0.5


@pytest.mark.gpu
def test_cuda_graph_draft_steps_keep_greedy_output_exact_on_a_gpu():
    cuda_draft = _tiny("cuda")
    model = cuda_draft.target
    reqs = {str(i): (p, SamplingParams(temperature=0, max_tokens=40), {})
            for i, p in enumerate(random_prompts(8, 32, seed=3))}
    plain = run(engine(model, cuda_graphs=False), reqs)
    eager = engine(model, cuda_draft, draft_top_k=4, draft_depth=4, draft_tokens=10, max_num_seqs=4, cuda_graphs=False)
    assert_same(plain, run(eager, reqs))
    for compile_ in (False, True):
        spec = engine(model, cuda_draft, draft_top_k=4, draft_depth=4, draft_tokens=10, max_num_seqs=4,
                      draft_compile=compile_)
        assert type(spec.speculator.grow_step.graphs.pool) is GraphPool
        assert_same(plain, run(spec, reqs))
        stats = spec.stats()
        assert stats["spec_draft_graphs"] > stats["spec_draft_catch_up_graphs"] > 0
        assert stats["spec_draft_graph_replays"] > stats["spec_draft_graphs"]
        assert 0 < stats["spec_draft_graph_pool_bytes"] <= (1 << 30)
        assert abs(stats["spec_accepted_length"] - eager.stats()["spec_accepted_length"]) < 0.3
