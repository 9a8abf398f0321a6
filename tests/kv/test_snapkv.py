"""SnapKV selection and the one-sequence eviction harness (eviction alone and with SPARK)."""

import pytest
import torch

from reasonrl.engine.kv.snapkv import generate_with_eviction, snapkv_select
from reasonrl.models import load_model


def attended_case():
    """24 prompt tokens, window 4, 2 KV heads of a 4-query-head model: the window queries of KV
    head 0's group point at token 3's key, those of head 1's group at token 11's."""
    g = torch.Generator().manual_seed(0)
    keys = 0.01 * torch.randn(24, 2, 8, generator=g)
    keys[3, 0, 0] = keys[11, 1, 1] = 10.0
    q = 0.01 * torch.randn(4, 4, 8, generator=g)
    q[:, :2, 0] = 5.0  # query heads 0, 1 -> KV head 0
    q[:, 2:, 1] = 5.0  # query heads 2, 3 -> KV head 1
    return q, keys


def test_snapkv_keeps_the_attended_tokens_and_the_window():
    q, keys = attended_case()
    window = [20, 21, 22, 23]
    assert snapkv_select(q, keys, budget=1, kernel_size=1).tolist() == [[3] + window, [11] + window]
    # pooled over 5 positions a spike spreads over its neighbours: the budget of 5 takes them all
    assert snapkv_select(q, keys, budget=5).tolist() == [[1, 2, 3, 4, 5] + window, [9, 10, 11, 12, 13] + window]


def test_snapkv_sums_over_the_gqa_group():
    q, keys = attended_case()
    q[:, 1, 0], q[:, 1, 2] = 0.0, 40.0  # query head 1 now looks at token 17 (channel 2), harder than head 0 at 3
    keys[17, 0, 2] = 10.0
    kept = snapkv_select(q, keys, budget=2, kernel_size=1)
    assert kept[0].tolist() == [3, 17, 20, 21, 22, 23]  # both heads of the group are served


def test_short_prompts_are_kept_whole():
    q, keys = attended_case()
    assert snapkv_select(q, keys[:9], budget=5).tolist() == [list(range(9))] * 2
    with pytest.raises(ValueError, match="kernel_size"):
        snapkv_select(q, keys, budget=5, kernel_size=4)


def plain_greedy(model, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model.compute_logits(model.forward_padded(torch.tensor([seq]))[0, -1]).argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_budget_covering_the_prompt_reproduces_plain_greedy(hf_checkpoint, family):
    model = load_model(hf_checkpoint(family)[0], "cpu")
    prompt = torch.randint(0, 256, (30,), generator=torch.Generator().manual_seed(1)).tolist()
    expected = plain_greedy(model, prompt, 12)
    assert generate_with_eviction(model, prompt, 12, budget=30, window=8)[0] == expected
    assert generate_with_eviction(model, prompt, 12, budget=26, window=4)[0] == expected  # 26 + 4 = all
    assert generate_with_eviction(model, prompt, 12, budget=4, window=4)[0][0] == expected[0]  # prefill is exact


def test_bytes_fall_with_budget_and_with_channel_pruning(hf_checkpoint):
    path, _ = hf_checkpoint("qwen2", head_dim=64, hidden_size=256)
    model = load_model(path, "cpu")
    cfg = model.config
    prompt = torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(2)).tolist()
    new, window = 6, 8
    fp16 = dict(window=window, store_dtype=torch.float16)
    bytes_at = {b: generate_with_eviction(model, prompt, new, budget=b, **fp16)[1] for b in (8, 24, 56)}
    assert bytes_at[8] < bytes_at[24] < bytes_at[56]
    # eviction alone: (budget + window) prompt tokens and the generated ones, K and V whole, 2 bytes each
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
    assert bytes_at[24] == pytest.approx((24 + window + new - 1) * per_token / (64 + new - 1))
    assert bytes_at[56] == pytest.approx(per_token)  # everything kept: the 16-bit dense cache
    spark = {r: generate_with_eviction(model, prompt, new, budget=24, key_ratio=r, **fp16)[1] for r in (0.5, 0.8)}
    assert spark[0.8] < spark[0.5] < 0.9 * bytes_at[24]
    # the paper's "30% less than eviction alone": a pruned prompt token costs 175 of 256 bytes per layer and
    # head here (head_dim 64: 26 bytes of kept keys, 17 of bitmap, signs, avg and |Q|, 128 of values), 0.684;
    # the generated tokens are kept whole, so the whole cache is at 0.726
    assert spark[0.8] < 0.75 * bytes_at[24]


def test_eviction_with_spark_decodes_and_checks_options(hf_checkpoint):
    model = load_model(hf_checkpoint("llama")[0], "cpu")
    prompt = list(range(40))
    ids, _ = generate_with_eviction(model, prompt, 5, budget=16, window=8, key_ratio=0.8)
    assert len(ids) == 5 and ids[0] == plain_greedy(model, prompt, 1)[0]
    with pytest.raises(ValueError, match="key_ratio"):
        generate_with_eviction(model, prompt, 5, budget=16, key_ratio=1.0)
