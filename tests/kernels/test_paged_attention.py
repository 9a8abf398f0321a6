"""The Triton paged decode kernel against the PyTorch path (interpreter on CPU, compiled on GPU)."""

import pytest
import torch

from reasonrl.engine.kv.dense import DenseKV
from reasonrl.kernels.paged_attention import combine_splits, paged_decode
from reasonrl.models.tiny import tiny_config


def random_cache(num_seqs, heads, kv_heads, head_dim, block_size, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 5 * block_size, (num_seqs,), generator=g)
    num_blocks = int(sum(-(-int(n) // block_size) for n in lens)) + 3
    k = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g)
    v = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g)
    perm = torch.randperm(num_blocks, generator=g).tolist()  # scattered, not contiguous, blocks
    width = max(-(-int(n) // block_size) for n in lens)
    tables = torch.zeros(num_seqs, width, dtype=torch.int32)
    for b, n in enumerate(lens):
        for i in range(-(-int(n) // block_size)):
            tables[b, i] = perm.pop()
    q = torch.randn(num_seqs, heads, head_dim, generator=g)
    to = dict(device=device, dtype=dtype)
    return q.to(**to), k.to(**to), v.to(**to), tables.to(device), lens.to(torch.int32).to(device)


def dense_kv(k, v, num_heads):
    """A one-layer DenseKV holding the cache k, v (blocks, block_size, Hkv, D), on the CPU in fp32."""
    cfg = tiny_config(hidden_size=num_heads * k.shape[3], num_heads=num_heads, num_kv_heads=k.shape[2], num_layers=1)
    kv = DenseKV(cfg, k.shape[0], k.shape[1], torch.device("cpu"), torch.float32)
    kv.cache = torch.stack([k.float().cpu(), v.float().cpu()])[None]  # (layers, k/v, blocks, block_size, H, D)
    return kv


def reference(q, k, v, tables, lens):
    kv = dense_kv(k, v, q.shape[1])
    return kv.decode(0, q.float().cpu(), tables.cpu(), lens.cpu(), lens.tolist()).to(q.device)


def test_decode_grouped_by_length_equals_one_padded_call():
    """The CPU path splits a heavy-tailed batch into groups of similar context length; each row's
    result must be what one call padded to the longest gives (up to float summation order)."""
    from reasonrl.engine.kv.base import length_groups

    q, k, v, tables, lens = random_cache(40, 4, 2, 16, 4, "cpu", torch.float32, seed=3)
    lens[:3] = torch.tensor([19, 20, 2], dtype=torch.int32)  # a few long and very short rows
    kv = dense_kv(k, v, 4)
    groups = length_groups(lens.tolist())
    assert len(groups) > 1 and sorted(i for _, rows in groups for i in rows) == list(range(40))
    assert all(longest == max(lens[rows].tolist()) for longest, rows in groups)
    grouped = kv.decode(0, q, tables, lens, lens.tolist())
    padded = kv.decode_padded(0, q, tables, lens, int(lens.max()))
    torch.testing.assert_close(grouped, padded, atol=1e-6, rtol=1e-6)


def test_length_groups_bound_the_padding():
    from reasonrl.engine.kv.base import length_groups

    lens = [400, 390, 300, 210, 205, 200, 199, 150, 100, 90, 80, 70, 60, 50, 40, 30, 20, 10, 5, 3]
    groups = length_groups(lens, min_group=2)
    for longest, rows in groups:  # past the first min_group rows, a group only takes rows over half its longest
        assert all(2 * lens[i] > longest for i in rows[2:])
    padded = sum(longest * len(rows) for longest, rows in groups)
    assert padded < 0.6 * max(lens) * len(lens)  # one call would pad everything to 400
    assert length_groups([7, 7, 7]) == [(7, [0, 1, 2])]


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (14, 2)])
def test_paged_decode_matches_pytorch_cpu_interpreter(heads, kv_heads):
    q, k, v, tables, lens = random_cache(3, heads, kv_heads, 16, 16, "cpu", torch.float32)
    torch.testing.assert_close(paged_decode(q, k, v, tables, lens), reference(q, k, v, tables, lens),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("splits", [2, 3, 7])
def test_split_context_decode_merges_to_the_one_pass_result(splits, monkeypatch):
    """Flash-decoding: each split folds a stretch of the block table, the merge must give what one
    pass gives, also where a short sequence leaves some splits empty (7 splits of 5 blocks)."""
    import reasonrl.kernels.paged_attention as pa

    merged = []
    monkeypatch.setattr(pa, "combine_splits", lambda part, out: merged.append(part.shape) or combine_splits(part, out))
    q, k, v, tables, lens = random_cache(4, 14, 2, 16, 16, "cpu", torch.float32, seed=1)
    lens[0] = 3  # one block: every split past the first is empty for this row
    expected = reference(q, k, v, tables, lens)
    torch.testing.assert_close(paged_decode(q, k, v, tables, lens, splits=splits), expected, atol=1e-5, rtol=1e-5)
    assert merged == [(4, 14, splits, 16 + 2)]  # the partial states went through the merge


def test_a_split_count_below_one_is_refused_by_name():
    q, k, v, tables, lens = random_cache(2, 4, 2, 16, 16, "cpu", torch.float32)
    with pytest.raises(ValueError, match="decode splits must be at least 1, got 0"):
        paged_decode(q, k, v, tables, lens, splits=0)


def test_splits_fill_the_gpu_and_stay_whole_on_short_tables_and_on_cpu():
    from reasonrl.kernels.paged_attention import num_splits

    assert num_splits(8, 8, 2048, torch.device("cpu")) == 1  # the interpreter: one pass
    assert num_splits(8, 8, 31, torch.device("cuda")) == 1  # under 32 blocks: one pass, no device asked


@pytest.mark.gpu
def test_split_counts_on_a_gpu():
    from reasonrl.kernels.paged_attention import num_splits

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    dev = torch.device("cuda")
    assert num_splits(8, 8, 2048, dev) == -(-4 * sms // 64)  # 8 x 8 programs: split to fill the GPU 4x
    assert num_splits(1, 2, 40, dev) == 2  # at least 16 blocks a split
    assert num_splits(1, 1, 1 << 20, dev) == 64  # at most 64
    assert num_splits(512, 8, 2048, dev) == 1  # enough programs already


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_decode_matches_pytorch_gpu(dtype):
    q, k, v, tables, lens = random_cache(8, 14, 2, 64, 16, "cuda", dtype)
    atol = 1e-4 if dtype == torch.float32 else 2e-2
    for splits in (None, 1, 3):
        torch.testing.assert_close(paged_decode(q, k, v, tables, lens, splits=splits).float(),
                                   reference(q, k, v, tables, lens), atol=atol, rtol=atol)
