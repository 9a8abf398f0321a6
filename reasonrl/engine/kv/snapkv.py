"""SnapKV token eviction (arXiv 2404.14469), and a one-sequence generation harness that evicts the
prompt's KV with it and optionally stores the kept prefix through SPARK's channel pruning
(`spark.py`), the "eviction" and "eviction + SPARK" arms of the KV benchmark.

Selection (`snapkv_select`), as in FasterDecoding/SnapKV `snapkv_utils.py`: the last `window`
prompt queries attend (softmax, causal within the window) over the whole prompt; their attention
to the prefix (the prompt before the window) is summed over the window and over the query heads
of each KV head's GQA group, smoothed by a 1-D average pool (kernel_size 5, zero padding counted,
stride 1), and each KV head keeps its top-`budget` prefix positions plus the whole window.

`generate_with_eviction` runs one sequence through a reasonrl `DecoderLM` with its own small
attention objects (the `models/model.py` Attention protocol), outside the engine: the prefill is
exact causal attention over the prompt; then each layer evicts its prompt KV (SnapKV), optionally
prunes the kept keys' channels with SPARK using |Q| from the same window queries (the paper's
setting: pruning at prefill, window of the last 32 prompt queries), and greedy decoding attends
the kept prefix plus the generated tokens, which are kept whole (as in SnapKV and SparK, which
compress the prompt only).

Departures: SnapKV's original code is for MHA; with GQA the group's scores are summed so the query
heads sharing a KV head keep the same tokens (as kvpress does). A prompt no longer than
budget + window is kept whole. Eviction inside `LLMEngine` is `engine/eviction.py`, which uses
the same selection; this harness stays as the engine-independent reference (selection and
SPARK pruning on the exact prompt keys) it is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reasonrl.engine.kv.spark_ops import PrunedKeys, kept_channels, prune_keys, query_norm, restore_keys, window_sq_sum


def snapkv_select(window_q: torch.Tensor, keys: torch.Tensor, budget: int, kernel_size: int = 5) -> torch.Tensor:
    """window_q (W, Hq, D): the last W prompt queries; keys (T, Hkv, D): the prompt's keys (after
    RoPE). -> kept positions per KV head (Hkv, budget + W), ascending; (Hkv, T) if T <= budget + W."""
    w, hq, d = window_q.shape
    t, hkv, _ = keys.shape
    if kernel_size % 2 == 0:
        raise ValueError(f"snapkv kernel_size must be odd, got {kernel_size}")
    if t <= budget + w:
        return torch.arange(t, device=keys.device).expand(hkv, t)
    prefix = t - w
    q = window_q.float().view(w, hkv, hq // hkv, d)
    logits = torch.einsum("wkgd,tkd->kgwt", q, keys.float()) * d ** -0.5  # (Hkv, G, W, T)
    visible = torch.arange(t, device=keys.device)[None, :] <= prefix + torch.arange(w, device=keys.device)[:, None]
    attn = logits.masked_fill(~visible, float("-inf")).softmax(-1)
    score = attn[..., :prefix].sum((1, 2))  # (Hkv, prefix)
    pooled = F.avg_pool1d(score[:, None], kernel_size, stride=1, padding=kernel_size // 2)[:, 0]
    top = pooled.topk(budget, dim=-1).indices
    window = torch.arange(prefix, t, device=keys.device).expand(hkv, w)
    return torch.cat([top, window], dim=-1).sort(dim=-1).values


class EvictedCache:
    """One layer of one sequence: the kept prompt KV per KV head, dense or SPARK-pruned keys, then
    the generated tokens' KV, whole. Tensors are (Hkv, tokens, ...)."""

    def __init__(self, k, v, qnorm: torch.Tensor | None, keep: int, store_dtype: torch.dtype):
        self.head_dim, self.store_dtype = k.shape[-1], store_dtype
        if qnorm is None:  # dense prefix
            self.k, self.pruned, self.qnorm = k.to(store_dtype), None, None
        else:
            p = prune_keys(k, qnorm[:, None], keep)
            self.pruned = PrunedKeys(p.kept.to(store_dtype), p.bitmap, p.signs, p.avg)
            self.k, self.qnorm = None, qnorm  # (Hkv, D) fp16, stored with the prefix
        self.v = v.to(store_dtype)
        self.new_k = k.new_zeros(k.shape[0], 0, k.shape[2], dtype=store_dtype)
        self.new_v = self.new_k.clone()

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (Hkv, 1, D): a generated token, whole."""
        self.new_k = torch.cat([self.new_k, k.to(self.store_dtype)], 1)
        self.new_v = torch.cat([self.new_v, v.to(self.store_dtype)], 1)

    def keys(self, dtype) -> torch.Tensor:
        prefix = self.k if self.pruned is None else restore_keys(self.pruned, self.qnorm[:, None], self.head_dim)
        return torch.cat([prefix.to(dtype), self.new_k.to(dtype)], 1)

    def values(self, dtype) -> torch.Tensor:
        return torch.cat([self.v.to(dtype), self.new_v.to(dtype)], 1)

    def tensors(self) -> list[torch.Tensor]:
        held = [self.v, self.new_k, self.new_v]
        if self.pruned is None:
            return held + [self.k]
        return held + [self.pruned.kept, self.pruned.bitmap, self.pruned.signs, self.pruned.avg, self.qnorm]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


class EvictingPrefill:
    """Attention for the prompt: exact causal attention, then one `EvictedCache` per layer."""

    def __init__(self, budget: int, window: int, key_ratio: float, store_dtype, kernel_size: int = 5):
        self.budget, self.window, self.key_ratio, self.kernel_size = budget, window, key_ratio, kernel_size
        self.store_dtype = store_dtype
        self.caches: list[EvictedCache] = []

    def __call__(self, layer, q, k, v):
        t, hkv, d = k.shape
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True,
                                             enable_gqa=q.shape[1] != hkv).transpose(0, 1)
        window_q = q[-self.window:]
        keep = snapkv_select(window_q, k, self.budget, self.kernel_size)  # (Hkv, n)
        idx = keep[..., None].expand(-1, -1, d)
        k_kept, v_kept = k.transpose(0, 1).gather(1, idx), v.transpose(0, 1).gather(1, idx)  # (Hkv, n, D)
        qnorm = query_norm(window_sq_sum(window_q, hkv)) if self.key_ratio > 0 else None
        self.caches.append(EvictedCache(k_kept, v_kept, qnorm, kept_channels(d, self.key_ratio), self.store_dtype))
        return out


class EvictedDecode:
    """Attention for one generated token over a layer's kept prefix plus the generated tokens."""

    def __init__(self, caches: list[EvictedCache]):
        self.caches = caches

    def __call__(self, layer, q, k, v):
        cache = self.caches[layer]
        cache.append(k.transpose(0, 1), v.transpose(0, 1))
        keys, values = cache.keys(q.dtype), cache.values(q.dtype)  # (Hkv, S, D)
        out = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, enable_gqa=q.shape[1] != keys.shape[0])
        return out.transpose(0, 1)


