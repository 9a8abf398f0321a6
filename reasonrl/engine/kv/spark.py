"""SPARK: per-token key-channel pruning with restoration in the attention score, as a KV-cache
format that stores less (arXiv 2508.15212, "SparK", AAAI 2026; authors' code Xnhyacinth/SparK).

Per token and KV head, channel c of the key scores k_c^2 * |Q_c|, where |Q_c| is the L2 norm of
channel c over a window of recent queries averaged over the GQA group sharing the head. The top
T = D - floor(r * D) channels are kept (r = `key_ratio`); the other P = D - T are pruned and come
back, inside the score computation, as

    k_hat_c = sign_c * sqrt(avg / |Q_c|),   avg = mean over pruned c of k_c^2 * |Q_c|,

so every pruned channel contributes the token's average pruned score (the authors' default
"recover with avg", `pooling_ratio=0.65`). What is stored, per token and KV head: the T kept
values (model dtype) in channel order, a D-bit channel bitmap, one fp16 `avg` and P sign bits;
per block and KV head: the |Q| vector the block was pruned with (D fp16). T is the same for every
token, so kept values are a dense (blocks, block_size, heads, T) tensor: the memory is really saved
(the authors' code only simulates pruning: it returns full-size keys). Values are kept whole unless
`value_ratio` > 0, in which case each token keeps its top D - floor(value_ratio * D) value channels
by |v| (bitmap + kept values) and the pruned ones read as zero.

Block life cycle. A block's tokens stay whole in a staging pool (one slot per partly filled
block, `max_num_seqs` slots) until the block fills; it is pruned in the `attend` of the step
that fills it (a block written whole in one step is pruned straight from the new keys), and its
slot goes back to the pool in that step, so a sequence never holds two (`_fill_slots`; the slot
bookkeeping is `slots.StagingSlots`, shared with TaDA and KIVI). A
sequence attends its own new tokens of the step in full precision and everything older as stored.

Departures from the paper and its code:
1. Where |Q| comes from. Paper: the last 32 prompt queries, recomputed at prefill, prune the whole
   prompt once; generated tokens are never pruned. Here the format sees queries only in `attend`:
   each sequence keeps an exponential moving sum of its group-averaged squared queries, decay
   1 - 1/window (a window of about `window` queries, exact ring buffers would cost window * D
   floats per sequence), that follows the sequence from block to block; a block is pruned with
   the statistic that includes the queries of the step that fills it. For a prompt prefilled in
   one chunk this is the paper's "last window of the prompt" statistic; generated tokens are pruned
   too, block by block. A sequence that starts from a prefix-cached block another running sequence
   still ends at may take over that sequence's statistic (quality only, never correctness).
2. |Q| is stored normalised to max 1 per (block, head) and clamped below at 2^-14 (fp16's smallest
   normal): the channel ranking and the restored value are unchanged by scaling |Q| (avg scales
   with it), fp16 cannot overflow, and the restoration never divides by zero (the authors' code
   divides by the raw norm). `avg` is clamped to the fp16 range.
3. Sign: k >= 0 reads +1 (the code maps k == 0 to -1).
4. Only the average recovery; none of the sampled recoveries or the SparK-p / SparK-g variants.
   Value pruning is per token by |v| with zero restore (the code's value heuristic mixes in
   variances over the sequence, which a paged cache does not have).
5. Composition with TaDA (option `bits`, not in the paper): the kept key values of each (token,
   head) become `bits`-bit codes with one fp16 scale and zero (asymmetric, min/max of the T kept
   values), and values are stored as TaDA stores them: per token an fp16 mean over the KV heads
   and each head's deviation from it in `bits`-bit codes with an fp16 scale and zero per (token,
   head) (TaDA's group_size = head_dim). The codes replace the model-dtype kept keys and values;
   signs, bitmap, `avg` and |Q| are unchanged, and `avg` is computed from the unquantized keys.
   Value pruning cannot be combined with `bits`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reasonrl.engine.attention import AttentionMetadata, causal_mask
from reasonrl.engine.kv.base import KVFormat, length_groups
from reasonrl.engine.kv.quant import check_bits
from reasonrl.engine.kv.slots import StagingSlots
from reasonrl.engine.kv.spark_ops import (PrunedKeys, dequantize_kept, dequantize_values, kept_channels, prune_keys,
                                          prune_values, query_norm, quantize_kept, quantize_values, restore_keys,
                                          restore_values, window_sq_sum)

# ---- the format ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparkLayout:
    head_dim: int
    keep: int  # T kept key channels
    value_keep: int  # kept value channels (head_dim: values whole)
    window: int
    bits: int | None = None  # kept keys and values as codes (composition with TaDA)

    @classmethod
    def of(cls, cfg, key_ratio=0.5, value_ratio=0.0, window=32, bits=None) -> SparkLayout:
        for name, r in (("key_ratio", key_ratio), ("value_ratio", value_ratio)):
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
                raise ValueError(f"kv_format 'spark': option {name} must be a number in [0, 1), got {r!r}")
            if kept_channels(cfg.head_dim, r) < 1:
                raise ValueError(f"kv_format 'spark': option {name}={r} keeps no channel of head_dim={cfg.head_dim}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"kv_format 'spark': option window must be a positive integer, got {window!r}")
        d = cfg.head_dim
        if bits is not None:
            bits = check_bits("spark", "bits", bits)
            if value_ratio:
                raise ValueError(f"kv_format 'spark': option bits={bits} cannot be combined with option "
                                 f"value_ratio={value_ratio} (quantized values are stored whole, TaDA-style)")
            if d % (8 // bits):
                raise ValueError(f"kv_format 'spark': option bits={bits} needs head_dim={d} to be a multiple of "
                                 f"{8 // bits} (whole bytes of value codes)")
        return cls(d, kept_channels(d, key_ratio), kept_channels(d, value_ratio), window, bits)

    def block_tensors(self, block_size: int, kv_heads: int, dtype: torch.dtype) -> dict:
        """What one block of one layer stores: name -> (shape, dtype)."""
        d, tok, u8, f16 = self.head_dim, (block_size, kv_heads), torch.uint8, torch.float16
        t = {"k_bitmap": (tok + (-(-d // 8),), u8), "k_signs": (tok + (-(-(d - self.keep) // 8),), u8),
             "k_avg": (tok, f16), "qnorm": ((kv_heads, d), f16)}
        if self.bits:  # codes in place of the model-dtype kept keys and values, never both
            per = 8 // self.bits
            t |= {"k_codes": (tok + (-(-self.keep // per),), u8), "k_scale": (tok, f16), "k_zero": (tok, f16),
                  "v_codes": (tok + (d // per,), u8), "v_scale": (tok, f16), "v_zero": (tok, f16),
                  "v_mean": ((block_size, d), f16)}
            return t
        t |= {"k_kept": (tok + (self.keep,), dtype), "v_kept": (tok + (self.value_keep,), dtype)}
        if self.value_keep < d:
            t["v_bitmap"] = (tok + (-(-d // 8),), torch.uint8)
        return t


class SparkKV(KVFormat):
    """SPARK key-channel pruning; options key_ratio (0.5), value_ratio (0.0), window (32), bits (None:
    kept keys and values in the model dtype; 2, 4 or 8: kept keys as codes with a scale and zero per
    token and head, values TaDA-style, see the module docstring). Byte ratios are quoted against a
    16-bit dense cache (2 * layers * kv_heads * head_dim * 2 bytes per token) whatever dtype the
    model runs in."""

    name = "spark"
    options = ("key_ratio", "value_ratio", "window", "bits")
    supports_eviction = True

    def __init__(self, cfg, num_blocks, block_size, device, dtype, max_num_seqs=256, **options):
        super().__init__(cfg, num_blocks, block_size, device, dtype, max_num_seqs, **options)
        self.layout = SparkLayout.of(cfg, **options)
        self.num_stat_rows = 2 * max_num_seqs  # one per running sequence, plus those LRU-evicted lazily

    @classmethod
    def bytes_per_block(cls, cfg, block_size, dtype, **options):
        """Kept keys, bitmaps, signs, avg, |Q| and values of one block in every layer, plus its
        4-byte staging-slot entry; the staging pool and query statistics are fixed-size (`fixed_bytes`)."""
        layout = SparkLayout.of(cfg, **options)
        per_layer = sum(math.prod(shape) * torch.empty((), dtype=dt).element_size()
                        for shape, dt in layout.block_tensors(block_size, cfg.num_kv_heads, dtype).values())
        return cfg.num_layers * per_layer + 4

    @classmethod
    def fixed_bytes(cls, cfg, block_size, dtype, max_num_seqs, **options):
        """Staging pool (K and V of max_num_seqs blocks, model dtype) + fp32 query statistics."""
        c = cfg
        staging = 2 * c.num_layers * max_num_seqs * block_size * c.num_kv_heads * c.head_dim * dtype.itemsize
        return staging + c.num_layers * 2 * max_num_seqs * c.num_kv_heads * c.head_dim * 4

    # ---- storage ---------------------------------------------------------------------------------
    def allocate(self):
        c, dev, L = self.cfg, self.device, self.cfg.num_layers
        spec = self.layout.block_tensors(self.block_size, c.num_kv_heads, self.dtype)
        # (layers, blocks, ...) each; |Q| starts at ones so never-written blocks restore to finite numbers
        self.t = {name: (torch.ones if name == "qnorm" else torch.zeros)(L, self.num_blocks, *shape, dtype=dt,
                                                                         device=dev)
                  for name, (shape, dt) in spec.items()}
        # (layers, k/v, slots, block_size, kv_heads, head_dim): the partly filled blocks, whole
        self.staging = torch.zeros(L, 2, self.max_num_seqs, self.block_size, c.num_kv_heads, c.head_dim,
                                   dtype=self.dtype, device=dev)
        self.slots = StagingSlots(self.name, self.max_num_seqs, self.num_blocks, dev)
        # (layers, rows, kv_heads, head_dim): decayed sums of squared group-mean queries, per sequence
        self.qstat = torch.zeros(L, self.num_stat_rows, c.num_kv_heads, c.head_dim, dtype=torch.float32, device=dev)
        self._reset_maps()

    def _reset_maps(self):
        self.stat_of: OrderedDict[int, int] = OrderedDict()  # a sequence's last block -> its statistic row
        self.free_rows = list(range(self.num_stat_rows - 1, -1, -1))
        # Staged blocks this step fills -> their former slot. The slot goes back to the pool at layer 0,
        # so that a sequence filling one block and starting the next in the same step (a prefill chunk
        # that resumes mid-block) holds one slot, never two; in every later layer the block's rows are
        # read from it before anything else writes there (a later sequence's write comes after it in
        # the step's order; the same sequence's next block, right after it). The filled block is read
        # as stored (pruned) by this step's attention.
        self._fill_slots: dict[int, int] = {}
        self._pending = None
        self._tables = (None, [])

    def release(self):
        self.t, self.staging, self.slots, self.qstat = None, None, None, None
        self._reset_maps()

    def storage(self):
        if getattr(self, "t", None) is None:
            return []
        return list(self.t.values()) + [self.staging, self.slots.table, self.qstat]

    def free_blocks(self, block_ids):
        for block in block_ids:
            self.slots.drop(block)
            row = self.stat_of.pop(block, None)
            if row is not None:
                self.free_rows.append(row)
        self.slots.flush()

    # ---- writes: held until attend, where the queries that prune them are known --------------------
    def write(self, layer, slots, k, v):
        self._pending = (layer, k, v)

    def attend(self, layer, q, meta: AttentionMetadata):
        pending, self._pending = self._pending, None
        if pending is None or pending[0] != layer:
            raise RuntimeError(f"kv_format 'spark': attend(layer={layer}) without its write")
        _, k_new, v_new = pending
        self.commit(layer, q, k_new, v_new, meta)
        if meta.decode_only and q.is_cuda and self._kernel_fits(q):
            out = self.attend_kernel(layer, q, k_new, v_new, meta)
        else:
            out = self.attend_torch(layer, q, k_new, v_new, meta)
        if layer == self.cfg.num_layers - 1:
            self._fill_slots = {}
        return out

    def commit(self, layer, q, k, v, meta: AttentionMetadata) -> None:
        """Update each sequence's query statistic with this step's queries, stage the tokens of
        blocks still partly filled, prune the blocks this step fills."""
        bs, tables = self.block_size, self._host_tables(meta)
        blocks, ks, vs, qns = [], [], [], []
        for b in range(meta.num_seqs):
            lo, hi, ctx = meta.query_start[b], meta.query_start[b + 1], meta.context_lens[b]
            if hi == lo:
                continue
            table, start = tables[b], ctx - (hi - lo)
            qn = query_norm(self._update_stat(layer, q[lo:hi], table, start, ctx))
            row = lambda p: lo + p - start  # noqa: E731  (cache position -> row of this step's tokens)
            pos = start
            if pos % bs:  # continues a staged block
                end, block = min(ctx, (pos // bs + 1) * bs), table[pos // bs]
                slot = self._fill_slots.get(block)
                if slot is None:
                    slot = self._stage(layer, block, pos % bs, k[row(pos):row(end)], v[row(pos):row(end)])
                else:  # filled at layer 0, its slot already given back: its rows of this layer are intact
                    self.staging[layer, 0, slot, pos % bs: end - pos // bs * bs] = k[row(pos):row(end)].to(self.dtype)
                    self.staging[layer, 1, slot, pos % bs: end - pos // bs * bs] = v[row(pos):row(end)].to(self.dtype)
                if end % bs == 0:  # full: pruned from a copy, and its slot goes back now (see `_fill_slots`)
                    blocks.append(block)
                    ks.append(self.staging[layer, 0, slot].clone()[None])
                    vs.append(self.staging[layer, 1, slot].clone()[None])
                    qns.append(qn[None])
                    if layer == 0:
                        self._fill_slots[block] = slot
                        self.slots.drop(block)
                pos = end
            whole_end = ctx // bs * bs
            if whole_end > pos:  # blocks written whole in this step
                n = (whole_end - pos) // bs
                for block in table[pos // bs: whole_end // bs]:
                    self.slots.drop(block)  # a stale slot from an earlier life of the block
                    blocks.append(block)
                ks.append(k[row(pos):row(whole_end)].reshape(n, bs, *k.shape[1:]))
                vs.append(v[row(pos):row(whole_end)].reshape(n, bs, *v.shape[1:]))
                qns.append(qn[None].expand(n, -1, -1))
                pos = whole_end
            if pos < ctx:  # a new partly filled block
                self._stage(layer, table[pos // bs], 0, k[row(pos):row(ctx)], v[row(pos):row(ctx)])
        self.slots.flush()  # before this layer's attention reads the table
        if blocks:
            self._store(layer, torch.tensor(blocks, device=q.device), torch.cat(ks), torch.cat(vs), torch.cat(qns))

    def _host_tables(self, meta) -> list[list[int]]:
        if self._tables[0] is not meta:  # one device-to-host copy per step, not per layer
            self._tables = (meta, meta.block_tables.tolist())
        return self._tables[1]

    def _update_stat(self, layer, q, table, start, ctx) -> torch.Tensor:
        """Decay the sequence's statistic by (1 - 1/window) per query and add the new queries'
        squared group means; the row follows the sequence to its new last block. -> (Hkv, D)."""
        bs, tail = self.block_size, table[(ctx - 1) // self.block_size]
        row = self.stat_of.get(tail)
        if row is None:
            prev = table[(start - 1) // bs] if start > 0 else None
            row = self.stat_of.pop(prev) if prev is not None and prev != tail and prev in self.stat_of else None
            if row is None:
                row = self._new_stat_row()
            self.stat_of[tail] = row
        self.stat_of.move_to_end(tail)
        decay = 1.0 - 1.0 / self.layout.window
        n, hkv = q.shape[0], self.cfg.num_kv_heads
        qbar = q.float().view(n, hkv, -1, q.shape[-1]).mean(2)  # (n, Hkv, D) GQA group mean, as the paper
        w = decay ** torch.arange(n - 1, -1, -1, device=q.device, dtype=torch.float32)
        stat = self.qstat[layer, row]
        stat.mul_(decay ** n).add_((w[:, None, None] * qbar.square()).sum(0))
        return stat

    def _new_stat_row(self) -> int:
        if not self.free_rows:  # a finished sequence whose last block is still shared: oldest first
            self.free_rows.append(self.stat_of.popitem(last=False)[1])
        row = self.free_rows.pop()
        self.qstat[:, row].zero_()
        return row

    def _stage(self, layer, block, offset, k, v) -> int:
        if offset and block not in self.slots.of:
            raise RuntimeError(f"kv_format 'spark': block {block} written from offset {offset} but its earlier "
                               f"tokens were never staged (a block's tokens must be written in order)")
        slot = self.slots.take(block)
        self.staging[layer, 0, slot, offset: offset + k.shape[0]] = k.to(self.dtype)
        self.staging[layer, 1, slot, offset: offset + v.shape[0]] = v.to(self.dtype)
        return slot

    def _store(self, layer, blocks, k, v, qn) -> None:
        """Prune whole blocks: k, v (n, block_size, H, D), qn (n, H, D) fp16 -> storage of `blocks` (n,)."""
        t, lay = self.t, self.layout
        p = prune_keys(k, qn[:, None], lay.keep)
        t["k_bitmap"][layer, blocks] = p.bitmap
        t["k_signs"][layer, blocks] = p.signs
        t["k_avg"][layer, blocks] = p.avg
        t["qnorm"][layer, blocks] = qn
        if lay.bits:
            t["k_codes"][layer, blocks], t["k_scale"][layer, blocks], t["k_zero"][layer, blocks] = \
                quantize_kept(p.kept, lay.bits)
            codes, scale, zero, mean = quantize_values(v, lay.bits)
            for name, x in (("codes", codes), ("scale", scale), ("zero", zero), ("mean", mean)):
                t[f"v_{name}"][layer, blocks] = x
            return
        t["k_kept"][layer, blocks] = p.kept.to(self.dtype)
        if lay.value_keep < lay.head_dim:
            kept, bitmap = prune_values(v, lay.value_keep)
            t["v_kept"][layer, blocks], t["v_bitmap"][layer, blocks] = kept.to(self.dtype), bitmap
        else:
            t["v_kept"][layer, blocks] = v.to(self.dtype)

    # ---- token eviction ----------------------------------------------------------------------------
    def read_prefix(self, layer, blocks, n):
        k, v = self.restore_blocks(layer, blocks)  # staged (partly filled) blocks are read whole
        return k.flatten(0, 1)[:n].to(self.dtype), v.flatten(0, 1)[:n].to(self.dtype)

    def write_entries(self, layer, slots, k, v, window_q):
        """The kept entries pruned with |Q| of the window queries that selected them (SparK's
        setting); a partly filled last block is staged and pruned when it fills, as any block. The
        sequence's query statistic restarts from the window queries (the one it had followed its
        old last block, which eviction let go)."""
        bs, n = self.block_size, k.shape[0]
        whole = n // bs * bs
        table = (slots[::bs] // bs).tolist()
        self._update_stat(layer, window_q, table, n - window_q.shape[0], n)
        if whole:
            blocks = slots[:whole:bs] // bs
            qn = query_norm(window_sq_sum(window_q, self.cfg.num_kv_heads))
            self._store(layer, blocks, k[:whole].view(-1, bs, *k.shape[1:]), v[:whole].view(-1, bs, *v.shape[1:]),
                        qn[None].expand(len(blocks), -1, -1))
        if whole < n:
            self._stage(layer, int(slots[whole]) // bs, 0, k[whole:], v[whole:])
            self.slots.flush()

    # ---- attention ---------------------------------------------------------------------------------
    def restore_blocks(self, layer: int, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A temporary of the listed blocks, restored: blocks (...) -> k, v (..., block_size, H, D)
        float32; staged blocks are read whole from the staging pool."""
        t, lay, flat = self.t, self.layout, blocks.flatten().long()
        at = lambda name: t[name][layer, flat]  # noqa: E731
        kept = dequantize_kept(at("k_codes"), at("k_scale"), at("k_zero"), lay.bits, lay.keep) if lay.bits \
            else at("k_kept")
        p = PrunedKeys(kept, at("k_bitmap"), at("k_signs"), at("k_avg"))
        k = restore_keys(p, t["qnorm"][layer, flat][:, None], lay.head_dim)
        if lay.bits:
            v = dequantize_values(at("v_codes"), at("v_scale"), at("v_zero"), at("v_mean"), lay.bits)
        elif lay.value_keep < lay.head_dim:
            v = restore_values(t["v_kept"][layer, flat], t["v_bitmap"][layer, flat], lay.head_dim)
        else:
            v = t["v_kept"][layer, flat].float()
        slots = self.slots.table[flat].long()
        hit = torch.nonzero(slots >= 0).flatten()
        if hit.numel():
            k[hit] = self.staging[layer, 0, slots[hit]].float()
            v[hit] = self.staging[layer, 1, slots[hit]].float()
        shape = blocks.shape + k.shape[1:]
        return k.view(shape), v.view(shape)

    def attend_torch(self, layer, q, k_new, v_new, meta: AttentionMetadata) -> torch.Tensor:
        """Gathers each sequence's blocks restored (a temporary), puts this step's own new tokens
        in whole, runs SDPA; decode rows are batched by context length as in `DenseKV`."""
        out = torch.empty_like(q)
        masks = meta.masks or [None] * meta.num_seqs
        decode = [b for b in range(meta.num_seqs) if meta.q_len(b) == 1 and masks[b] is None]
        for longest, members in length_groups([meta.context_lens[b] for b in decode]) if decode else []:
            seqs = [decode[i] for i in members]
            rows = torch.tensor([meta.query_start[b] for b in seqs], device=q.device)
            lens = meta.context_lens_t[torch.tensor(seqs, device=q.device)].long()
            k, v = self.restore_blocks(layer, meta.block_tables[seqs, : -(-longest // self.block_size)])
            k, v = k.flatten(1, 2).to(q.dtype), v.flatten(1, 2).to(q.dtype)  # (B, S, H, D)
            ar = torch.arange(len(seqs), device=q.device)
            k[ar, lens - 1], v[ar, lens - 1] = k_new[rows].to(q.dtype), v_new[rows].to(q.dtype)
            valid = torch.arange(k.shape[1], device=q.device)[None, :] < lens[:, None]
            o = F.scaled_dot_product_attention(q[rows, :, None, :], k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=valid[:, None, None, :], enable_gqa=q.shape[1] != k.shape[2])
            out[rows] = o[:, :, 0, :]
        for b in sorted(set(range(meta.num_seqs)) - set(decode)):
            lo, hi, ctx = meta.query_start[b], meta.query_start[b + 1], meta.context_lens[b]
            k, v = self.restore_blocks(layer, meta.block_tables[b, : -(-ctx // self.block_size)])
            k, v = k.flatten(0, 1)[:ctx].to(q.dtype), v.flatten(0, 1)[:ctx].to(q.dtype)  # (ctx, H, D)
            k[ctx - (hi - lo):], v[ctx - (hi - lo):] = k_new[lo:hi].to(q.dtype), v_new[lo:hi].to(q.dtype)
            mask = causal_mask(hi - lo, ctx, meta.masks[b] if meta.masks else None, q.device)
            o = F.scaled_dot_product_attention(q[lo:hi].transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                               attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
            out[lo:hi] = o.transpose(0, 1)
        return out

    def _kernel_fits(self, q: torch.Tensor) -> bool:
        from reasonrl.kernels.paged_attention import kernel_fits

        return kernel_fits(self.block_size, q.shape[-1], q.dtype)

    def attend_kernel(self, layer, q, k_new, v_new, meta: AttentionMetadata) -> torch.Tensor:
        """Decode step (one query per sequence) through the Triton kernel, which restores in registers
        (and, with `bits`, decodes the key and value codes there)."""
        from reasonrl.kernels.kv_spark import QuantParts, spark_paged_decode

        t, lay = self.t, self.layout
        if lay.bits:
            quant = QuantParts(lay.bits, t["k_scale"][layer], t["k_zero"][layer], t["v_scale"][layer],
                               t["v_zero"][layer], t["v_mean"][layer])
            kept, values = t["k_codes"][layer], t["v_codes"][layer]
        else:
            quant, kept, values = None, t["k_kept"][layer], t["v_kept"][layer]
        return spark_paged_decode(
            q, k_new, v_new, kept, t["k_bitmap"][layer], t["k_signs"][layer], t["k_avg"][layer],
            t["qnorm"][layer], values, t.get("v_bitmap", t["k_bitmap"])[layer], self.staging[layer],
            self.slots.table, meta.block_tables, meta.context_lens_t - 1, value_pruned="v_bitmap" in t,
            keep=lay.keep, quant=quant)
