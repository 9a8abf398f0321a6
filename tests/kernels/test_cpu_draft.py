"""The draft's C++ kernels on CPU (kernels/csrc/decoder_cpu.cpp, `EngineConfig.cpu_draft_kernel`):
tree growth and catch-up as the eager PyTorch draft computes them, for each model family's layer,
and an engine whose greedy output is unchanged by them."""

import pytest
import torch

from reasonrl.engine.spec.draft import DraftHead
from reasonrl.engine.spec.draft_state import DraftState, NewestRowAttention
from reasonrl.engine.spec.grow import GrowStep
from reasonrl.engine.spec.visual import RowSource
from reasonrl.engine.weight_layout import small_products, store_wide_weights_column_major
from reasonrl.kernels import cpu_ops
from reasonrl.models.model import DecoderLM
from reasonrl.models.tiny import init_weights, tiny_config
from tests.spec.test_draft_graphs import _assert_same_search, _inputs, _no_rows
from tests.spec.test_spec_engine import assert_same, demo, engine, greedy_requests, plain_run, run  # noqa: F401  (demo: fixture)

pytestmark = pytest.mark.skipif(not cpu_ops.available(), reason="the CPU kernels could not be built here")


def _draft(family: str, column_major: bool) -> DraftHead:
    """A random draft on a random target of `family` (qwen2: q/k/v biases; qwen3: per-head q/k norms;
    llama: neither), its products as the engine runs them."""
    model = init_weights(DecoderLM(tiny_config(family, vocab_size=40, hidden_size=64, eos_token_ids=(1,))), std=0.3, seed=1)
    draft = init_weights(DraftHead(model), std=0.3, seed=2)
    for p in draft.parameters():  # nonzero biases and norms: a kernel that skipped one would differ
        if p.dim() == 1:
            p.data.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    if column_major:  # the engine's layout: the tied embedding and LM head become strided
        store_wide_weights_column_major(model, draft)
    small_products(model, draft)
    return draft


FAMILIES = [("qwen2", True), ("qwen3", True), ("llama", False)]


@pytest.mark.parametrize("family,column_major", FAMILIES)
def test_a_native_tree_is_the_eager_tree(family, column_major):
    draft = _draft(family, column_major)
    native, eager = GrowStep(draft, compile=False, native=True), GrowStep(draft, compile=False)
    assert native.native and not eager.native
    for seed, rows, top_k, depth in ((0, [5, 37, 0], 3, 4), (1, [12], 2, 6), (2, [1, 1, 1, 1, 1], 4, 3), (3, [9, 3], 1, 5),
                                     (4, [20], 50, 2)):  # top-k above the vocabulary: the whole vocabulary
        states, root_out, pos = _inputs(draft, rows, seed)
        with torch.no_grad():
            got = native.tree(states, root_out, pos, top_k, depth, _no_rows(draft))
            want = eager.tree(states, root_out, pos, top_k, depth, _no_rows(draft))
        assert got.k == want.k == min(top_k, 40) and got.depth == want.depth == depth
        _assert_same_search(got, want)
        roots = list(range(len(rows)))
        assert [(t.tokens, t.parents) for t in got.select(roots, 8, [depth] * len(rows))] == \
            [(t.tokens, t.parents) for t in want.select(roots, 8, [depth] * len(rows))]


def _eager_catch_up(draft, states, x, positions, lengths):
    newest = torch.tensor(lengths).cumsum(0) - 1
    return draft.decode_newest(x, positions, newest, NewestRowAttention(states, lengths, _no_rows(draft)))


@pytest.mark.parametrize("family,column_major", FAMILIES)
def test_a_native_catch_up_is_the_eager_one(family, column_major):
    draft = _draft(family, column_major)
    c, g = draft.config, torch.Generator().manual_seed(5)
    states, _, _ = _inputs(draft, [7, 0, 30], seed=6)
    step = GrowStep(draft, compile=False, native=True)
    # ragged: each sequence's rows see its own committed and new rows only; then a prompt's length
    for lengths in ([3, 1, 6], [2, 300, 1]):
        x = torch.randn(sum(lengths), c.hidden_size, generator=g)
        starts = [st.cache.len for st in states]
        positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lengths)])
        with torch.no_grad():
            got = step.catch_up(states, x, positions, lengths)
            want = _eager_catch_up(draft, states, x, positions, lengths)
        # outputs reach about 60 here: both paths are 4-5e-5 from a float64 evaluation (measured)
        assert got[0].shape == (3, c.hidden_size) and got[1].shape == (sum(lengths), c.num_kv_heads, c.head_dim)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # M-RoPE positions are left to the PyTorch path
    assert step.catch_up(states[:1], x[:3], positions[:3].expand(3, -1), [3]) is None


