"""TaDA: head-mean plus quantized deviations, per-layer bits; quality against the dense cache."""

import math

import pytest
import torch
import torch.nn.functional as F

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.attention import AttentionMetadata
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.kv.calibrate import teacher_forced_logprobs
from reasonrl.engine.kv.dense import DenseKV
from reasonrl.engine.kv.base import dense16_bytes_per_token
from reasonrl.engine.kv.quant import dequantize, quantize
from reasonrl.engine.kv.tada import TadaKV
from reasonrl.models import load_model
from reasonrl.models.tiny import tiny_config

CPU = torch.device("cpu")


def prompts(n, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(L),), generator=g).tolist() for L in torch.randint(5, 30, (n,), generator=g)]


def greedy_with_logits(model, prompt_list, steps=20, **engine_kw):
    """Greedy tokens and the logits of every step, one request at a time (rows stay in order)."""
    engine = LLMEngine(model, None, EngineConfig(kv_cache_memory=1 << 22, block_size=8, **engine_kw))
    seen, compute = [], model.compute_logits
    model.compute_logits = lambda h: seen.append(compute(h)) or seen[-1]
    try:
        out = []
        for i, p in enumerate(prompt_list):
            seen.clear()
            engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True))
            while engine.has_unfinished():
                done = [o for o in engine.step() if o.finished]
            out.append((done[0].outputs[0].token_ids, torch.cat(seen)))
        return out
    finally:
        del model.compute_logits


def prefix_kl(ref, test):
    """Mean KL(dense || test) over the steps whose context is still the same (up to and including
    the first step where the greedy tokens differ), and the dense top-2 logit gap at each first
    difference (a small perturbation of the logits can only flip a near-tie)."""
    kls, gaps = [], []
    for (tok_r, log_r), (tok_t, log_t) in zip(ref, test):
        first = next((i for i, (a, b) in enumerate(zip(tok_r, tok_t)) if a != b), None)
        n = len(tok_r) if first is None else first + 1
        p, q = log_r[:n].log_softmax(-1), log_t[:n].log_softmax(-1)
        kls.append((p.exp() * (p - q)).sum(-1))
        if first is not None:
            top2 = log_r[first].topk(2).values
            gaps.append(float(top2[0] - top2[1]))
    return float(torch.cat(kls).mean()), gaps


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_engine_output_against_dense(hf_checkpoint, family):
    path, _ = hf_checkpoint(family)
    model = load_model(path, "cpu")
    ps = prompts(2, seed=1)
    dense = greedy_with_logits(model, ps)
    kl8, gaps8 = prefix_kl(dense, greedy_with_logits(model, ps, kv_format="tada", kv_options={"bits": 8}))
    kl2, _ = prefix_kl(dense, greedy_with_logits(model, ps, kv_format="tada", kv_options={"bits": 2}))
    assert kl8 < 1e-3 and all(gap < 0.1 for gap in gaps8), (kl8, gaps8)  # logits here span about 10
    assert kl8 < kl2 < math.inf


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_teacher_forced_kl_is_ordered_by_bits(hf_checkpoint, family):
    path, _ = hf_checkpoint(family)
    model = load_model(path, "cpu")
    seqs = [(s + s[::-1])[:22] for s in prompts(2, seed=2)]  # full and partial blocks of 8
    ref = teacher_forced_logprobs(model, DenseKV, seqs, 4, block_size=8)
    kls = []
    for bits in (8, 4, 2):
        logq = teacher_forced_logprobs(model, TadaKV, seqs, 4, block_size=8, bits=bits)
        kls.append(float((ref.exp() * (ref - logq)).sum(-1).mean()))
    assert kls[0] < 1e-3 and kls[0] < kls[1] < kls[2] < math.inf, kls


def heads_with_a_shared_part(n, heads, dim, shared=3.0, seed=0):
    """Keys/values whose heads share a component, as real KV heads of one token do."""
    g = torch.Generator().manual_seed(seed)
    return shared * torch.randn(n, 1, dim, generator=g) + torch.randn(n, heads, dim, generator=g)


