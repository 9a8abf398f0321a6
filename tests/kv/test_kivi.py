"""KIVI: keys per channel over a block's tokens, values per token in channel groups."""

import math

import pytest
import torch
import torch.nn.functional as F

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.attention import AttentionMetadata
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.kv.calibrate import teacher_forced_logprobs
from reasonrl.engine.kv.dense import DenseKV
from reasonrl.engine.kv.kivi import KiviKV
from reasonrl.engine.kv.base import dense16_bytes_per_token
from reasonrl.models import load_model
from reasonrl.models.tiny import tiny_config

CPU = torch.device("cpu")


def keys_with_outlier_channels(n, heads=2, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, heads, dim, generator=g)
    x[:, :, 3] = 40 + torch.randn(n, heads, generator=g)  # a channel far from the others, as real keys have
    return x


def written(opts, k, v, block_size=8):
    cfg = tiny_config(hidden_size=128, num_heads=4, num_kv_heads=2)
    kv = KiviKV(cfg, 4, block_size, CPU, torch.float32, 2, **opts)
    kv.allocate()
    kv.write(0, torch.arange(k.shape[0]), k, v)
    return kv


def test_keys_are_quantized_per_channel_over_the_block():
    k = keys_with_outlier_channels(8)
    kv = written({}, k, torch.randn(8, 2, 32))
    assert kv.tensors[0]["k_scale"].shape == (4, 2, 32)  # one scale per (block, head, channel)
    dk, _ = kv._dequantize(0, torch.tensor([0]))
    lo, hi = k.aminmax(dim=0)  # per (head, channel), over the block's tokens
    err = (dk[0] - k).abs()
    assert (err <= (hi - lo) / 3 / 2 + 1e-2).all()
    normal = torch.ones(32, dtype=torch.bool)
    normal[3] = False
    # the outlier channel does not widen the others' steps (in a per-token group it would: ~40 / 3 / 2)
    assert err[:, :, normal].max() < 1.5


def test_values_are_quantized_per_token_in_channel_groups():
    v = torch.randn(8, 2, 32) * torch.linspace(0.1, 3, 8)[:, None, None]  # very different scales per token
    kv = written({"group_size": 8}, torch.randn(8, 2, 32), v)
    assert kv.tensors[0]["v_scale"].shape == (4, 8, 2, 4)
    _, dv = kv._dequantize(0, torch.tensor([0]))
    g = v.unflatten(-1, (4, 8))
    lo, hi = g.aminmax(dim=-1)
    err = (dv[0] - v).abs().unflatten(-1, (4, 8))
    assert (err <= ((hi - lo) / 3 / 2)[..., None] + 1e-2).all()
    assert err[0].max() < 0.1  # the small-scale token keeps its own small step


def test_default_group_is_32_or_head_dim():
    assert KiviKV.settings(tiny_config(hidden_size=256, num_heads=4))[2] == 32  # head_dim 64
    assert KiviKV.settings(tiny_config(hidden_size=64, num_heads=4))[2] == 16  # head_dim 16


