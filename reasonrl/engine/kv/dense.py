"""Dense paged KV: keys and values stored as they are, in the model's dtype.

Attention on CPU (and for prefill on GPU) gathers a sequence's blocks and runs PyTorch SDPA;
all-decode steps are batched into one SDPA call with a length mask. On CUDA, decode steps use the
Triton paged decode kernel, which reads the blocks in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reasonrl.engine.attention import AttentionMetadata, causal_mask
from reasonrl.engine.kv.base import KVFormat


class DenseKV(KVFormat):
    name = "dense"

    @classmethod
    def bytes_per_block(cls, cfg, block_size, dtype, **options):
        return 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * torch.empty((), dtype=dtype).element_size()

    def allocate(self):
        c = self.cfg
        # (layers, k/v, blocks, block_size, kv_heads, head_dim): one allocation, a view per layer
        self.cache = torch.zeros(c.num_layers, 2, self.num_blocks, self.block_size, c.num_kv_heads, c.head_dim,
                                 device=self.device, dtype=self.dtype)

    def release(self):
        self.cache = None

    def storage(self):
        return [] if getattr(self, "cache", None) is None else [self.cache]

    def write(self, layer, slots, k, v):
        flat = self.cache[layer].view(2, -1, k.shape[1], k.shape[2])  # (2, blocks * block_size, H, D)
        flat[0].index_copy_(0, slots, k.to(self.dtype))
        flat[1].index_copy_(0, slots, v.to(self.dtype))

    def read_prefix(self, layer, blocks, n):
        k, v = self.cache[layer, :, blocks].flatten(1, 2)[:, :n]  # (2, blocks, block_size, H, D) -> k, v (n, H, D)
        return k, v

    def write_entries(self, layer, slots, k, v, window_q):
        self.write(layer, slots, k, v)

    def copy_slots(self, src, dst):
        flat = self.cache.flatten(2, 3)  # (layers, 2, blocks * block_size, H, D)
        flat[:, :, dst] = flat[:, :, src]

    def attend(self, layer, q, meta: AttentionMetadata):
        k_cache, v_cache = self.cache[layer, 0], self.cache[layer, 1]  # (blocks, block_size, H, D)
        if meta.decode_only:
            return self._decode(q, k_cache, v_cache, meta.block_tables, meta.context_lens_t, meta.context_lens)
        out = torch.empty_like(q)
        decode = [b for b in range(meta.num_seqs) if meta.q_len(b) == 1 and not (meta.masks and meta.masks[b] is not None)]
        if decode:  # one batched call for the decoding sequences of a mixed step
            rows = torch.tensor([meta.query_start[b] for b in decode], device=q.device)
            idx = torch.tensor(decode, device=q.device)
            out[rows] = self._decode(q[rows], k_cache, v_cache, meta.block_tables[idx], meta.context_lens_t[idx],
                                     [meta.context_lens[b] for b in decode])
        for b in sorted(set(range(meta.num_seqs)) - set(decode)):
            lo, hi = meta.query_start[b], meta.query_start[b + 1]
            ctx = meta.context_lens[b]
            blocks = meta.block_tables[b, : -(-ctx // self.block_size)]
            k = k_cache[blocks].flatten(0, 1)[:ctx]  # (ctx, H, D)
            v = v_cache[blocks].flatten(0, 1)[:ctx]
            mask = causal_mask(hi - lo, ctx, meta.masks[b] if meta.masks else None, q.device)
            o = F.scaled_dot_product_attention(q[lo:hi].transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                               attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
            out[lo:hi] = o.transpose(0, 1)
        return out

    def _decode(self, q, k_cache, v_cache, tables, lens, lens_list: list[int]):
        """One query token per sequence: q (B, Hq, D), tables (B, max_blocks), lens (B,) and as a list."""
        if q.is_cuda:
            from reasonrl.kernels.paged_attention import paged_decode

            return paged_decode(q, k_cache, v_cache, tables, lens)
        groups = length_groups(lens_list)
        if len(groups) == 1:
            return self._gather_decode(q, k_cache, v_cache, tables, lens, max(lens_list))
        out = torch.empty_like(q)
        for longest, members in groups:
            idx = torch.tensor(members, device=q.device)
            out[idx] = self._gather_decode(q[idx], k_cache, v_cache, tables[idx], lens[idx], longest)
        return out

    def _gather_decode(self, q, k_cache, v_cache, tables, lens, max_len):
        """Gathers the blocks of every sequence, padded to max_len, and runs one masked SDPA."""
        tables = tables[:, : -(-max_len // self.block_size)]
        k = k_cache[tables].flatten(1, 2).transpose(1, 2)  # (B, H, S, D)
        v = v_cache[tables].flatten(1, 2).transpose(1, 2)
        valid = torch.arange(k.shape[2], device=q.device)[None, :] < lens[:, None]
        o = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=valid[:, None, None, :],
                                           enable_gqa=q.shape[1] != k.shape[1])
        return o[:, :, 0, :]


def length_groups(lens: list[int], min_group: int = 8) -> list[tuple[int, list[int]]]:
    """Decode rows grouped by context length, longest first, so that gathering each group padded to
    its longest sequence wastes at most about half of it (heavy-tailed RL batches would otherwise
    pad every row to the single longest). Groups under `min_group` rows absorb shorter ones: below
    that, a separate call costs more than the padding it saves. Returns [(longest, rows)]."""
    groups: list[tuple[int, list[int]]] = []
    for i in sorted(range(len(lens)), key=lens.__getitem__, reverse=True):
        if groups and (2 * lens[i] > groups[-1][0] or len(groups[-1][1]) < min_group):
            groups[-1][1].append(i)
        else:
            groups.append((lens[i], [i]))
    return groups