@torch.no_grad()
def generate_with_eviction(model, prompt_ids: list[int], max_new_tokens: int, budget: int, window: int = 32,
                           key_ratio: float = 0.0, kernel_size: int = 5,
                           store_dtype: torch.dtype | None = None) -> tuple[list[int], float]:
    """Greedy decoding of one sequence with its prompt KV evicted by SnapKV (`budget` prefix tokens
    plus the last `window` per KV head and layer) and, if key_ratio > 0, the kept keys SPARK-pruned.

    Returns (generated token ids, bytes per token): the bytes of every tensor held at the end
    (kept prompt KV, bitmaps, signs, avg, |Q|, generated tokens' KV, in `store_dtype`, default the
    model's) over the tokens whose KV was computed (prompt + max_new_tokens - 1); evicted tokens
    cost nothing. Divide by 2 * layers * kv_heads * head_dim * 2 for the ratio to a 16-bit dense
    cache (pass store_dtype=torch.float16 for 16-bit storage when the model runs in fp32)."""
    if not 0 <= key_ratio < 1 or kept_channels(model.config.head_dim, key_ratio) < 1:
        raise ValueError(f"key_ratio must be in [0, 1) and keep a channel, got {key_ratio!r}")
    if budget < 0 or window < 1 or max_new_tokens < 1 or not prompt_ids:
        raise ValueError("need budget >= 0, window >= 1, max_new_tokens >= 1 and a non-empty prompt")
    dev, n = model.device, len(prompt_ids)
    prefill = EvictingPrefill(budget, window, key_ratio, store_dtype or model.dtype, kernel_size)
    hidden = model(torch.tensor(prompt_ids, device=dev), torch.arange(n, device=dev), prefill)
    out = [int(model.compute_logits(hidden[-1:]).argmax(-1))]
    decode = EvictedDecode(prefill.caches)
    for pos in range(n, n + max_new_tokens - 1):
        hidden = model(torch.tensor(out[-1:], device=dev), torch.tensor([pos], device=dev), decode)
        out.append(int(model.compute_logits(hidden).argmax(-1)))
    stored = sum(c.nbytes for c in prefill.caches)
    return out, stored / (n + max_new_tokens - 1)
