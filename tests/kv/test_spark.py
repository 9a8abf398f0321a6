"""SPARK key-channel pruning: the pure pruning/restoration math, the format's storage and block
life cycle, and its quality against the dense cache on tiny checkpoints of real architectures."""

import pytest
import torch

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.attention import AttentionMetadata, PagedAttention
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.kv import get_format
from reasonrl.engine.kv.base import dense16_bytes_per_token
from reasonrl.engine.kv.spark import SparkKV
from reasonrl.engine.kv.spark_ops import (kept_channels, pack_bits, prune_keys, prune_values, query_norm, restore_keys,
                                          restore_values, unpack_bits, window_sq_sum)
from reasonrl.models import load_model
from reasonrl.models.model import CausalAttention
from reasonrl.models.tiny import tiny_config

CPU = torch.device("cpu")


# ---- the math -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5, 8, 13, 64])
def test_bit_packing_round_trip(n):
    bits = torch.rand(3, 7, n, generator=torch.Generator().manual_seed(n)) > 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 7, -(-n // 8))
    assert torch.equal(unpack_bits(packed, n), bits)
    assert pack_bits(torch.tensor([True, False, False, True, False, False, False, False, True])).tolist() == [9, 1]


def hand_example():
    k = torch.tensor([[3.0, -1.0, 0.5, -2.0]])
    qn = torch.tensor([0.125, 1.0, 1.0, 1.0], dtype=torch.float16)  # exact in fp16
    return k, qn


def test_pruning_keeps_the_top_channels_by_score_not_by_magnitude():
    k, qn = hand_example()  # scores k^2 |Q| = [1.125, 1, 0.25, 4]: keep channels 3 and 0
    p = prune_keys(k, qn, keep=2)
    assert p.bitmap.tolist() == [[0b1001]]  # channels 0 and 3 kept
    assert p.kept.tolist() == [[3.0, -2.0]]  # in channel order
    assert p.signs.tolist() == [[0b10]]  # pruned channels 1 (-1: bit 0 clear) and 2 (0.5: bit 1 set)
    assert p.avg.item() == pytest.approx((1.0 + 0.25) / 2)
    q2 = torch.tensor([0.01, 1.0, 1.0, 1.0], dtype=torch.float16)  # channel 0's query is tiny: its |k| = 3 loses
    assert unpack_bits(prune_keys(k, q2, keep=2).bitmap, 4).tolist() == [[False, True, False, True]]


def test_restoration_formula_on_a_hand_example():
    k, qn = hand_example()
    p = prune_keys(k, qn, keep=2)
    restored = restore_keys(p, qn, 4)
    avg = float(p.avg)
    assert avg == 0.625  # (1 + 0.25) / 2, exact in fp16
    expected = torch.tensor([[3.0, -(0.625 / 1.0) ** 0.5, (0.625 / 1.0) ** 0.5, -2.0]])
    torch.testing.assert_close(restored, expected, atol=1e-7, rtol=0)
    # a pruned channel's restored score equals the average pruned score
    assert (restored[0, 1] ** 2 * qn[1].float()).item() == pytest.approx(avg)
    assert prune_keys(k, qn, keep=4).avg.item() == 0 and torch.equal(restore_keys(prune_keys(k, qn, 4), qn, 4), k)


def test_value_pruning_keeps_the_largest_and_restores_zero():
    v = torch.tensor([[0.1, -4.0, 2.0, -0.3]])
    kept, bitmap = prune_values(v, 2)
    assert kept.tolist() == [[-4.0, 2.0]]
    assert restore_values(kept, bitmap, 4).tolist() == [[0.0, -4.0, 2.0, 0.0]]


def test_query_norm_is_scale_free_and_never_zero():
    sq = torch.tensor([[4.0, 0.0, 1.0, 16.0]])
    qn = query_norm(sq)
    assert qn.dtype == torch.float16 and qn.tolist() == [[0.5, 2.0 ** -14, 0.25, 1.0]]
    assert torch.equal(query_norm(sq * 1e6), qn)
    q = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])  # (W=1, Hq=2, D=2), one KV head: group mean [2, 1]
    assert window_sq_sum(q, 1).tolist() == [[4.0, 1.0]]