@pytest.mark.parametrize("family,column_major", FAMILIES)
def test_a_text_catch_up_fuses_its_rows_as_the_draft_does(family, column_major):
    draft = _draft(family, column_major)
    c, g = draft.config, torch.Generator().manual_seed(7)
    states, _, _ = _inputs(draft, [7, 0, 30], seed=8)
    step = GrowStep(draft, compile=False, native=True)
    for lengths in ([3, 1, 6], [200, 1, 2]):  # a prompt's catch-up too
        sources = [RowSource(torch.randint(0, c.vocab_size, (n,), generator=g).tolist(),
                             torch.randn(n, c.hidden_size, generator=g), st.cache.len - 1) for st, n in zip(states, lengths)]
        with torch.no_grad():
            got = step.catch_up_text(states, sources)
            x = draft.fuse(draft.embed(torch.tensor([t for src in sources for t in src.ids])),
                           torch.cat([src.features for src in sources]))
            positions = torch.cat([torch.arange(src.start + 1, src.end + 1) for src in sources])
            want = _eager_catch_up(draft, states, x, positions, lengths)  # rows fused in PyTorch
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    shifted = [RowSource(src.ids, src.features, src.start + 1) for src in sources]  # positions matter
    with torch.no_grad():
        assert not torch.allclose(step.catch_up_text(states, shifted)[0], got[0], atol=1e-3)
    assert GrowStep(draft, compile=False).catch_up_text(states, sources) is None  # no kernel
    weights = cpu_ops.draft_weights(draft)
    ks, vs = [st.cache.view()[0] for st in states[:1]], [st.cache.view()[1] for st in states[:1]]
    with pytest.raises(RuntimeError, match="3 feature rows but 2 token ids"):
        cpu_ops.draft_catch_up_cpu(weights, c, [1, 2], [torch.zeros(3, c.hidden_size)], [7], ks, vs)
    with pytest.raises(RuntimeError, match="sequence 0's features must be float32"):
        cpu_ops.draft_catch_up_cpu(weights, c, [1], [torch.zeros(1, c.hidden_size + 1)], [7], ks, vs)
    with pytest.raises(RuntimeError, match="token id 99 out of range"):
        cpu_ops.draft_catch_up_cpu(weights, c, [99], [torch.zeros(1, c.hidden_size)], [7], ks, vs)
    with pytest.raises(RuntimeError, match="sequence 0 has no new rows"):
        cpu_ops.draft_catch_up_cpu(weights, c, [], [torch.zeros(0, c.hidden_size)], [7], ks, vs)


def test_the_kernels_refuse_bad_inputs_by_name_and_decline_other_dtypes():
    draft = _draft("qwen2", True)
    weights, c = cpu_ops.draft_weights(draft), draft.config
    states, root_out, pos = _inputs(draft, [4, 2], seed=0)
    ks = [st.cache.view()[0] for st in states]
    vs = [st.cache.view()[1] for st in states]
    with pytest.raises(RuntimeError, match="2 sequences but 1 key"):
        cpu_ops.draft_tree_cpu(weights, c, root_out, pos, ks[:1], vs[:1], 2, 3)
    with pytest.raises(RuntimeError, match="19 weight tensors"):
        cpu_ops.draft_tree_cpu(weights[:-1], c, root_out, pos, ks, vs, 2, 3)
    with pytest.raises(RuntimeError, match="x must be float32"):
        cpu_ops.draft_rows_cpu(weights, c, torch.zeros(4, c.hidden_size), torch.arange(4), ks, vs, [2, 1])
    with pytest.raises(RuntimeError, match="sequence 1's committed keys"):
        cpu_ops.draft_tree_cpu(weights, c, root_out, pos, [ks[0], ks[1][:, :1]], [vs[0], vs[1][:, :1]], 2, 3)
    assert cpu_ops.draft_weights(draft.double()) is None
    assert not GrowStep(draft, compile=False, native=True).native  # a float64 draft runs the PyTorch path


def test_the_kernels_read_weights_updated_in_place():
    draft = _draft("llama", False)
    step = GrowStep(draft, compile=False, native=True)
    states, root_out, pos = _inputs(draft, [6], seed=3)
    with torch.no_grad():
        before = step.tree(states, root_out, pos, 3, 3, _no_rows(draft)).tensors()
        draft.layer.mlp.down_proj.weight.mul_(-2)  # as a colocated trainer's step changes it
        after = step.tree(states, root_out, pos, 3, 3, _no_rows(draft))
        _assert_same_search(after, GrowStep(draft, compile=False).tree(states, root_out, pos, 3, 3, _no_rows(draft)))
    assert not all(torch.equal(a, b) for a, b in zip(before, after.tensors()))


@pytest.mark.slow
def test_an_engine_with_the_draft_kernels_keeps_greedy_output_and_accepts_as_many(demo):
    policy, _, draft, prompts = demo
    reqs = greedy_requests(prompts[:8])
    plain = plain_run(policy, reqs)
    native = engine(policy, draft, max_model_len=256, max_num_seqs=4, draft_top_k=2, draft_depth=6, draft_tokens=8)
    eager = engine(policy, draft, max_model_len=256, max_num_seqs=4, draft_top_k=2, draft_depth=6, draft_tokens=8,
                   cpu_draft_kernel=False)
    assert native.stats()["spec_draft_kernel"] and not eager.stats()["spec_draft_kernel"]
    assert_same(plain, run(native, reqs))
    assert_same(plain, run(eager, reqs))
    # the same draft, rounded a little differently: the same proposals, about as many accepted
    assert native.stats()["spec_accepted_length"] > 3
    assert abs(native.stats()["spec_accepted_length"] - eager.stats()["spec_accepted_length"]) < 0.3