def decode_attention_error(fmt, opts, seed=0):
    """Max |attention output - exact attention| for 3 decoding sequences (full and partial blocks)."""
    cfg = tiny_config(hidden_size=128, num_heads=4, num_kv_heads=2)  # head_dim 32
    bs, lens = 8, [13, 24, 30]
    kv = fmt(cfg, 16, bs, CPU, torch.float32, 4, **opts)
    kv.allocate()
    tables = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]], dtype=torch.int32)
    slots = torch.tensor([int(tables[b, p // bs]) * bs + p % bs for b, n in enumerate(lens) for p in range(n)])
    k, v = heads_with_a_shared_part(len(slots), 2, 32, seed=seed), heads_with_a_shared_part(len(slots), 2, 32, seed=seed + 1)
    for layer in range(cfg.num_layers):
        kv.write(layer, slots, k, v)
    for layer in range(2):  # a later step, writing nothing: it reads those tokens as stored, not as written
        kv.write(layer, slots[:0], k[:0], v[:0])
    q = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(seed + 2))
    meta = AttentionMetadata(slots[[12, 36, 66]], [0, 1, 2, 3], lens, tables, torch.tensor(lens, dtype=torch.int32))
    out = kv.attend(1, q, meta)
    errs, start = [], 0
    for b, n in enumerate(lens):
        kb, vb = k[start:start + n].transpose(0, 1), v[start:start + n].transpose(0, 1)  # (H, n, D)
        exact = F.scaled_dot_product_attention(q[b, :, None], kb, vb, enable_gqa=True)[:, 0]
        errs.append((out[b] - exact).abs().max())
        start += n
    return float(max(errs))


def test_attention_error_is_ordered_by_bits():
    e8, e4, e2 = (decode_attention_error(TadaKV, {"bits": b}) for b in (8, 4, 2))
    assert e8 < 0.03 and e8 < e4 < e2, (e8, e4, e2)


def test_per_layer_bits_and_group_size():
    errs = [decode_attention_error(TadaKV, {"bits": [8, b], "group_size": 8}) for b in (8, 2)]
    assert errs[0] < errs[1]  # layer 1 is attended: its own bits count
    cfg = tiny_config(hidden_size=128, num_heads=4, num_kv_heads=2)
    kv = TadaKV(cfg, 4, 8, CPU, torch.float32, 2, bits=[2, 8], group_size=8)
    kv.allocate()
    assert kv.tensors[0]["k_codes"].shape == (4, 8, 2, 32 * 2 // 8)
    assert kv.tensors[1]["k_codes"].shape == (4, 8, 2, 32)
    assert kv.tensors[1]["k_scale"].shape == (4, 8, 2, 4) and kv.tensors[1]["k_mean"].shape == (4, 8, 32)


def test_mean_centering_removes_the_shared_part():
    """Heads that share a large component: TaDA quantizes only the small deviations, so 2 bits
    reconstruct keys to within the deviations' step; quantizing the heads directly cannot."""
    cfg = tiny_config(hidden_size=128, num_heads=4, num_kv_heads=2)
    x = heads_with_a_shared_part(8, 2, 32, shared=20.0)
    x = x - x.mean(1, keepdim=True) * 0.98  # deviations of about 1, shared part of about 20
    x = x + 20.0 * torch.randn(8, 1, 32, generator=torch.Generator().manual_seed(5))
    kv = TadaKV(cfg, 2, 8, CPU, torch.float32, 1, bits=2)
    kv.allocate()
    kv.write(0, torch.arange(8), x, x)
    k, _ = kv._dequantize(0, torch.tensor([0]))
    tada_err = (k[0] - x).abs().max()
    direct_err = (dequantize(*quantize(x, 2, 32), 2, 32) - x).abs().max()
    assert x.abs().max() > 30 and tada_err < 1.0 and direct_err > 3 * tada_err


@pytest.mark.parametrize("kv_heads,head_dim,bits,bound", [(2, 64, 4, 0.80), (8, 64, 4, 0.42), (2, 16, 2, 0.78)])
def test_bytes_per_token_ratio_is_the_formula_from_allocated_tensors(kv_heads, head_dim, bits, bound):
    """Per token and layer: 1/H (fp16 means) + bits/16 (codes) + 2/G (fp16 scale and zero) of the
    16-bit dense cache, plus a 4-byte slot entry per block and the staging pool."""
    heads = max(4, kv_heads)
    cfg = tiny_config(hidden_size=heads * head_dim, num_heads=heads, num_kv_heads=kv_heads)
    num_blocks, bs, seqs = 256, 16, 2
    kv = TadaKV(cfg, num_blocks, bs, CPU, torch.bfloat16, seqs, bits=bits)
    kv.allocate()
    dense16 = dense16_bytes_per_token(cfg)
    assert dense16 == 2 * cfg.num_layers * kv_heads * head_dim * 2
    staging = 2 * cfg.num_layers * seqs * bs * kv_heads * head_dim * 2
    formula = 1 / kv_heads + bits / 16 + 2 / head_dim + (4 + staging / num_blocks) / (bs * dense16)
    assert kv.dense16_ratio == pytest.approx(formula, rel=1e-12)
    assert TadaKV.ratio_to_dense16(cfg, bs, torch.bfloat16, num_blocks, seqs, bits=bits) == pytest.approx(formula)
    assert kv.num_blocks * TadaKV.bytes_per_block(cfg, bs, torch.bfloat16, bits=bits) + staging == kv.allocated_bytes
    assert kv.dense16_ratio < bound


def test_mha_4_bit_ratio_matches_the_paper():
    """TaDA's LLaMA-2-7B setting (32 KV heads, head_dim 128, 4 bits): 0.297 of the 16-bit cache
    before the staging pool (the paper reports 27-29%)."""
    cfg = tiny_config(hidden_size=4096, num_heads=32, num_kv_heads=32, num_layers=1)
    per_block = TadaKV.bytes_per_block(cfg, 16, torch.bfloat16, bits=4)
    assert per_block / (16 * dense16_bytes_per_token(cfg)) == pytest.approx(1 / 32 + 4 / 16 + 2 / 128, abs=1e-4)
    assert TadaKV.ratio_to_dense16(cfg, 16, torch.bfloat16, 4096, 8, bits=4) < 0.30


@pytest.mark.parametrize("opts,match", [
    ({"bits": 3}, "option bits must be one of"),
    ({"bits": [4, 4, 4]}, "lists 3 layers, the model has 2"),
    ({"group_size": 5}, "group_size must be a positive divisor of head_dim=16"),
    ({"bits": 4, "profile": "x.json"}, "bits or option profile, not both"),
    ({"block": 4}, "'tada' has no option"),
])
def test_bad_options_are_named(opts, match):
    cfg = tiny_config()
    with pytest.raises(ValueError, match=match):
        TadaKV(cfg, 4, 16, CPU, torch.float32, 2, **opts)


def test_unknown_option_fails_when_the_engine_starts(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2")
    with pytest.raises(ValueError, match="option bits must be one of"):
        LLMEngine(load_model(path, "cpu"), None, EngineConfig(kv_cache_memory=1 << 22, kv_format="tada",
                                                              kv_options={"bits": 16}))


def test_a_fixed_kv_budget_holds_more_tokens(hf_checkpoint):
    """The engine sizes its cache by bytes_per_block, after taking the staging pool out of the
    budget: at 2 bits a 1 MiB budget holds about 1/0.67 times the tokens of a 16-bit dense cache
    (2 KV heads: the fp16 head-means cost half of dense)."""
    path, _ = hf_checkpoint("qwen2")
    model = load_model(path, "cpu", torch.bfloat16)
    budget, cfg = 1 << 20, model.config

    def tokens(**kw):
        engine = LLMEngine(model, None, EngineConfig(kv_cache_memory=budget, block_size=16, max_model_len=64,
                                                     max_num_seqs=4, **kw))
        return engine.stats()["kv_capacity_tokens"]

    dense, tada = tokens(), tokens(kv_format="tada", kv_options={"bits": 2})
    assert dense == 16 * (budget // (16 * dense16_bytes_per_token(cfg)))
    staging = TadaKV.fixed_bytes(cfg, 16, torch.bfloat16, 4, bits=2)
    assert tada == 16 * ((budget - staging) // TadaKV.bytes_per_block(cfg, 16, torch.bfloat16, bits=2))
    assert tada / dense == pytest.approx((1 - staging / budget) / (1 / 2 + 2 / 16 + 2 / 16), rel=0.01)


@pytest.mark.parametrize("fmt, opts", [("tada", {"bits": 2}), ("kivi", {})])
def test_a_step_attends_its_own_tokens_as_computed(hf_checkpoint, fmt, opts):
    """A prefill of whole blocks quantized them before attention and read its own keys and values
    back from the codes (KL 0.35-1.1 at 2 bits against dense at the prefill's next token); the
    format's loss must start with the tokens of later steps."""
    from reasonrl.engine.kv import get_format

    path, _ = hf_checkpoint("qwen2")
    model = load_model(path, "cpu")
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 256, (40,), generator=g).tolist() for _ in range(3)]
    dense = teacher_forced_logprobs(model, DenseKV, seqs, 32, 8)
    lossy = teacher_forced_logprobs(model, get_format(fmt), seqs, 32, 8, **opts)
    torch.testing.assert_close(lossy[:3], dense[:3], atol=1e-4, rtol=0)  # the prefill step: 4 whole blocks
    assert (lossy[3:] - dense[3:]).abs().max() > 1e-2  # later steps read those blocks' codes
