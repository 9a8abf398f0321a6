"""The Triton decode kernel over quantized blocks (TaDA, KIVI) against the formats' PyTorch path
(interpreter on CPU, compiled on GPU)."""

import copy

import pytest
import torch

from reasonrl.engine.kv.kivi import KiviKV
from reasonrl.engine.kv.tada import TadaKV
from reasonrl.kernels.kv_quant import quant_paged_decode
from reasonrl.models.tiny import tiny_config

CASES = [
    (TadaKV, {"bits": 4}, 4, 2),
    (TadaKV, {"bits": 2, "group_size": 4}, 4, 4),
    (TadaKV, {"bits": [2, 8]}, 14, 2),
    (KiviKV, {}, 4, 2),
    (KiviKV, {"k_bits": 4, "v_bits": 8, "group_size": 8}, 14, 2),
]


def filled_cache(fmt, opts, heads, kv_heads, device, dtype, seed=0, head_dim=16, block_size=16):
    """Three sequences on scattered blocks, written over two steps (a prefill, then a chunk that
    completes staged blocks), with partly filled last blocks and one exactly full."""
    g = torch.Generator().manual_seed(seed)
    cfg = tiny_config(hidden_size=heads * head_dim, num_heads=heads, num_kv_heads=kv_heads)
    lens = [5, 2 * block_size, 3 * block_size + 7]
    width = -(-max(lens) // block_size)
    num_blocks = 12
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables = torch.zeros(len(lens), width, dtype=torch.int32)
    for b, n in enumerate(lens):
        for i in range(-(-n // block_size)):
            tables[b, i] = perm.pop()
    kv = fmt(cfg, num_blocks, block_size, torch.device(device), dtype, 4, **opts)
    kv.allocate()
    split = [min(n, 9) for n in lens]  # step 1 writes 9 tokens of each sequence, step 2 the rest
    for lo_of, hi_of in ((lambda b: 0, lambda b: split[b]), (lambda b: split[b], lambda b: lens[b])):
        slots = [int(tables[b, p // block_size]) * block_size + p % block_size
                 for b in range(len(lens)) for p in range(lo_of(b), hi_of(b))]
        slots = torch.tensor(slots, device=device)
        k = torch.randn(len(slots), kv_heads, head_dim, generator=g).to(device, dtype)
        v = torch.randn(len(slots), kv_heads, head_dim, generator=g).to(device, dtype)
        for layer in range(cfg.num_layers):
            kv.write(layer, slots, k, v)
    q = torch.randn(len(lens), heads, head_dim, generator=g).to(device, dtype)
    return kv, q, tables.to(device), torch.tensor(lens, dtype=torch.int32, device=device)


def kernel(kv, layer, q, tables, lens, splits=None):
    kc, vc = kv._kernel_codes(layer)
    return quant_paged_decode(q, kc, vc, kv.staging[layer, 0], kv.staging[layer, 1], kv.slots.table, tables, lens,
                              splits=splits)


def pytorch_path(kv, layer, q, tables, lens):
    """The CPU gather path of the format (dequantizes a temporary of the gathered blocks)."""
    kv_cpu = kv
    if q.is_cuda:  # the same storage, on the CPU, read by the PyTorch path
        kv_cpu = type(kv)(kv.cfg, kv.num_blocks, kv.block_size, torch.device("cpu"), kv.dtype, kv.max_num_seqs,
                          **kv.options)
        kv_cpu.tensors = [{n: t.cpu() for n, t in layer_t.items()} for layer_t in kv.tensors]
        kv_cpu.staging, kv_cpu.slots = kv.staging.cpu(), copy.copy(kv.slots)
        kv_cpu.slots.table = kv.slots.table.cpu()
    return kv_cpu.decode(layer, q.float().cpu(), tables.cpu(), lens.cpu(), lens.tolist())


@pytest.mark.parametrize("fmt,opts,heads,kv_heads", CASES)
def test_kernel_matches_pytorch_path_cpu_interpreter(fmt, opts, heads, kv_heads):
    kv, q, tables, lens = filled_cache(fmt, opts, heads, kv_heads, "cpu", torch.float32)
    assert (kv.slots.table >= 0).sum() == 2  # two partly filled blocks read from staging
    for layer in range(2):
        torch.testing.assert_close(kernel(kv, layer, q, tables, lens), pytorch_path(kv, layer, q, tables, lens),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("splits", [2, 3])
def test_split_table_merges_to_the_pytorch_path(splits):
    """Flash-decoding over codes: the staged last block is read by the split whose stretch holds it
    (3 splits of a 4-block table: the third is empty for every sequence)."""
    kv, q, tables, lens = filled_cache(TadaKV, {"bits": 4}, 14, 2, "cpu", torch.float32, seed=2)
    torch.testing.assert_close(kernel(kv, 1, q, tables, lens, splits), pytorch_path(kv, 1, q, tables, lens),
                               atol=1e-5, rtol=1e-5)


def test_kernel_reads_the_codes():
    """Changing one stored code changes the kernel's output: it reads the compressed blocks."""
    kv, q, tables, lens = filled_cache(TadaKV, {"bits": 4}, 4, 2, "cpu", torch.float32)
    before = kernel(kv, 0, q, tables, lens)
    block = int(tables[1, 0])
    kv.tensors[0]["v_codes"][block] ^= 0xFF
    after = kernel(kv, 0, q, tables, lens)
    assert not torch.allclose(before[1], after[1]) and torch.equal(before[0], after[0])
    torch.testing.assert_close(after, pytorch_path(kv, 0, q, tables, lens), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt,opts,heads,kv_heads", CASES)
def test_kernel_matches_pytorch_path_gpu(fmt, opts, heads, kv_heads, dtype):
    kv, q, tables, lens = filled_cache(fmt, opts, heads, kv_heads, "cuda", dtype, head_dim=64)
    atol = 1e-4 if dtype == torch.float32 else 3e-2
    for layer, splits in ((0, None), (1, None), (1, 3)):
        torch.testing.assert_close(kernel(kv, layer, q, tables, lens, splits).float().cpu(),
                                   pytorch_path(kv, layer, q, tables, lens), atol=atol, rtol=atol)


@pytest.mark.parametrize("fmt,opts,heads,kv_heads", [CASES[0], CASES[3]])
def test_a_block_the_decode_token_completes_is_read_as_written(fmt, opts, heads, kv_heads):
    """A decode step whose token completes sequence 0's staged block: the kernel attends that block as the
    step wrote it, as the PyTorch path does (it read the codes the block had just been quantized into),
    inside `attend`, in one pass and split."""
    g, bs, head_dim = torch.Generator().manual_seed(3), 16, 16
    cfg = tiny_config(hidden_size=heads * head_dim, num_heads=heads, num_kv_heads=kv_heads)
    kv = fmt(cfg, 8, bs, torch.device("cpu"), torch.float32, 4, **opts)
    kv.allocate()
    tables = torch.tensor([[5, 0], [2, 7]], dtype=torch.int32)
    before = [bs - 1, bs + 4]  # the decode token completes block 5, and stays staged in block 7

    def rows(n):
        return torch.randn(n, kv_heads, head_dim, generator=g)

    prefill = torch.tensor([5 * bs + p for p in range(before[0])] + [2 * bs + p for p in range(bs)]
                           + [7 * bs + p for p in range(before[1] - bs)])
    k, v = rows(len(prefill)), rows(len(prefill))
    for layer in range(cfg.num_layers):
        kv.write(layer, prefill, k, v)
    step = torch.tensor([5 * bs + before[0], 7 * bs + before[1] - bs])
    lens = torch.tensor([n + 1 for n in before], dtype=torch.int32)
    q, k, v = torch.randn(2, heads, head_dim, generator=g), rows(2), rows(2)
    for layer in range(cfg.num_layers):
        kv.write(layer, step, k, v)
        kv._attending = kv._fresh.pop(layer)
        eager = kv.triton_decode(layer, q, tables, lens)
        kc, vc = kv._kernel_codes(layer)
        split = quant_paged_decode(q, kc, vc, kv.staging[layer, 0], kv.staging[layer, 1], kv.slots.table, tables, lens,
                                   splits=2, fresh=kv._completed_now(layer, tables, lens))
        reference = kv.decode(layer, q, tables, lens, lens.tolist())
        kv._attending = None
        torch.testing.assert_close(eager, reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(split, reference, atol=1e-5, rtol=1e-5)
        from_codes = kernel(kv, layer, q, tables, lens)
        assert not torch.allclose(from_codes[0], reference[0], atol=1e-3)  # the case is exercised
        torch.testing.assert_close(from_codes[1], reference[1], atol=1e-5, rtol=1e-5)