def record_qkv(model, ids):
    """The (q, k, v) of every layer in a causal forward of one sequence."""
    seen = []

    class Recorder(CausalAttention):
        def __call__(self, layer, q, k, v):
            seen.append((q, k, v))
            return super().__call__(layer, q, k, v)

    with torch.no_grad():
        model(torch.tensor(ids), torch.arange(len(ids)), Recorder(1, len(ids)))
    return seen


@pytest.mark.parametrize("ratio", [0.5, 0.8])
def test_restoration_beats_zero_filling_the_pruned_channels(hf_checkpoint, ratio):
    model = load_model(hf_checkpoint("qwen2", head_dim=32, num_attention_heads=4, hidden_size=128)[0], "cpu")
    ids = torch.randint(0, 256, (80,), generator=torch.Generator().manual_seed(0)).tolist()
    for q, k, _ in record_qkv(model, ids):
        window = q[-32:]
        qn = query_norm(window_sq_sum(window, k.shape[1]))
        p = prune_keys(k, qn, kept_channels(k.shape[-1], ratio))
        zero_filled = k * unpack_bits(p.bitmap, k.shape[-1])
        qg = window.view(32, k.shape[1], -1, k.shape[-1])  # (W, Hkv, G, D)
        score = lambda keys: torch.einsum("wkgd,tkd->wkgt", qg, keys)  # noqa: E731
        err_restored = (score(restore_keys(p, qn, k.shape[-1])) - score(k)).abs().mean()
        err_zero = (score(zero_filled) - score(k)).abs().mean()
        assert err_restored < 0.75 * err_zero


# ---- storage -------------------------------------------------------------------------------------------
def spark_bytes_by_hand(cfg, block_size, key_ratio, value_ratio, itemsize):
    """Per token: kept keys, bitmap, signs, fp16 avg, the block's fp16 |Q| vector spread over its
    tokens, values (kept + bitmap when pruned), the block's 4-byte staging-table entry."""
    d = cfg.head_dim
    t, tv = kept_channels(d, key_ratio), kept_channels(d, value_ratio)
    key = t * itemsize + d // 8 + -(-(d - t) // 8) + 2 + 2 * d / block_size
    value = tv * itemsize + (d // 8 if tv < d else 0)
    return cfg.num_layers * cfg.num_kv_heads * (key + value) + 4 / block_size


@pytest.mark.parametrize("key_ratio,value_ratio", [(0.0, 0.0), (0.5, 0.0), (0.8, 0.0), (0.5, 0.5)])
def test_bytes_come_from_the_allocated_tensors(key_ratio, value_ratio):
    cfg = tiny_config(hidden_size=256, num_heads=4, num_kv_heads=2, num_layers=2)  # head_dim 64
    opts = dict(key_ratio=key_ratio, value_ratio=value_ratio)
    kv = SparkKV(cfg, 40, 16, CPU, torch.bfloat16, max_num_seqs=3, **opts)
    kv.allocate()
    per_token = spark_bytes_by_hand(cfg, 16, key_ratio, value_ratio, 2)
    side = SparkKV.fixed_bytes(cfg, 16, torch.bfloat16, 3)
    assert kv.allocated_bytes == 40 * SparkKV.bytes_per_block(cfg, 16, torch.bfloat16, **opts) + side
    assert kv.allocated_bytes == pytest.approx(40 * 16 * per_token + side)
    assert kv.dense16_ratio == pytest.approx(kv.allocated_bytes / (40 * 16) / dense16_bytes_per_token(cfg))
    assert kv.dense16_ratio == pytest.approx(SparkKV.ratio_to_dense16(cfg, 16, torch.bfloat16, 40, 3, **opts))
    kv.release()
    assert kv.storage() == []


def ratio(cfg, block_size=16, **opts):
    """Bytes per token of the blocks (side buffers amortised away) over a 16-bit dense cache."""
    return SparkKV.bytes_per_block(cfg, block_size, torch.bfloat16, **opts) / block_size / dense16_bytes_per_token(cfg)


def test_bytes_ratio_falls_with_pruning_head_dim_64():
    cfg = tiny_config(hidden_size=256, num_heads=4, num_kv_heads=2)
    dense_keys = 0.5  # keys are half of the 16-bit dense cache
    r0, r5, r8 = ratio(cfg, key_ratio=0.0), ratio(cfg, key_ratio=0.5), ratio(cfg, key_ratio=0.8)
    assert r0 > 1.0  # nothing pruned: the bitmaps, avg and |Q| only add
    assert (r5 - dense_keys) / dense_keys < 0.8  # the key part at r = 0.5
    assert r8 < r5 < 0.85
    assert ratio(cfg, key_ratio=0.5, value_ratio=0.5) < 0.65


# ---- the format in the engine --------------------------------------------------------------------------
def prompts(n, vocab=256, seed=0, lo=2, hi=40):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g)
    return [torch.randint(0, vocab, (int(n_),), generator=g).tolist() for n_ in lengths]