def decode_attention_error(opts, seed=0):
    cfg = tiny_config(hidden_size=128, num_heads=4, num_kv_heads=2)
    bs, lens = 8, [13, 24, 30]
    kv = KiviKV(cfg, 16, bs, CPU, torch.float32, 4, **opts)
    kv.allocate()
    tables = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]], dtype=torch.int32)
    slots = torch.tensor([int(tables[b, p // bs]) * bs + p % bs for b, n in enumerate(lens) for p in range(n)])
    k, v = keys_with_outlier_channels(len(slots), seed=seed), torch.randn(len(slots), 2, 32)
    for layer in range(2):
        kv.write(layer, slots, k, v)
    for layer in range(2):  # a later step, writing nothing: it reads those tokens as stored, not as written
        kv.write(layer, slots[:0], k[:0], v[:0])
    q = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(seed + 1)) * 0.2
    meta = AttentionMetadata(slots[[12, 36, 66]], [0, 1, 2, 3], lens, tables, torch.tensor(lens, dtype=torch.int32))
    out, errs, start = kv.attend(0, q, meta), [], 0
    for b, n in enumerate(lens):
        exact = F.scaled_dot_product_attention(q[b, :, None], k[start:start + n].transpose(0, 1),
                                               v[start:start + n].transpose(0, 1), enable_gqa=True)[:, 0]
        errs.append((out[b] - exact).abs().max())
        start += n
    return float(max(errs))


def test_attention_error_is_ordered_by_bits():
    e8, e4, e2 = (decode_attention_error({"k_bits": b, "v_bits": b}) for b in (8, 4, 2))
    assert e8 < 0.03 and e8 < e4 < e2, (e8, e4, e2)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_logits_kl_against_dense(hf_checkpoint, family):
    """Teacher-forced through the cache (the engine's write/attend path): KIVI-8 is near-exact,
    KIVI-2 is worse but finite."""
    path, _ = hf_checkpoint(family)
    model = load_model(path, "cpu")
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, 256, (30,), generator=g).tolist() for _ in range(2)]
    ref = teacher_forced_logprobs(model, DenseKV, seqs, 5, block_size=8)
    kls = []
    for bits in (8, 2):
        logq = teacher_forced_logprobs(model, KiviKV, seqs, 5, block_size=8, k_bits=bits, v_bits=bits)
        kls.append(float((ref.exp() * (ref - logq)).sum(-1).mean()))
    assert kls[0] < 1e-3 and kls[0] < kls[1] < math.inf, kls


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_engine_greedy_runs_and_stays_close_to_dense(hf_checkpoint, family):
    path, _ = hf_checkpoint(family)
    model = load_model(path, "cpu")
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (7, 19, 26)]
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)

    def run(**kw):
        engine = LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 22, block_size=8, max_num_seqs=3, **kw))
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, params)
        outs = engine.drain()
        assert engine.kv.storage() and all(torch.isfinite(t.float()).all() for t in engine.kv.storage())
        return [outs[str(i)].outputs[0] for i in range(len(prompts))]

    dense, kivi8 = run(), run(kv_format="kivi", kv_options={"k_bits": 8, "v_bits": 8})
    for d, q in zip(dense, kivi8):
        assert len(q.token_ids) == 20
        first = next((i for i, (a, b) in enumerate(zip(d.token_ids, q.token_ids)) if a != b), 20)
        # log-probs of the shared prefix agree closely (a flip can only come from a near-tie); the
        # checkpoint fixture's weights depend on test order, hence a relative part in the bound
        torch.testing.assert_close(torch.tensor(q.logprobs[:first]), torch.tensor(d.logprobs[:first]), atol=5e-2, rtol=5e-2)
        assert first >= 5


def test_bytes_per_token_ratio_is_the_formula_from_allocated_tensors():
    """Per token and layer: k_bits/32 + 1/block_size (per-channel key scale and zero) + v_bits/32 +
    1/group_size (value scale and zero) of the 16-bit dense cache, plus slot entries and staging."""
    cfg = tiny_config(hidden_size=256, num_heads=4, num_kv_heads=2)  # head_dim 64
    num_blocks, bs, seqs = 256, 16, 2
    kv = KiviKV(cfg, num_blocks, bs, CPU, torch.bfloat16, seqs)
    kv.allocate()
    dense16 = dense16_bytes_per_token(cfg)
    staging = 2 * cfg.num_layers * seqs * bs * 2 * 64 * 2
    formula = 2 / 32 + 1 / bs + 2 / 32 + 1 / 32 + (4 + staging / num_blocks) / (bs * dense16)
    assert kv.dense16_ratio == pytest.approx(formula, rel=1e-12)
    assert KiviKV.ratio_to_dense16(cfg, bs, torch.bfloat16, num_blocks, seqs) == pytest.approx(formula)
    assert kv.dense16_ratio < 0.23


