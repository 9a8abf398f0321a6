"""Bit packing, per-group quantization and the staged-block life cycle shared by TaDA and KIVI."""

import pytest
import torch

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.attention import AttentionMetadata
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.kv.kivi import KiviKV
from reasonrl.engine.kv.quant import dequantize, pack, quantize, unpack
from reasonrl.engine.kv.tada import TadaKV
from reasonrl.models.model import DecoderLM
from reasonrl.models.tiny import init_weights, tiny_config

CPU = torch.device("cpu")
FORMATS = [(TadaKV, {"bits": 4}), (KiviKV, {})]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_unpack_round_trip(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (3, 5, 64), generator=g).to(torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 5, 64 * bits // 8)
    assert torch.equal(unpack(packed, bits), codes)


def test_pack_bit_order():
    """Code i of a byte sits at bit offset bits * i (the order the Triton kernel unpacks)."""
    assert pack(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    assert pack(torch.tensor([5, 12], dtype=torch.uint8), 4).tolist() == [5 | 12 << 4]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("group", [8, 32])
def test_quantization_error_is_half_a_step(bits, group):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 64, generator=g) * 3 + 1
    packed, scale, zero = quantize(x, bits, group)
    assert scale.dtype == zero.dtype == torch.float16 and scale.shape == (6, 4, 64 // group)
    err = (dequantize(packed, scale, zero, bits, group) - x).abs().unflatten(-1, (-1, group))
    # half a quantization step, plus fp16 rounding of scale and zero
    bound = scale.float()[..., None] / 2 + 2e-3 * x.abs().max()
    assert (err <= bound).all()
    lo, hi = x.unflatten(-1, (-1, group)).aminmax(dim=-1)
    torch.testing.assert_close(scale.float(), (hi - lo) / ((1 << bits) - 1), rtol=1e-3, atol=1e-3)


def test_constant_group_is_exact():
    x = torch.full((2, 16), 0.75)
    packed, scale, zero = quantize(x, 2, 16)
    assert torch.equal(dequantize(packed, scale, zero, 2, 16), x)


# ---- staged blocks -------------------------------------------------------------------------------
def make(fmt, opts, num_blocks=8, max_num_seqs=2, block_size=4, cfg=None):
    cfg = cfg or tiny_config(hidden_size=64, num_heads=4, num_kv_heads=2)
    kv = fmt(cfg, num_blocks, block_size, CPU, torch.float32, max_num_seqs, **opts)
    kv.allocate()
    return kv


def write_all_layers(kv, slots, k, v):
    slots = torch.tensor(slots)
    for layer in range(kv.cfg.num_layers):
        kv.write(layer, slots, k, v)


def kv_rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 16, generator=g), torch.randn(n, 2, 16, generator=g)


@pytest.mark.parametrize("fmt,opts", FORMATS)
def test_staging_slot_taken_at_offset_zero_and_returned_when_the_block_fills(fmt, opts):
    kv = make(fmt, opts)
    k, v = kv_rows(4, 0)
    write_all_layers(kv, [8], k[:1], v[:1])  # block 2, offset 0
    assert kv.slots.num_free == 1 and kv.slots.table[2] >= 0
    write_all_layers(kv, [9, 10], k[1:3], v[1:3])
    assert kv.slots.num_free == 1
    write_all_layers(kv, [11], k[3:], v[3:])  # fills block 2
    assert kv.slots.num_free == 2 and kv.slots.table[2] == -1
    whole = make(fmt, opts)  # the same block written in one step is quantized directly, never staged
    write_all_layers(whole, [8, 9, 10, 11], k, v)
    assert whole.slots.num_free == 2
    for layer in range(2):
        for name, t in kv.tensors[layer].items():
            assert torch.equal(t[2], whole.tensors[layer][name][2]), name


@pytest.mark.parametrize("fmt,opts", FORMATS)
def test_free_blocks_returns_the_slot_and_exhaustion_is_a_clear_error(fmt, opts):
    kv = make(fmt, opts)
    k, v = kv_rows(3, 1)
    write_all_layers(kv, [0, 4], k[:2], v[:2])  # blocks 0 and 1 partly filled: the pool of 2 is used up
    assert kv.slots.num_free == 0
    with pytest.raises(RuntimeError, match="staging pool .*exhausted"):
        write_all_layers(kv, [8], k[2:], v[2:])
    kv.free_blocks([1, 5])
    assert kv.slots.num_free == 1 and kv.slots.table[1] == -1
    write_all_layers(kv, [8], k[2:], v[2:])
    assert kv.slots.num_free == 0


@pytest.mark.parametrize("fmt,opts", FORMATS)
def test_slot_freed_and_retaken_in_one_step_keeps_both_blocks(fmt, opts):
    """With a pool of one slot, block 0 fills and block 1 starts in the same step: block 0 must be
    quantized from its staged tokens before block 1's tokens overwrite the slot."""
    kv = make(fmt, dict(opts, **({"bits": 8} if fmt is TadaKV else {"k_bits": 8, "v_bits": 8})), max_num_seqs=1)
    k, v = kv_rows(6, 2)
    write_all_layers(kv, [0, 1], k[:2], v[:2])
    write_all_layers(kv, [2, 3, 4, 5], k[2:], v[2:])  # completes block 0, starts block 1 (one prefill chunk)
    assert kv.slots.table.tolist()[:2] == [-1, 0]
    for layer in range(2):
        dk, dv = kv._dequantize(layer, torch.tensor([0]))
        torch.testing.assert_close(dk[0], k[:4], atol=0.05, rtol=0)
        torch.testing.assert_close(dv[0], v[:4], atol=0.05, rtol=0)
        gk, gv = kv.gather(layer, torch.tensor([[0, 1]], dtype=torch.int32), torch.tensor([6]))
        assert torch.equal(gk[0, 4:6], k[4:]) and torch.equal(gv[0, 4:6], v[4:])  # staged: exact


@pytest.mark.parametrize("tight", [False, True], ids=["roomy", "preempting"])
@pytest.mark.parametrize("fmt,opts", FORMATS)
def test_engine_with_many_short_requests_leaks_no_staging_slot(fmt, opts, tight):
    """Requests finish, are aborted and (with a tight cache) preempted: every partly filled block's
    staging slot comes back."""
    cfg = tiny_config(vocab_size=64)
    model = init_weights(DecoderLM(cfg), std=0.2)
    fixed = fmt.fixed_bytes(cfg, 4, torch.float32, 3, **opts)  # the staging pool comes out of the budget
    memory = fixed + (20 * fmt.bytes_per_block(cfg, 4, torch.float32, **opts) if tight else 1 << 21)
    engine = LLMEngine(model, None, EngineConfig(kv_cache_memory=memory, block_size=4, max_num_seqs=3, max_model_len=64,
                                                 kv_format=fmt.name, kv_options=opts))
    g = torch.Generator().manual_seed(0)
    for i in range(16):
        prompt = torch.randint(0, 64, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g).tolist()
        engine.add_request(str(i), prompt, SamplingParams(temperature=0, max_tokens=1 + i % 9 * 2, ignore_eos=True))
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
        if steps == 5:
            engine.abort("3")  # an aborted sequence returns its partial block too
        partial = sum(1 for seq in engine.scheduler.running if seq.num_computed % 4)
        assert 3 - engine.kv.slots.num_free == partial  # exactly one slot per unfinished block
    assert (engine.scheduler.num_preemptions > 0) == tight
    assert engine.kv.slots.num_free == 3 and not engine.kv.slots.of
    assert (engine.kv.slots.table == -1).all()


@pytest.mark.parametrize("fmt,opts", FORMATS)
def test_storage_lists_every_tensor_and_holds_no_decoded_copy(fmt, opts):
    kv = make(fmt, opts, num_blocks=32)
    k, v = kv_rows(10, 3)
    write_all_layers(kv, list(range(10)), k, v)
    meta_q = torch.randn(1, 4, 16)
    meta = AttentionMetadata(torch.tensor([9]), [0, 1], [10], torch.tensor([[0, 1, 2]], dtype=torch.int32),
                             torch.tensor([10], dtype=torch.int32))
    before = kv.allocated_bytes
    kv.attend(1, meta_q, meta)
    assert kv.allocated_bytes == before
    held = [t for t in _tensors(vars(kv))]
    listed = {id(t) for t in kv.storage()}
    assert all(id(t) in listed for t in held)  # nothing allocated outside storage()
    c = kv.cfg
    full_size = 32 * 4 * c.num_kv_heads * c.head_dim  # elements of a decoded layer
    for t in kv.storage():
        if t is kv.staging:  # the only model-dtype tensor: max_num_seqs blocks, not num_blocks
            assert t.shape == (c.num_layers, 2, 2, 4, c.num_kv_heads, c.head_dim)
        else:
            assert t.dtype in (torch.uint8, torch.float16, torch.int32)
            assert t.dtype != torch.float16 or t.numel() < full_size  # fp16 side data (means: 1/H of it)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x)