def engine_run(model, prompt_list, params, **kw):
    config = EngineConfig(**{"kv_cache_memory": 1 << 22, "block_size": 4, "max_num_batched_tokens": 48, **kw})
    engine = LLMEngine(model, None, config)
    for i, p in enumerate(prompt_list):
        engine.add_request(str(i), p, params)
    done, most_staged = {}, 0
    while engine.has_unfinished():
        done.update({o.request_id: o for o in engine.step() if o.finished})
        if kw.get("kv_format") == "spark":
            most_staged = max(most_staged, len(engine.kv.slots.of))
    return [done[str(i)].outputs[0].token_ids for i in range(len(prompt_list))], engine, most_staged


def test_key_ratio_zero_generates_exactly_what_dense_does(hf_checkpoint):
    """fp32; several sequences, chunked prefill, shared prompt prefixes (prefix cache)."""
    model = load_model(hf_checkpoint("qwen2")[0], "cpu")
    ps = prompts(4, seed=1)
    ps += [ps[0] + [7, 8, 9, 10, 11], ps[0][:9]]  # prefix-cache hits
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    dense, _, _ = engine_run(model, ps, greedy)
    spark, engine, most_staged = engine_run(model, ps, greedy, kv_format="spark", kv_options={"key_ratio": 0.0})
    assert spark == dense
    assert 0 < most_staged <= len(ps)
    kv = engine.kv  # every request finished: no staging slot or statistic is left behind
    assert kv.slots.of == {} and len(kv.slots.free) == kv.max_num_seqs and bool((kv.slots.table == -1).all())
    assert len(kv.stat_of) == 0 and len(kv.free_rows) == kv.num_stat_rows


