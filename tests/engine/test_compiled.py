"""Compiled and graph-captured decode (engine/compiled.py, cuda_graphs.py): buckets, padding,
fallbacks, and outputs token-identical to eager decoding."""

import pytest
import torch

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.compiled import FastDecode, bucket_sizes, pad_rows, pick_bucket
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.cuda_graphs import DecodeGraphs, GraphPool
from reasonrl.models.loader import load_model

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], list(range(10, 40)), [3] * 17, [5, 6]]


def test_buckets_are_powers_of_two_up_to_the_cap_and_the_cap_itself():
    assert bucket_sizes(256, 256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert bucket_sizes(48, 256) == [1, 2, 4, 8, 16, 32, 48]
    assert bucket_sizes(64, 8) == [1, 2, 4, 8]
    assert bucket_sizes(1, 256) == [1]


def test_a_batch_takes_the_smallest_bucket_that_holds_it_and_none_above_the_largest():
    buckets = [1, 2, 4, 8]
    assert [pick_bucket(n, buckets) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert pick_bucket(9, buckets) is None


def test_padding_rows_repeat_the_last_real_row():
    x = torch.tensor([[1, 2], [3, 4], [5, 6]])
    padded = pad_rows(x, 5)
    assert padded.tolist() == [[1, 2], [3, 4], [5, 6], [5, 6], [5, 6]]
    assert pad_rows(x, 3) is x
    # a padding row writes its real row's cache slot again with the same key and value: nothing changes
    assert pad_rows(torch.tensor([7, 9]), 4).tolist() == [7, 9, 9, 9]


def _engine(path, **kw):
    """The PyTorch forward, eager or compiled (the C++ forward is tests/engine/test_cpu_forward.py's)."""
    kw.setdefault("cpu_forward_kernel", False)
    model = load_model(path, "cpu", torch.float32)
    return LLMEngine(model, None, EngineConfig(max_num_seqs=4, max_model_len=200, kv_cache_memory=1 << 22, **kw))


def _greedy(engine):
    for i, p in enumerate(PROMPTS):
        engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=12 + 5 * i, ignore_eos=True))
    return {k: v.outputs[0].token_ids for k, v in engine.drain().items()}


