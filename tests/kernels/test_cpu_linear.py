"""The C++ small-batch linear kernel on CPU (kernels/csrc/small_linear_cpu.cpp): against a float64
product in both weight layouts, a row's result the same alone, in any batch and with any thread
count, what it refuses or declines, and the engine taking it for decode rows only."""

import pytest
import torch
import torch.nn.functional as F

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.weight_layout import SmallLinear, small_products
from reasonrl.kernels import cpu_ops
from reasonrl.kernels.cpu_ops import small_linear_cpu
from reasonrl.models.loader import load_model

pytestmark = pytest.mark.skipif(not cpu_ops.available(), reason=f"kernels not built: {cpu_ops.status()}")

# (outputs, inputs): tiles of 64 outputs and blocks of 8 (16) inputs with and without remainders,
# one output, one input, and the 20M benchmark model's wide and narrow shapes
SHAPES = [(96, 64), (64, 96), (51, 37), (1, 64), (64, 1), (200, 13), (2816, 512), (512, 1408)]


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _weight(out_features, in_features, column_major, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g)
    return w.t().contiguous().t() if column_major else w


@pytest.mark.parametrize("column_major", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_a_float64_product_in_both_layouts(shape, bias, column_major):
    out_features, in_features = shape
    w = _weight(out_features, in_features, column_major)
    b = torch.randn(out_features) if bias else None
    for rows in (1, 2, 3, 4):
        x = torch.randn(rows, in_features)
        y = small_linear_cpu(x, w, b)
        exact = F.linear(x.double(), w.double(), None if b is None else b.double())
        assert y.shape == (rows, out_features) and y.dtype == torch.float32
        # fp32 sums of in_features terms: error grows with sqrt(in) times the terms' size
        tol = 1e-6 * in_features ** 0.5 * (x.abs().max() * w.abs().max()).item() * 4
        torch.testing.assert_close(y.double(), exact, atol=tol, rtol=0)


@pytest.mark.parametrize("column_major", [True, False])
def test_a_rows_result_does_not_depend_on_the_batch_or_the_thread_count(threads, column_major):
    w, b = _weight(2816, 512, column_major), torch.randn(2816)
    x = torch.randn(4, 512)
    threads(2)
    together = small_linear_cpu(x, w, b)
    for r in range(4):
        assert torch.equal(small_linear_cpu(x[r: r + 1], w, b)[0], together[r])
    assert torch.equal(small_linear_cpu(x.flip(0), w, b), together.flip(0))
    threads(1)
    assert torch.equal(small_linear_cpu(x, w, b), together)


def test_declines_what_it_does_not_cover_and_refuses_bad_shapes():
    x, w = torch.randn(2, 64), torch.randn(96, 64)
    assert small_linear_cpu(x.double(), w.double()) is None
    assert small_linear_cpu(x.bfloat16(), w.bfloat16()) is None
    assert small_linear_cpu(x, torch.randn(96, 128)[:, ::2]) is None  # neither row- nor column-major
    assert small_linear_cpu(x[0], w) is None  # one-dimensional input: F.linear's business
    with pytest.raises(RuntimeError, match="do not match"):
        small_linear_cpu(torch.randn(2, 63), w)
    with pytest.raises(RuntimeError, match="bias must be float32 of 96 outputs"):
        small_linear_cpu(x, w, torch.randn(95))


def test_a_weight_written_in_place_is_read_afresh():
    w = _weight(128, 64, column_major=True)
    x = torch.randn(1, 64)
    small_linear_cpu(x, w)
    w.mul_(2)  # a weight sync writes into the same storage
    torch.testing.assert_close(small_linear_cpu(x, w), F.linear(x, w), atol=1e-4, rtol=0)


def test_the_fake_kernel_gives_the_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        y = torch.ops.reasonrl_cpu.small_linear(torch.empty(3, 64), torch.empty(96, 64), None)
    assert y.shape == (3, 96)


def test_small_linear_takes_the_kernel_for_a_few_rows_without_gradients(monkeypatch):
    calls = []
    original = cpu_ops.small_linear_cpu
    monkeypatch.setattr(cpu_ops, "small_linear_cpu", lambda *a: calls.append(a[0].shape[0]) or original(*a))
    layer = torch.nn.Linear(64, 96)
    small_products(layer)
    assert isinstance(layer, SmallLinear) and layer.kernel
    with torch.no_grad():
        for rows in (1, 4, 5):
            x = torch.randn(rows, 64)
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=0)
    assert calls == [1, 4]  # 5 rows: a matrix product, F.linear's
    x = torch.randn(2, 64, requires_grad=True)
    layer(x).sum().backward()  # the kernel has no backward: a forward that records gradients skips it
    assert calls == [1, 4] and x.grad is not None


def _engine(path, **kw):
    model = load_model(path, "cpu", torch.float32)
    return LLMEngine(model, None, EngineConfig(max_num_seqs=4, max_model_len=128, kv_cache_memory=1 << 22, **kw))


def test_the_engine_decodes_the_same_with_the_kernel_and_takes_it_only_when_on(hf_checkpoint, monkeypatch):
    path, _ = hf_checkpoint("qwen2")
    rows = []
    original = cpu_ops.small_linear_cpu
    monkeypatch.setattr(cpu_ops, "small_linear_cpu", lambda x, *a: rows.append(x.shape[0]) or original(x, *a))
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9], list(range(10, 40))]
    runs = {}
    for on in (True, False):
        engine = _engine(path, cpu_linear_kernel=on, cpu_forward_kernel=False)  # the PyTorch forward's products
        assert engine.stats()["cpu_linear_kernel"] is on
        rows.clear()
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
        runs[on] = {k: v.outputs[0] for k, v in engine.drain().items()}
        if on:  # decode steps of 1-3 sequences take it; prefill steps (more rows) never do
            assert rows and max(rows) <= 3
        else:
            assert rows == []
    for k, off in runs[False].items():
        assert runs[True][k].token_ids == off.token_ids, k
        torch.testing.assert_close(torch.tensor(runs[True][k].logprobs), torch.tensor(off.logprobs), atol=1e-4, rtol=0)
