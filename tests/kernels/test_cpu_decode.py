"""The C++ paged decode attention on CPU (kernels/cpu_ops.py): against SDPA over gathered
blocks, independent of the batch it runs in, strict about bad input, and the engine's decoding
with it the same as without it."""

import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.kv import get_format
from reasonrl.kernels import cpu_ops
from reasonrl.kernels.cpu_ops import paged_decode_cpu, paged_masked_cpu
from reasonrl.models.loader import load_model
from reasonrl.models.tiny import tiny_config

pytestmark = pytest.mark.skipif(not cpu_ops.available(), reason=f"kernel not built: {cpu_ops.status()}")


def _paged(batch, kv_heads, group, head_dim, block, lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = max(-(-n // block) for n in lens)
    num_blocks = batch * width + 3
    cache = torch.randn(2, num_blocks, block, kv_heads, head_dim, generator=g)
    tables = torch.randperm(num_blocks, generator=g)[: batch * width].view(batch, width).int()  # scattered blocks
    q = torch.randn(batch, kv_heads * group, head_dim, generator=g)
    return q, cache, tables, torch.tensor(lens, dtype=torch.int32)


def _reference(q, cache, tables, lens):
    out = []
    for b, n in enumerate(lens.tolist()):
        k, v = (cache[i][tables[b].long()].flatten(0, 1)[:n].transpose(0, 1) for i in (0, 1))  # (Hkv, n, D)
        o = F.scaled_dot_product_attention(q[b, :, None], k, v, enable_gqa=q.shape[1] != k.shape[0])
        out.append(o[:, 0])
    return torch.stack(out)


@pytest.mark.parametrize("kv_heads,group,head_dim,block", [(2, 4, 64, 16), (1, 1, 24, 4), (3, 2, 13, 8)])
def test_matches_sdpa_over_the_gathered_blocks(kv_heads, group, head_dim, block):
    lens = [1, 5, block, block + 1, 3 * block - 1, 70]
    q, cache, tables, lens_t = _paged(len(lens), kv_heads, group, head_dim, block, lens)
    out = paged_decode_cpu(q, cache[0], cache[1], tables, lens_t)
    torch.testing.assert_close(out, _reference(q, cache, tables, lens_t), atol=2e-6, rtol=1e-5)


def _masked_reference(q, cache, tables, lens, mask):
    out = torch.zeros_like(q)
    for b, n in enumerate(lens.tolist()):
        k, v = (cache[i][tables[b].long()].flatten(0, 1)[:n].transpose(0, 1) for i in (0, 1))  # (Hkv, n, D)
        for r in range(q.shape[1]):
            if mask[b, r, :n].any():
                o = F.scaled_dot_product_attention(q[b, r, :, None], k, v, attn_mask=mask[b, r, None, :n],
                                                   enable_gqa=q.shape[2] != k.shape[0])
                out[b, r] = o[:, 0]
    return out


@pytest.mark.parametrize("kv_heads,group,head_dim,block", [(2, 4, 64, 16), (1, 1, 24, 4), (3, 2, 13, 8)])
def test_masked_rows_match_sdpa_and_a_row_that_sees_nothing_is_zero(kv_heads, group, head_dim, block):
    lens, rows = [9, 3 * block - 1, 70], 6
    _, cache, tables, lens_t = _paged(len(lens), kv_heads, group, head_dim, block, lens)
    g = torch.Generator().manual_seed(4)
    q = torch.randn(len(lens), rows, kv_heads * group, head_dim, generator=g)
    mask = torch.rand(len(lens), rows, max(lens) + 5, generator=g) < 0.6  # past a context: never read
    mask[:, :, 0] = True
    mask[2, 5] = False  # a padding row: attends nothing
    out = paged_masked_cpu(q, cache[0], cache[1], tables, lens_t, mask)
    torch.testing.assert_close(out, _masked_reference(q, cache, tables, lens_t, mask), atol=2e-6, rtol=1e-5)
    assert torch.equal(out[2, 5], torch.zeros_like(out[2, 5]))
    # a row that sees the whole context is the decode kernel's row, bit for bit (a tree verified
    # through one kernel and decoded through the other attends alike)
    full = torch.ones_like(mask)
    one = paged_masked_cpu(q, cache[0], cache[1], tables, lens_t, full)
    assert torch.equal(one[:, 3], paged_decode_cpu(q[:, 3].contiguous(), cache[0], cache[1], tables, lens_t))
    with pytest.raises(RuntimeError, match="mask must be bool"):
        paged_masked_cpu(q, cache[0], cache[1], tables, lens_t, mask[:, :, :60])  # shorter than a context
    with pytest.raises(RuntimeError, match="paged_masked_cpu: sequence 0 has context length 0"):
        paged_masked_cpu(q, cache[0], cache[1], tables, torch.tensor([0, 1, 1], dtype=torch.int32), mask)
    assert paged_masked_cpu(q.double(), cache[0].double(), cache[1].double(), tables, lens_t, mask) is None


def test_a_sequence_gets_the_same_bits_alone_or_in_any_batch():
    lens = [40, 9, 77, 16, 1]
    q, cache, tables, lens_t = _paged(len(lens), 2, 4, 32, 16, lens, seed=3)
    torch.set_num_threads(2)
    together = paged_decode_cpu(q, cache[0], cache[1], tables, lens_t)
    for b in range(len(lens)):
        alone = paged_decode_cpu(q[b: b + 1], cache[0], cache[1], tables[b: b + 1], lens_t[b: b + 1])
        assert torch.equal(alone[0], together[b])
    order = torch.tensor([4, 2, 0, 3, 1])
    shuffled = paged_decode_cpu(q[order], cache[0], cache[1], tables[order], lens_t[order])
    assert torch.equal(shuffled, together[order])


def test_bad_lengths_are_named_and_other_dtypes_are_declined():
    q, cache, tables, lens = _paged(2, 2, 2, 16, 4, [3, 8])
    with pytest.raises(RuntimeError, match="sequence 1 has context length 9"):
        paged_decode_cpu(q, cache[0], cache[1], tables, torch.tensor([3, 9], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="context length 0"):
        paged_decode_cpu(q, cache[0], cache[1], tables, torch.tensor([0, 2], dtype=torch.int32))
    for bad in (cache.shape[1], -1):  # a block id outside the cache is refused, not read
        wrong = tables.clone()
        wrong[1, 1] = bad
        with pytest.raises(RuntimeError, match=f"sequence 1 lists block {bad} of a cache of {cache.shape[1]}"):
            paged_decode_cpu(q, cache[0], cache[1], wrong, lens)
    wrong = tables.clone()
    wrong[0, 1] = -1  # past sequence 0's context (3 tokens, one block): never read, so allowed
    torch.testing.assert_close(paged_decode_cpu(q, cache[0], cache[1], wrong, lens), _reference(q, cache, tables, lens))
    assert paged_decode_cpu(q.double(), cache[0].double(), cache[1].double(), tables, lens) is None
    assert paged_decode_cpu(q.bfloat16(), cache[0].bfloat16(), cache[1].bfloat16(), tables, lens) is None


@pytest.mark.parametrize("fmt,dtype,switch,runs", [("dense", torch.float32, True, True), ("dense", torch.float32, False, False),
                                                   ("dense", torch.bfloat16, True, False), ("tada", torch.float32, True, False)])
def test_only_the_dense_format_in_fp32_runs_it(fmt, dtype, switch, runs):
    kv = get_format(fmt)(tiny_config(), 8, 4, torch.device("cpu"), dtype, 2)
    kv.cpu_kernel = switch
    kv.allocate()
    assert kv.on_cpu_kernel is runs
    q = torch.randn(1, 4, tiny_config().head_dim, dtype=dtype)
    table, lens = torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32)
    assert (kv.decode_kernel(0, q, table, lens) is not None) is runs


def test_the_op_has_a_shape_for_tracers():
    q, cache, tables, lens = _paged(2, 2, 2, 16, 4, [3, 8])
    real = (q, cache[0], cache[1], tables, lens)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = torch.ops.reasonrl_cpu.paged_decode(*(mode.from_tensor(t) for t in real), 0.25)
    assert fake.shape == q.shape and fake.dtype == q.dtype


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("REASONRL_CPU_KERNELS", "0")
    assert cpu_ops._build() == {"ok": False, "error": "disabled by REASONRL_CPU_KERNELS=0"}


def test_engine_decodes_the_same_with_and_without_the_kernel(hf_checkpoint, monkeypatch):
    path, _ = hf_checkpoint("qwen2")
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9], list(range(10, 60)), [5, 6]]  # contexts over several blocks
    runs = {}
    for on in (True, False):
        engine = LLMEngine(load_model(path, "cpu", torch.float32), None,
                           EngineConfig(max_num_seqs=4, max_model_len=160, block_size=8, cpu_decode_kernel=on,
                                        cpu_forward_kernel=False))  # the PyTorch forward's attention
        used, kernel = [], engine.kv.decode_kernel
        monkeypatch.setattr(engine.kv, "decode_kernel", lambda *a: (out := kernel(*a), used.append(out is not None))[0])
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
        runs[on] = {k: v.outputs[0] for k, v in engine.drain().items()}
        assert used and all(used) == on and any(used) == on  # every decode step took the kernel, or none did
        assert engine.stats()["cpu_decode_kernel"] is on
    for k, off in runs[False].items():
        assert runs[True][k].token_ids == off.token_ids, k
        torch.testing.assert_close(torch.tensor(runs[True][k].logprobs), torch.tensor(off.logprobs), atol=1e-4, rtol=0)


def test_a_killed_builds_lock_does_not_hang_the_next_build():
    lock = cpu_ops._build_dir() / "lock"
    lock.touch()
    old = lock.stat().st_mtime - cpu_ops.STALE_LOCK_S - 1
    os.utime(lock, (old, old))
    assert cpu_ops._build()["ok"]  # PyTorch would have waited on the lock for ever
    assert not lock.exists()


def test_a_copy_of_the_package_reuses_the_build(tmp_path):
    """Keyed by the source text, not its path: the docs' examples run from copies of the package,
    and a build keyed by path would be redone for each of them. Checked on the build directory the
    copy picks and on the library file, not on ninja's log, which another process building these
    sources at the same moment (a second checkout's tests) appends to."""
    import shutil
    import subprocess
    import sys

    package = Path(cpu_ops.__file__).parents[1]
    shutil.copytree(package / "kernels", tmp_path / "reasonrl" / "kernels")
    shutil.copy(package / "__init__.py", tmp_path / "reasonrl")
    library = cpu_ops._build_dir() / f"{cpu_ops.LIBRARY}.so"
    before = library.stat().st_mtime_ns
    code = ("from reasonrl.kernels import cpu_ops; assert cpu_ops.available(), cpu_ops.status(); "
            f"assert cpu_ops.__file__.startswith({str(tmp_path)!r}); print(cpu_ops._build_dir())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}).stdout
    assert Path(out.strip().splitlines()[-1]) == cpu_ops._build_dir()  # the same build, not one for the copy's path
    assert library.stat().st_mtime_ns == before  # loaded, not rebuilt


def test_a_start_soon_after_a_killed_build_waits_only_until_its_lock_is_stale(monkeypatch):
    """The lock's age was looked at once: a start less than STALE_LOCK_S after a killed build waited
    on it for ever (PyTorch's own wait never ends)."""
    lock = cpu_ops._build_dir() / "lock"
    lock.touch()  # a build killed just now
    monkeypatch.setattr(cpu_ops, "STALE_LOCK_S", 2)
    start = time.monotonic()
    cpu_ops._wait_for_lock(lock)
    assert not lock.exists() and 2 <= time.monotonic() - start < 120  # not for ever