def test_nothing_is_compiled_or_captured_when_off_on_cpu_or_for_a_compressed_format(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    assert _engine(path).runner.fast is None  # cuda_graphs is on by default but means nothing on CPU
    assert _engine(path, compile_decode=True, kv_format="tada").runner.fast is None  # eager: it plans writes on the host
    assert "decode_mode" not in _engine(path).stats()


@pytest.mark.slow
def test_compiled_decode_is_token_identical_to_eager_in_greedy_fp32(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    eager = _greedy(_engine(path))
    engine = _engine(path, compile_decode=True, max_decode_bucket=2)  # batches of 3 and 4 run eager
    assert _greedy(engine) == eager
    stats = engine.stats()
    assert stats["decode_mode"] == "compiled" and stats["decode_buckets"] == [1, 2]
    assert stats["decode_fast_steps"] > 0 and stats["decode_eager_steps"] > 0  # both paths ran
    assert stats["decode_compile_seconds"] > 0
    from reasonrl.bench.engine import fast_forward_seconds

    assert fast_forward_seconds(engine) > 0  # the bench's forward-only timing, between requests
    assert _greedy(engine) == eager  # its dummy steps wrote slot 0 and reset the prefix cache: nothing corrupted
    assert fast_forward_seconds(_engine(path)) is None  # eager: no fast forward to time


class _Recorded:
    """Stands in for a CUDA graph on CPU: replay reruns the function on the static inputs into the
    captured output tensors, as a graph replays its kernels on the same memory."""

    def __init__(self, fn, static, out):
        self.fn, self.static, self.out = fn, static, out

    def replay(self):
        new = self.fn(*self.static)
        for dst, src in zip(*(x if isinstance(x, (tuple, list)) else (x,) for x in (self.out, new))):
            dst.copy_(src)


class CPUPool(GraphPool):
    """A `GraphPool` whose captures are `_Recorded` on CPU; `grows(static)`: the bytes a capture
    would take (the budget logic is the real one)."""

    def __init__(self, budget: int, grows):
        super().__init__(torch.device("cpu"), budget)
        self.grows, self.captures = grows, 0

    def record(self, fn, static):
        self.captures += 1
        out = fn(*static)  # cloned: a graph's output may be an expanded view, which a replay here could not write
        out = tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()
        return _Recorded(fn, static, out), out, self.grows(static)


def _forward(ids, positions, slots, tables, lens):
    """A stand-in decode forward that depends on every input (tables only up to each row's length)."""
    used = [tables[b, : -(-int(lens[b]) // 4)].sum() for b in range(len(ids))]
    return torch.stack([ids + 10 * positions + 100 * slots, torch.stack(used)], -1).float()


def test_graph_capture_keeps_the_buckets_that_fit_the_budget_largest_first_and_replays_static_copies():
    cache = {"ptr": 1}
    grows = {4: 100, 2: 30, 1: 10}  # bytes the pool would grow by per bucket
    graphs = DecodeGraphs(_forward, 6, CPUPool(50, lambda static: grows[static[0].shape[0]]), lambda: cache["ptr"])

    def dummy(b):
        zeros = torch.zeros(b, dtype=torch.long)
        return zeros, zeros, zeros, torch.zeros(b, 6, dtype=torch.int32), torch.ones(b, dtype=torch.int32)

    graphs.capture_all([1, 2, 4], dummy)
    assert graphs.captured == [1, 2] and graphs.skipped == [4] and graphs.pool.bytes == 40  # 4 would take 100 > 50
    ids, pos, slots = torch.tensor([3, 5]), torch.tensor([7, 9]), torch.tensor([11, 13])
    tables, lens = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32), torch.tensor([5, 2], dtype=torch.int32)
    out = graphs.replay(2, ids, pos, slots, tables, lens)  # tables narrower than the graph's: copied into its left
    full = torch.zeros(2, 6, dtype=torch.int32)
    full[:, :2] = tables
    assert torch.equal(out, _forward(ids, pos, slots, full, lens))
    assert graphs.replay(4, *dummy(4)) is None  # over the budget: the step runs eager
    cache["ptr"] = 2  # the cache was allocated again: graphs dropped, captured again on use with the step's inputs
    out = graphs.replay(2, ids, pos, slots, tables, lens)
    assert torch.equal(out, _forward(ids, pos, slots, full, lens))
    assert graphs.recaptures == 1 and graphs.captured == [2] and graphs.replays == 2


@pytest.mark.gpu
def test_cuda_graph_decode_is_token_identical_to_eager_and_survives_sleep(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")

    def engine(**kw):
        model = load_model(path, "cuda", torch.float32)
        return LLMEngine(model, None, EngineConfig(max_num_seqs=4, max_model_len=200, kv_cache_memory=1 << 24, **kw))

    eager = _greedy(engine(cuda_graphs=False))
    graphs = engine(max_decode_bucket=2)
    assert graphs.runner.fast.graphs.captured == [1, 2]
    assert _greedy(graphs) == eager
    stats = graphs.stats()
    assert stats["cuda_graph_replays"] > 0 and stats["decode_eager_steps"] > 0
    old = graphs.kv.cache.data_ptr()
    graphs.sleep()
    graphs.wake()  # a new cache (at a new address, graphs are captured again at the next step)
    assert _greedy(graphs) == eager
    assert graphs.stats()["cuda_graph_recaptures"] == int(graphs.kv.cache.data_ptr() != old)
    both = engine(compile_decode=True, max_decode_bucket=2)
    assert _greedy(both) == eager


@pytest.mark.gpu
def test_cuda_graphs_over_the_memory_budget_are_not_kept(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    model = load_model(path, "cuda", torch.float32)
    engine = LLMEngine(model, None, EngineConfig(max_num_seqs=4, max_model_len=200, kv_cache_memory=1 << 24,
                                                 cuda_graph_memory=1))
    fast: FastDecode = engine.runner.fast
    assert fast.graphs.captured == [] and sorted(fast.graphs.skipped) == [1, 2, 4]
    assert _greedy(engine) == _greedy(LLMEngine(model, None, EngineConfig(max_num_seqs=4, max_model_len=200,
                                                                          kv_cache_memory=1 << 24, cuda_graphs=False)))
