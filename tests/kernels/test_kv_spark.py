"""The SPARK Triton decode kernel against the format's PyTorch path (interpreter on CPU)."""

import pytest
import torch

from reasonrl.engine.attention import AttentionMetadata
from reasonrl.engine.kv.spark import SparkKV
from reasonrl.models.tiny import tiny_config


def step_meta(seqs, block_size):
    """seqs: [(table, ctx_before, n_new)] -> AttentionMetadata of one step writing n_new tokens each."""
    starts, slots, lens = [0], [], []
    for table, before, n in seqs:
        slots += [table[p // block_size] * block_size + p % block_size for p in range(before, before + n)]
        starts.append(starts[-1] + n)
        lens.append(before + n)
    width = max(len(t) for t, _, _ in seqs)
    tables = torch.tensor([t + [0] * (width - len(t)) for t, _, _ in seqs], dtype=torch.int32)
    return AttentionMetadata(torch.tensor(slots), starts, lens, tables, torch.tensor(lens, dtype=torch.int32))


def filled_format(heads, kv_heads, head_dim, block_size, key_ratio, value_ratio, dtype=torch.float32, seed=0,
                  bits=None):
    """A SparkKV with three sequences prefilled in chunks (so some blocks are pruned whole, some
    filled across steps and some still staged), and the decode step that follows, committed.
    -> (kv, q, k_new, v_new, meta)."""
    g = torch.Generator().manual_seed(seed)
    cfg = tiny_config(hidden_size=heads * head_dim, num_heads=heads, num_kv_heads=kv_heads, num_layers=1)
    kv = SparkKV(cfg, 32, block_size, torch.device("cpu"), dtype, max_num_seqs=4, key_ratio=key_ratio,
                 value_ratio=value_ratio, window=8, bits=bits)
    kv.allocate()
    perm = torch.randperm(32, generator=g).tolist()
    lens = [3 * block_size + 5, block_size - 1, 2 * block_size]  # partial tail, partial first block, full tail
    tables = [[perm.pop() for _ in range(-(-(n + 1) // block_size))] for n in lens]

    def run(seqs):
        n = sum(c for _, _, c in seqs)
        q = torch.randn(n, heads, head_dim, generator=g).to(dtype)
        k = torch.randn(n, kv_heads, head_dim, generator=g).to(dtype) * torch.linspace(0.2, 3, head_dim).to(dtype)
        v = torch.randn(n, kv_heads, head_dim, generator=g).to(dtype)
        meta = step_meta(seqs, block_size)
        kv.write(0, meta.slot_mapping, k, v)
        return q, k, v, meta

    done = [0, 0, 0]
    for chunk in (block_size + 3, 2 * block_size):  # two prefill steps per sequence
        seqs = [(t, d, min(chunk, n - d)) for t, d, n in zip(tables, done, lens) if n > d]
        q, k, v, meta = run(seqs)
        kv.attend(0, q, meta)
        done = [d + min(chunk, n - d) for d, n in zip(done, lens)]
    q, k, v, meta = run([(t, n, 1) for t, n in zip(tables, lens)])
    kv.commit(0, q, k, v, meta)
    return kv, q, k, v, meta


@pytest.mark.parametrize("key_ratio,value_ratio", [(0.0, 0.0), (0.5, 0.0), (0.8, 0.0), (0.5, 0.5)])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (14, 2)])
def test_spark_kernel_matches_pytorch_cpu_interpreter(key_ratio, value_ratio, heads, kv_heads):
    kv, q, k, v, meta = filled_format(heads, kv_heads, 16, 16, key_ratio, value_ratio)
    first = meta.block_tables[0].long()  # 53 tokens before the step: 3 pruned blocks, 1 staged
    assert (kv.slots.table[first[:3]] < 0).all() and kv.slots.table[first[3]] >= 0
    expected = kv.attend_torch(0, q, k, v, meta)
    torch.testing.assert_close(kv.attend_kernel(0, q, k, v, meta), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("splits", [2, 3])
@pytest.mark.parametrize("bits", [None, 4])
def test_spark_split_table_merges_to_the_pytorch_path(splits, bits, monkeypatch):
    """Flash-decoding over SPARK blocks: the step's own token is attended once (by the first split)."""
    import reasonrl.kernels.paged_attention as pa

    monkeypatch.setattr(pa, "num_splits", lambda *a: splits)
    # head_dim 64, seed 0: the step's own token holds the highest score of one head's first split
    kv, q, k, v, meta = filled_format(14, 2, 64, 16, 0.5, 0.0, bits=bits)
    torch.testing.assert_close(kv.attend_kernel(0, q, k, v, meta), kv.attend_torch(0, q, k, v, meta),
                               atol=1e-5, rtol=1e-5)


def test_spark_kernel_reads_the_pruned_storage():
    """Corrupting one pruned block's signs must change the kernel's output: it restores from them."""
    kv, q, k, v, meta = filled_format(4, 2, 16, 16, 0.5, 0.0)
    before = kv.attend_kernel(0, q, k, v, meta)
    kv.t["k_signs"][0] ^= 0xFF
    after = kv.attend_kernel(0, q, k, v, meta)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, kv.attend_torch(0, q, k, v, meta), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("key_ratio,heads,kv_heads", [(0.0, 4, 2), (0.5, 14, 2), (0.7, 4, 4)])  # 0.7: T = 5, odd
def test_spark_kernel_reads_codes_with_bits_cpu_interpreter(bits, key_ratio, heads, kv_heads):
    kv, q, k, v, meta = filled_format(heads, kv_heads, 16, 16, key_ratio, 0.0, bits=bits)
    assert "k_kept" not in kv.t and kv.t["k_codes"].dtype == torch.uint8
    expected = kv.attend_torch(0, q, k, v, meta)
    torch.testing.assert_close(kv.attend_kernel(0, q, k, v, meta), expected, atol=1e-5, rtol=1e-5)
    for name in ("k_codes", "v_codes"):  # the kernel decodes both code tensors
        before = kv.attend_kernel(0, q, k, v, meta)
        kv.t[name][0] ^= 0x55
        after = kv.attend_kernel(0, q, k, v, meta)
        assert (after - before).abs().max() > 1e-3
        torch.testing.assert_close(after, kv.attend_torch(0, q, k, v, meta), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [None, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits", [None, 3])
def test_spark_kernel_matches_pytorch_gpu(dtype, bits, splits, monkeypatch):
    import reasonrl.kernels.paged_attention as pa

    if splits:
        monkeypatch.setattr(pa, "num_splits", lambda *a: splits)
    kv, q, k, v, meta = filled_format(14, 2, 64, 16, 0.5, 0.0, dtype=dtype, bits=bits)
    kv_gpu_fields = {name: t.cuda() for name, t in kv.t.items()}
    kv.t, kv.staging, kv.slots.table = kv_gpu_fields, kv.staging.cuda(), kv.slots.table.cuda()
    meta.block_tables, meta.context_lens_t = meta.block_tables.cuda(), meta.context_lens_t.cuda()
    out = kv.attend_kernel(0, q.cuda(), k.cuda(), v.cuda(), meta).float().cpu()
    kv.t = {name: t.cpu() for name, t in kv.t.items()}
    kv.staging, kv.slots.table = kv.staging.cpu(), kv.slots.table.cpu()
    meta.block_tables, meta.context_lens_t = meta.block_tables.cpu(), meta.context_lens_t.cpu()
    atol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out, kv.attend_torch(0, q, k, v, meta).float(), atol=atol, rtol=atol)
