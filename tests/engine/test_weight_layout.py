"""Column-major wide weights and small products spread over threads on CPU (engine/weight_layout.py):
which matrices move, that their values and everything reading them by shape stay the same, that the
split products are bit-identical to the plain ones, and that decoding is unchanged. The C++ kernel
of small products is tested in tests/kernels/test_cpu_linear.py."""

import pytest
import torch

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.weight_layout import SmallLinear, is_column_major, small_products, store_wide_weights_column_major
from reasonrl.models.loader import load_model, save_model

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], list(range(10, 40)), [5, 6]]


def _engine(path, **kw):
    model = load_model(path, "cpu", torch.float32)
    return LLMEngine(model, None, EngineConfig(max_num_seqs=4, max_model_len=128, kv_cache_memory=1 << 22, **kw))


def _linears(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_wide_weights_move_to_column_major_with_their_values_and_narrow_ones_stay(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    before = {k: v.clone() for k, v in load_model(path, "cpu", torch.float32).state_dict().items()}
    engine = _engine(path)
    linears = _linears(engine.model)
    wide = {n for n, m in linears.items() if m.out_features >= m.in_features}
    assert {"lm_head", "layers.0.self_attn.qkv_proj", "layers.0.mlp.gate_up_proj"} <= wide
    assert "layers.0.mlp.down_proj" not in wide  # more inputs than outputs: row-major measured faster
    for name, m in linears.items():
        assert is_column_major(m.weight) == (name in wide), name
    for k, v in engine.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    moved = sum(linears[n].weight.numel() * 4 for n in wide)
    assert engine.stats()["column_major_weight_bytes"] == moved


def test_off_or_already_moved_leaves_the_weights_alone(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    engine = _engine(path, column_major_weights=False)
    assert not any(is_column_major(m.weight) for m in _linears(engine.model).values())
    assert engine.stats()["column_major_weight_bytes"] == 0
    assert store_wide_weights_column_major(engine.model) > 0
    assert store_wide_weights_column_major(engine.model) == 0  # a second call has nothing to move


def test_a_tied_embedding_moves_once_and_embeds_as_before(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2", tie_word_embeddings=True)
    reference = load_model(path, "cpu", torch.float32)
    engine = _engine(path)
    model = engine.model
    assert model.lm_head.weight is model.embed_tokens.weight and is_column_major(model.lm_head.weight)
    ids = torch.tensor([0, 5, 17, 255])
    assert torch.equal(model.embed_tokens(ids), reference.embed_tokens(ids))


def test_greedy_decoding_matches_the_row_major_engine(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    outputs = []
    for on in (True, False):
        engine = _engine(path, column_major_weights=on, split_small_matmuls=on, cpu_linear_kernel=on)
        assert is_column_major(engine.model.lm_head.weight) == on
        for i, p in enumerate(PROMPTS):
            engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
        outputs.append({k: v.outputs[0] for k, v in engine.drain().items()})
    col, row = outputs
    for k in row:
        assert col[k].token_ids == row[k].token_ids, k
        a, b = torch.tensor(col[k].logprobs), torch.tensor(row[k].logprobs)
        assert len(a) == 16
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # only the summation order differs


def test_weights_written_later_keep_the_layout_and_save_row_major(hf_checkpoint, tmp_path):
    path, _ = hf_checkpoint("qwen2")
    engine = _engine(path)
    new = {k: v + 0.01 for k, v in load_model(path, "cpu", torch.float32).state_dict().items()}
    engine.set_weights(new)
    assert is_column_major(engine.model.lm_head.weight)
    assert torch.equal(engine.model.lm_head.weight, new["lm_head.weight"])
    save_model(engine.model, tmp_path / "saved")
    reloaded = load_model(tmp_path / "saved", "cpu", torch.float32)
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, engine.model.state_dict()[k]), k
    engine.load_weights(path)
    assert is_column_major(engine.model.lm_head.weight)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("column_major", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_split_products_are_bit_identical_and_larger_ones_are_not_split(two_threads, column_major, bias, monkeypatch):
    torch.manual_seed(0)
    calls = []
    for name in ("bmm", "baddbmm"):
        original = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, f=original, **k: calls.append(a[0].shape) or f(*a, **k))
    for out_features, in_features in ((96, 64), (64, 96), (51, 64), (64, 51)):  # 51 outputs: not divisible by 2
        split = torch.nn.Linear(in_features, out_features, bias=bias)
        if column_major:
            split.weight.data = split.weight.data.t().contiguous().t()
        weight, b = split.weight.detach().clone(), None if split.bias is None else split.bias.detach().clone()
        weight = weight.t().contiguous().t() if column_major else weight  # the same layout, unsplit
        small_products(split, kernel=False)
        assert isinstance(split, SmallLinear) and isinstance(split, torch.nn.Linear)
        with torch.no_grad():
            for rows in (1, 2, 4, 5, 16):
                x = torch.randn(rows, in_features)
                before = len(calls)
                y = split(x)
                assert torch.equal(y, torch.nn.functional.linear(x, weight, b)), (out_features, in_features, rows)
                assert len(calls) - before == (rows <= 4 and out_features % 2 == 0)  # 5 and 16 rows: F.linear


def test_one_thread_runs_the_plain_product(two_threads):
    layer = torch.nn.Linear(64, 96)
    reference = layer(torch.ones(1, 64))
    small_products(layer, kernel=False)
    torch.set_num_threads(1)
    assert torch.equal(layer(torch.ones(1, 64)), reference)


def test_the_engine_swaps_its_linears_on_cpu_unless_told_not_to(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    keys = set(load_model(path, "cpu", torch.float32).state_dict())
    on, off = _engine(path), _engine(path, split_small_matmuls=False, cpu_linear_kernel=False)
    split_only = _engine(path, cpu_linear_kernel=False)
    assert all(isinstance(m, SmallLinear) and m.kernel and m.split for m in _linears(on.model).values())
    assert all(not m.kernel and m.split for m in _linears(split_only.model).values())
    assert not any(isinstance(m, SmallLinear) for m in _linears(off.model).values())
    assert set(on.model.state_dict()) == keys


def test_split_products_follow_new_weights_and_carry_gradients(two_threads):
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 64)
    small_products(layer, kernel=False)
    x = torch.randn(2, 32)
    with torch.no_grad():
        layer(x)
        layer.weight.data = torch.randn(64, 32)  # new storage, as a weight sync may give
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    layer(x).sum().backward()  # a colocated trainer's small batch goes through the split product too
    assert layer.weight.grad is not None
    torch.testing.assert_close(layer.weight.grad, torch.ones(2, 64).t() @ x)