@pytest.mark.parametrize("opts,match", [
    ({"k_bits": 3}, "option k_bits must be one of"),
    ({"v_bits": 1}, "option v_bits must be one of"),
    ({"group_size": 5}, "group_size must be a positive divisor"),
    ({"bits": 2}, "'kivi' has no option"),
])
def test_bad_options_are_named(opts, match):
    with pytest.raises(ValueError, match=match):
        KiviKV(tiny_config(), 4, 16, CPU, torch.float32, 2, **opts)


def test_the_default_group_divides_any_head_dim():
    """head_dim 80 or 100 (open_llama_3b): the default group was 32, and the engine refused to start
    blaming an option the user never set."""
    for head_dim, group in ((64, 32), (128, 32), (80, 20), (100, 25), (16, 16)):
        cfg = tiny_config(hidden_size=2 * head_dim, num_heads=2, num_kv_heads=1)
        assert cfg.head_dim == head_dim and KiviKV.settings(cfg)[2] == group


def test_rollback_restores_a_filled_blocks_staged_rows_that_a_new_block_overwrote():
    """A step fills block 0 (staged from earlier steps) and starts block 1, which takes the slot block
    0 just handed back and writes over its rows. `rollback` (engine/isolation.py, after a failed
    attempt) must give block 0 its slot and rows back, so that the rerun can fill it again."""
    cfg = tiny_config(hidden_size=128, num_heads=4, num_kv_heads=2)
    kv = KiviKV(cfg, 4, 8, CPU, torch.float32, 1)  # one staging slot: block 1 must take block 0's
    kv.allocate()
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(8, 2, 32, generator=g), torch.randn(8, 2, 32, generator=g)
    for layer in range(cfg.num_layers):
        kv.write(layer, torch.arange(5), k[:5], v[:5])  # block 0, offsets 0-4: staged
    before = kv.staging.clone()
    for layer in range(cfg.num_layers):
        kv.write(layer, torch.tensor([5, 6, 7, 8, 9]), k[:5], v[:5])  # fills block 0, starts block 1 (slots 8, 9)
    assert kv.slots.of == {1: 0} and not torch.equal(kv.staging, before)
    kv.rollback()
    assert kv.slots.of == {0: 0} and kv.slots.table.tolist() == [0, -1, -1, -1] and torch.equal(kv.staging, before)
    for layer in range(cfg.num_layers):  # the rerun, as the first attempt: no "never staged" error
        kv.write(layer, torch.tensor([5, 6, 7, 8, 9]), k[:5], v[:5])
    assert kv.slots.of == {1: 0}


def test_codes_that_would_not_fill_whole_bytes_are_refused_at_start():
    """head_dim 10 at 2 bits: 2 bytes were allocated for 3 bytes of codes, and the first write crashed."""
    from reasonrl.engine.kv.tada import TadaKV
    from reasonrl.models.tiny import tiny_config as config

    cfg = config(hidden_size=40, num_heads=4)  # head_dim 10
    with pytest.raises(ValueError, match="option k_bits=2 needs head_dim=10 to be a multiple of 4"):
        KiviKV(cfg, 4, 16, CPU, torch.float32, 2, group_size=5)
    with pytest.raises(ValueError, match="option bits=2 needs head_dim=10 to be a multiple of 4"):
        TadaKV(cfg, 4, 16, CPU, torch.float32, 2, bits=2)
    TadaKV(cfg, 4, 16, CPU, torch.float32, 2, bits=4)  # 10 four-bit codes fill 5 bytes


def test_shapes_the_triton_decode_kernels_cannot_compile_fall_back_with_a_warning():
    """On an NVIDIA GPU tl.dot needs an inner size of 16 for 16-bit inputs: a block size of 8 failed
    to compile and every decode step failed with it (found by compiling for sm_90 without a GPU)."""
    from reasonrl.kernels.paged_attention import kernel_fits

    assert kernel_fits(16, 64, torch.bfloat16) and kernel_fits(8, 64, torch.float32)
    for block, head, dtype in ((8, 64, torch.bfloat16), (4, 64, torch.float32), (16, 80, torch.float16), (12, 64, torch.float32)):
        with pytest.warns(UserWarning, match="PyTorch path"):
            assert not kernel_fits(block, head, dtype)
