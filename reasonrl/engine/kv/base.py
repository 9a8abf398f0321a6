"""The KV-cache format interface: how keys and values are stored in blocks, and attended over.

A format owns its storage (allocated once, sized in blocks) and the attention that reads it, so
a compressed format can attend straight from its compressed blocks. `bytes_per_token` is counted
from the tensors the format actually allocated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reasonrl.engine.attention import AttentionMetadata, causal_mask
from reasonrl.models.config import ModelConfig


SHORT_QUERIES = 64
"""Draft trees of at most this many rows attend in one padded batched call (larger ones one at a
time, where padding would cost)."""


class KVFormat:
    name = "base"
    options: tuple[str, ...] = ()
    """Names of the keyword parameters the format takes (`EngineConfig.kv_options`)."""
    supports_eviction = False
    """Implements `read_prefix` and `write_entries`: token eviction (engine/eviction.py) can use it."""
    supports_speculation = False
    """Implements `copy_slots`: speculative decoding can move accepted draft rows into place."""
    cpu_kernel = True
    """Decode rows on CPU may use the format's C++ kernel where it has one (`EngineConfig.cpu_decode_kernel`)."""
    on_cpu_kernel = False
    """Decode rows do run a C++ kernel (the formats that have one say when)."""

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, device: torch.device, dtype: torch.dtype,
                 max_num_seqs: int = 256, **options):
        self.check_options(options)
        self.cfg, self.num_blocks, self.block_size = cfg, num_blocks, block_size
        self.device, self.dtype = device, dtype
        self.max_num_seqs = max_num_seqs  # at most this many blocks are partly filled at once (one per sequence)

    @classmethod
    def check_options(cls, options: dict) -> None:
        unknown = set(options) - set(cls.options)
        if unknown:
            known = ", ".join(cls.options) or "none"
            raise ValueError(f"kv_format {cls.name!r} has no option(s) {', '.join(sorted(unknown))}; it takes: {known}")

    @classmethod
    def bytes_per_block(cls, cfg: ModelConfig, block_size: int, dtype: torch.dtype, **options) -> int:
        """Bytes one block of all layers takes, to size the cache before allocating it (a format
        with fixed-size side buffers, e.g. a full-precision staging pool, sizes them in `allocate`
        and counts them in `storage()`)."""
        raise NotImplementedError

    @classmethod
    def fixed_bytes(cls, cfg: ModelConfig, block_size: int, dtype: torch.dtype, max_num_seqs: int, **options) -> int:
        """Bytes the format allocates besides its blocks (e.g. a full-precision staging pool for the
        partly filled blocks); the engine takes them out of the KV budget before sizing blocks."""
        return 0

    @classmethod
    def ratio_to_dense16(cls, cfg: ModelConfig, block_size: int, dtype: torch.dtype, num_blocks: int,
                         max_num_seqs: int, **options) -> float:
        """Bytes per token the format would allocate (blocks plus fixed buffers, spread over the
        blocks' tokens) over a 16-bit dense cache's, whatever dtype the model runs in."""
        total = num_blocks * cls.bytes_per_block(cfg, block_size, dtype, **options)
        total += cls.fixed_bytes(cfg, block_size, dtype, max_num_seqs, **options)
        return total / (num_blocks * block_size * dense16_bytes_per_token(cfg))

    @property
    def dense16_ratio(self) -> float:
        """`bytes_per_token` (from the allocated tensors) over the 16-bit dense cache's."""
        return self.bytes_per_token / dense16_bytes_per_token(self.cfg)

    def storage(self) -> list[torch.Tensor]:
        """Every tensor the cache holds (for memory accounting)."""
        raise NotImplementedError

    def allocate(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Free the storage (e.g. to give the memory to training between rollout phases)."""
        raise NotImplementedError

    @property
    def allocated_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.storage())

    @property
    def bytes_per_token(self) -> float:
        return self.allocated_bytes / (self.num_blocks * self.block_size)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        raise NotImplementedError

    def attend(self, layer: int, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """The PyTorch path over `gather`ed blocks, and `decode_kernel` (CUDA; dense CPU) for decode rows: decode
        rows (one query, no mask) are batched by context length, draft trees padded into one masked
        call, other sequences (prefill chunks) attend one at a time (batching those would change
        their numerics against formats that attend them one by one). A format that needs more
        (SPARK) overrides it."""
        if meta.decode_only:
            return self.decode(layer, q, meta.block_tables, meta.context_lens_t, meta.context_lens)
        out = torch.empty_like(q)
        decode, short, long = meta.row_groups(SHORT_QUERIES)
        if decode:  # one batched call for the decoding sequences of a mixed step
            rows = torch.tensor([meta.query_start[b] for b in decode], device=q.device)
            idx = torch.tensor(decode, device=q.device)
            out[rows] = self.decode(layer, q[rows], meta.block_tables[idx], meta.context_lens_t[idx],
                                    [meta.context_lens[b] for b in decode])
        if short:
            self.attend_short(layer, q, meta, short, out)
        for b in long:
            lo, hi, ctx = meta.query_start[b], meta.query_start[b + 1], meta.context_lens[b]
            k, v = self.gather(layer, meta.block_tables[b: b + 1, : -(-ctx // self.block_size)],
                               meta.context_lens_t[b: b + 1])
            k, v = k[0, :ctx].to(q.dtype), v[0, :ctx].to(q.dtype)  # (ctx, H, D)
            mask = causal_mask(hi - lo, ctx, meta.masks[b] if meta.masks else None, q.device)
            o = F.scaled_dot_product_attention(q[lo:hi].transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                               attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
            out[lo:hi] = o.transpose(0, 1)
        return out

    def attend_short(self, layer: int, q: torch.Tensor, meta: AttentionMetadata, seqs: list[int],
                     out: torch.Tensor) -> None:
        """Sequences `seqs`, each a few query rows (a draft tree: the step every speculating
        sequence takes) in one SDPA: queries padded to the most rows, contexts to the longest,
        one (B, Q, S) mask built once per step (`PaddedQueries`) and shared by every layer; or the
        format's kernel for them, reading the stored blocks in place (`short_kernel`)."""
        pad = meta.padded_queries(seqs, q.device)
        o = self.short_kernel(layer, q[pad.rows], pad.tables, pad.lens, pad.mask)
        if o is not None:
            out[pad.out_rows] = o[pad.valid]
            return
        k, v = self.gather(layer, pad.tables[:, : -(-pad.max_ctx // self.block_size)], pad.lens)
        k, v = (t[:, : pad.max_ctx].to(q.dtype).transpose(1, 2) for t in (k, v))  # (B, H, S, D)
        o = F.scaled_dot_product_attention(q[pad.rows].transpose(1, 2), k, v, attn_mask=pad.mask[:, None],
                                           enable_gqa=q.shape[1] != k.shape[1])  # (B, H, Q, D)
        out[pad.out_rows] = o.transpose(1, 2)[pad.valid]

    def decode(self, layer: int, q: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor,
               lens_list: list[int]) -> torch.Tensor:
        """One query per sequence: q (B, Hq, D), tables (B, max_blocks), lens (B,) and as a list.
        The format's kernel for the device if it has one; else groups of similar length, each
        gathered padded to its longest, one masked SDPA per group."""
        if (out := self.decode_kernel(layer, q, tables, lens)) is not None:
            return out
        groups = length_groups(lens_list)
        if len(groups) == 1:
            return self.decode_padded(layer, q, tables, lens, groups[0][0])
        out = torch.empty_like(q)
        for longest, members in groups:
            idx = torch.tensor(members, device=q.device)
            out[idx] = self.decode_padded(layer, q[idx], tables[idx], lens[idx], longest)
        return out

    def decode_padded(self, layer: int, q: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor,
                      max_len: int) -> torch.Tensor:
        """Gathers the blocks of every sequence, padded to max_len, and runs one masked SDPA."""
        k, v = self.gather(layer, tables[:, : -(-max_len // self.block_size)], lens)
        k, v = k.to(q.dtype).transpose(1, 2), v.to(q.dtype).transpose(1, 2)  # (B, H, S, D)
        valid = torch.arange(k.shape[2], device=q.device)[None, :] < lens[:, None]
        o = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=valid[:, None, None, :],
                                           enable_gqa=q.shape[1] != k.shape[1])
        return o[:, :, 0, :]

    def gather(self, layer: int, tables: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A temporary of the listed blocks as the format stores them, decoded: tables (B, nb),
        lens (B,) -> k, v (B, nb * block_size, H, D)."""
        raise NotImplementedError

    def short_kernel(self, layer: int, q: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor | None:
        """The format's kernel for a few masked query rows per sequence (`attend_short`): q (B, Q, Hq, D),
        tables (B, nb), lens (B,), mask (B, Q, S) -> (B, Q, Hq, D); None: none (gather, then SDPA)."""
        return None

    def decode_kernel(self, layer: int, q: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor):
        """The format's decode kernel for q's device, reading the stored blocks in place; None: none
        (the gathering PyTorch path runs)."""
        return None

    def read_prefix(self, layer: int, blocks: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token eviction (engine/eviction.py): the keys and values of a sequence's first `n` cache
        entries, held in `blocks` (its block table), as (n, Hkv, D) tensors in the compute dtype
        (restored, for a format that stores less)."""
        raise NotImplementedError(f"kv_format {self.name!r} does not support token eviction (use dense or spark)")

    def write_entries(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      window_q: torch.Tensor) -> None:
        """Token eviction: store the kept entries k, v (n, Hkv, D) at `slots`, the first n slots of
        fresh blocks; window_q (W, Hq, D) are the queries that selected them."""
        raise NotImplementedError(f"kv_format {self.name!r} does not support token eviction (use dense or spark)")

    def free_blocks(self, block_ids: list[int]) -> None:
        """Called when no sequence holds these blocks any more (a full one may still be reused from
        the prefix cache; a partly filled one never is): release per-block side state."""

    def begin_attempt(self) -> None:
        """A forward is about to run (engine/isolation.py): what `rollback` would undo starts here."""

    def rollback(self) -> None:
        """Undo the bookkeeping of the writes since `begin_attempt`, whose forward failed
        (engine/isolation.py reruns the step's other sequences): a rerun must find the state that
        forward found. Dense writes keep no bookkeeping: a rerun rewrites the same slots."""

    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Move the keys and values of cache slots `src` to slots `dst` in every layer (speculative
        decoding keeps the accepted path of a draft tree this way). Every source is read before any
        destination is written."""
        raise NotImplementedError(f"kv_format {self.name!r} does not support speculative decoding (copy_slots)")


def dense16_bytes_per_token(cfg: ModelConfig) -> int:
    """The reference every compression ratio is quoted against: keys and values in 16 bits."""
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2


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