def teacher_forced_logits(model, ids, prompt_len, fmt="dense", block_size=4, **opts):
    """Logits of every position from prompt_len - 1 on: one prefill step, then one token per step."""
    kv = get_format(fmt)(model.config, 64, block_size, CPU, torch.float32, 4, **opts)
    kv.cpu_kernel = False  # dense decodes through SDPA as SPARK does, so that ratio 0 can match it bit for bit
    kv.allocate()
    table = torch.arange(-(-len(ids) // block_size), dtype=torch.int32)[None]

    def step(pos):
        ctx = pos[-1] + 1
        meta = AttentionMetadata(torch.tensor(pos), [0, len(pos)], [ctx], table, torch.tensor([ctx], dtype=torch.int32))
        with torch.no_grad():
            h = model(torch.tensor([ids[p] for p in pos]), torch.tensor(pos), PagedAttention(kv, meta))
            return model.compute_logits(h[-1:])

    return torch.cat([step(list(range(prompt_len)))] + [step([p]) for p in range(prompt_len, len(ids))])


def kl(ref, test):
    p, q = ref.log_softmax(-1), test.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_logits_kl_against_dense_grows_with_pruning(hf_checkpoint, family):
    model = load_model(hf_checkpoint(family)[0], "cpu")  # head_dim 16
    ids = torch.randint(0, 256, (36,), generator=torch.Generator().manual_seed(2)).tolist()
    ref = teacher_forced_logits(model, ids, 16)
    kls = {r: kl(ref, teacher_forced_logits(model, ids, 16, "spark", key_ratio=r)) for r in (0.0, 0.25, 0.5, 0.8)}
    assert kls[0.0] == 0.0
    assert kls[0.25] < kls[0.5] < kls[0.8]
    # measured: qwen2 0.03 / 0.21 / 0.58 and llama 0.04 / 0.22 / 0.53 nats at 0.25 / 0.5 / 0.8 (head_dim 16,
    # random weights at initializer_range 0.2, whose peaked logits magnify every error)
    assert kls[0.5] < 0.6 * kls[0.8] and kls[0.5] < 0.4


def test_attention_output_error_is_ordered_by_ratio():
    """One layer, the format's own attend against dense on the same random keys, queries, values."""
    cfg = tiny_config(hidden_size=128, num_heads=4, num_kv_heads=2, num_layers=1)
    g = torch.Generator().manual_seed(0)
    n = 40
    q = torch.randn(n, 4, 32, generator=g)
    k = torch.randn(n, 2, 32, generator=g) * torch.linspace(0.1, 3, 32)  # channels of unequal size, as in real keys
    v = torch.randn(n, 2, 32, generator=g)

    def outputs(fmt, **opts):
        kv = get_format(fmt)(cfg, 16, 4, CPU, torch.float32, 2, **opts)
        kv.cpu_kernel = False  # dense decodes through SDPA as SPARK does: ratio 0 must match it bit for bit
        kv.allocate()
        out = []
        for start, stop in ((0, 24),) + tuple((p, p + 1) for p in range(24, n)):  # prefill, then decode
            meta = AttentionMetadata(torch.arange(start, stop), [0, stop - start], [stop], torch.arange(10)[None].int(),
                                     torch.tensor([stop], dtype=torch.int32))
            kv.write(0, meta.slot_mapping, k[start:stop], v[start:stop])
            out.append(kv.attend(0, q[start:stop], meta))
        return torch.cat(out)

    ref = outputs("dense")
    err = {r: float((outputs("spark", key_ratio=r) - ref).norm() / ref.norm()) for r in (0.0, 0.25, 0.5, 0.8)}
    assert err[0.0] == 0.0 and 0 < err[0.25] < err[0.5] < err[0.8]
    assert float((outputs("spark", key_ratio=0.5, value_ratio=0.5) - ref).norm() / ref.norm()) > err[0.5]


def test_staging_pool_holds_one_block_per_sequence_and_is_returned(hf_checkpoint):
    model = load_model(hf_checkpoint("llama")[0], "cpu")
    ps = prompts(5, seed=3, lo=3, hi=30)
    params = SamplingParams(temperature=0, max_tokens=11, ignore_eos=True)
    _, engine, most = engine_run(model, ps, params, kv_format="spark", kv_options={"key_ratio": 0.5}, max_num_seqs=3)
    kv = engine.kv
    assert kv.staging.shape[2] == 3 and 0 < most <= 3
    assert kv.slots.of == {} and sorted(kv.slots.free) == [0, 1, 2] and not kv.stat_of


@pytest.mark.parametrize("key_ratio", [0.0, 0.5])
def test_a_chunk_that_fills_a_staged_block_and_starts_the_next_needs_one_slot(hf_checkpoint, key_ratio):
    """Two sequences, two staging slots, 8 tokens a step: A (6 tokens) stages its 2-token tail, B gets a
    2-token chunk, staged; next step B's 4 tokens fill that block and start the next while A still
    holds its slot. Found by `bench kv` at 64 sequences, where it exhausted the pool."""
    model = load_model(hf_checkpoint("qwen2")[0], "cpu")
    ps = [list(range(10, 16)), list(range(20, 26))]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    run = dict(max_num_seqs=2, max_num_batched_tokens=8, enable_prefix_caching=False)
    out, engine, most = engine_run(model, ps, params, kv_format="spark", kv_options={"key_ratio": key_ratio}, **run)
    assert most == 2 and sorted(engine.kv.slots.free) == [0, 1]
    if key_ratio == 0:  # every channel kept: the filled block read as stored is read exactly
        assert out == engine_run(model, ps, params, **run)[0]


def test_value_pruning_runs_in_the_engine_and_stores_less(hf_checkpoint):
    model = load_model(hf_checkpoint("qwen2")[0], "cpu")
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    out, engine, _ = engine_run(model, prompts(2, seed=4), params, kv_format="spark",
                                kv_options={"key_ratio": 0.5, "value_ratio": 0.5})
    assert all(len(o) == 8 for o in out) and "v_bitmap" in engine.kv.t
    assert engine.kv.t["v_kept"].shape[-1] == 8  # of head_dim 16


@pytest.mark.parametrize("opts,match", [({"key_ratio": 1.0}, "key_ratio"), ({"key_ratio": "half"}, "key_ratio"),
                                        ({"value_ratio": -0.1}, "value_ratio"), ({"window": 0}, "window"),
                                        ({"group_size": 4}, "no option"), ({"bits": 3}, "option bits"),
                                        ({"bits": True}, "option bits"),
                                        ({"bits": 4, "value_ratio": 0.5}, "bits=4.*value_ratio=0.5")])
def test_bad_options_are_named(opts, match):
    with pytest.raises(ValueError, match=match):
        SparkKV(tiny_config(), 8, 4, CPU, torch.float32, **opts)


# ---- composition with TaDA (option bits) -----------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_bits_compose_close_to_plain_spark_at_8_and_worse_at_2(hf_checkpoint, family):
    model = load_model(hf_checkpoint(family)[0], "cpu")  # head_dim 16
    ids = torch.randint(0, 256, (36,), generator=torch.Generator().manual_seed(2)).tolist()
    ref = teacher_forced_logits(model, ids, 16)
    plain = teacher_forced_logits(model, ids, 16, "spark", key_ratio=0.5)
    comp = {b: teacher_forced_logits(model, ids, 16, "spark", key_ratio=0.5, bits=b) for b in (2, 4, 8)}
    to_plain = {b: kl(plain, x) for b, x in comp.items()}
    to_dense = {b: kl(ref, x) for b, x in comp.items()}
    # measured KL(spark || spark+bits) at bits 8 / 4 / 2: qwen2 1e-4 / 0.020 / 0.47, llama 2e-4 / 0.029 / 0.62;
    # KL(dense || .): plain 0.21 / 0.22, bits=8 0.21 / 0.23, bits=2 0.57 / 0.73
    assert 0 < to_plain[8] < to_plain[4] < to_plain[2]
    assert to_plain[8] < 0.005 * kl(ref, plain)
    assert to_dense[2] > 1.5 * to_dense[8]


def spark_bits_bytes_by_hand(cfg, block_size, key_ratio, bits):
    """Per token: key codes (T codes padded to whole bytes), fp16 scale and zero, bitmap, signs, fp16
    avg, the block's fp16 |Q| spread over its tokens; value deviation codes and fp16 scale and zero
    per head, one fp16 head-mean vector per token; the 4-byte staging-table entry per block."""
    d, per = cfg.head_dim, 8 // bits
    t = kept_channels(d, key_ratio)
    key = -(-t // per) + 4 + d // 8 + -(-(d - t) // 8) + 2 + 2 * d / block_size
    value = d * bits / 8 + 4
    return cfg.num_layers * (cfg.num_kv_heads * (key + value) + 2 * d) + 4 / block_size


@pytest.mark.parametrize("key_ratio,bits", [(0.5, 4), (0.7, 2), (0.8, 8)])
def test_bits_bytes_come_from_the_allocated_tensors(key_ratio, bits):
    cfg = tiny_config(hidden_size=256, num_heads=4, num_kv_heads=2, num_layers=2)  # head_dim 64
    kv = SparkKV(cfg, 40, 16, CPU, torch.bfloat16, max_num_seqs=3, key_ratio=key_ratio, bits=bits)
    kv.allocate()
    side = SparkKV.fixed_bytes(cfg, 16, torch.bfloat16, 3)
    assert kv.allocated_bytes == pytest.approx(40 * 16 * spark_bits_bytes_by_hand(cfg, 16, key_ratio, bits) + side)
    assert kv.allocated_bytes == 40 * SparkKV.bytes_per_block(cfg, 16, torch.bfloat16, key_ratio=key_ratio,
                                                                bits=bits) + side


def test_bits_store_less_than_plain_spark():
    """Blocks only (side buffers amortised away), r = 0.5. With 2 KV heads the fp16 head mean alone is
    1/4 of the dense cache (TaDA's 1/H per K or V)."""
    for kv_heads, hidden, heads, most in ((2, 256, 4, 0.7), (8, 4096, 32, 0.45)):  # head_dim 64; 128 (Llama-3-8B)
        cfg = tiny_config(hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads)
        plain, b4 = ratio(cfg, key_ratio=0.5), ratio(cfg, key_ratio=0.5, bits=4)
        # measured: 2 x 64: 0.836 -> 0.555; 8 x 128: 0.832 -> 0.348
        assert b4 < most * plain
        assert ratio(cfg, key_ratio=0.5, bits=2) < b4 < ratio(cfg, key_ratio=0.5, bits=8) < plain


def test_bits_storage_holds_codes_not_model_dtype_keys_or_values():
    """bf16 model: the only bf16 tensor is the staging pool of partly filled blocks."""
    cfg = tiny_config(hidden_size=256, num_heads=4, num_kv_heads=2, num_layers=2)
    kv = SparkKV(cfg, 8, 16, CPU, torch.bfloat16, max_num_seqs=2, key_ratio=0.5, bits=4)
    kv.allocate()
    assert not {"k_kept", "v_kept"} & set(kv.t)
    assert [t for t in kv.storage() if t.dtype == torch.bfloat16] == [kv.staging]
    assert kv.t["k_codes"].shape[-1] == 16 and kv.t["v_codes"].shape[-1] == 32  # 32 and 64 codes of 4 bits
    assert kv.t["v_mean"].shape == (2, 8, 16, 64) and kv.t["k_scale"].dtype == torch.float16


def test_bits_attention_reads_the_codes():
    cfg = tiny_config(hidden_size=128, num_heads=4, num_kv_heads=2, num_layers=1)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(20, h, 32, generator=g) for h in (4, 2, 2))
    kv = SparkKV(cfg, 8, 4, CPU, torch.float32, 2, key_ratio=0.5, bits=4)
    kv.allocate()
    meta = AttentionMetadata(torch.arange(20), [0, 20], [20], torch.arange(5)[None].int(),
                             torch.tensor([20], dtype=torch.int32))
    kv.write(0, meta.slot_mapping, k, v)
    kv.attend(0, q, meta)  # 5 whole blocks: stored as codes
    q1 = torch.randn(1, 4, 32, generator=g)
    step = AttentionMetadata(torch.tensor([20]), [0, 1], [21], torch.arange(6)[None].int(),
                             torch.tensor([21], dtype=torch.int32))
    outs = []
    for name in (None, "k_codes", "v_codes"):
        if name:
            kv.t[name] ^= 0x33
        outs.append(kv.attend_torch(0, q1, k[:1], v[:1], step))
    assert (outs[1] - outs[0]).abs().max() > 1e-3 and (outs[2] - outs[1]).abs().max() > 1e-3


def test_bits_run_in_the_engine(hf_checkpoint):
    model = load_model(hf_checkpoint("qwen2")[0], "cpu")
    ps = prompts(3, seed=5)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    plain, _, _ = engine_run(model, ps, params, kv_format="spark", kv_options={"key_ratio": 0.5})
    out, engine, most = engine_run(model, ps, params, kv_format="spark", kv_options={"key_ratio": 0.5, "bits": 4})
    assert all(len(o) == 10 for o in out) and 0 < most <= len(ps)
    assert "k_codes" in engine.kv.t and engine.kv.layout.bits == 4
    # prompts are prefilled in one step, attended whole: the first token cannot depend on the storage
    assert [o[0] for o in out] == [p[0] for p in plain]
    assert engine.kv.t["k_codes"].any() and engine.kv.t["v_mean"].any()  # blocks were stored as codes
    assert engine.kv.slots.of == {} and not engine.kv.stat_of
