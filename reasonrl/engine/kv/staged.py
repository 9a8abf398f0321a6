"""`QuantizedKV`: the block life cycle of the quantized KV formats (TaDA, KIVI), on top of the
codes of quant.py.

Block life cycle (KIVI's "residual", TaDA's recent tokens). A block's tokens stay in full
precision (model dtype) in a staging pool until the block is full, then the whole block is
quantized into codes and its staging slot returns to the pool. Only a sequence's last block
is ever partly filled, so the pool holds `max_num_seqs` blocks; a slot is taken when a block's
offset-0 token is written and returned when the block fills or is freed. A block written whole
in one step (prefill) is quantized straight from the new keys and values and never staged.
Attention reads full blocks from their codes and the partial last block from the pool.

Departures: KIVI keeps the most recent R tokens in full precision; here the full-precision
part is "the tokens of the unfinished block" (0 to block_size - 1 tokens), which is what a
paged cache with block-granular quantization can offer without copying codes back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reasonrl.engine.kv.base import KVFormat
from reasonrl.engine.kv.slots import StagingSlots


# ---- the block life cycle ------------------------------------------------------------------------
Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]
"""A layer's per-block tensors: name -> (shape of one block's part, dtype)."""


@dataclass
class WritePlan:
    """How one step's new tokens reach storage (computed once, at layer 0, for every layer)."""
    direct_rows: torch.Tensor  # (n * block_size,) rows of whole blocks written in this step, by block then offset
    direct_blocks: torch.Tensor  # (n,)
    stage_rows: torch.Tensor  # rows of blocks still partly filled after this step
    stage_dst: torch.Tensor  # their flat staging positions (slot * block_size + offset)
    fill_blocks: torch.Tensor  # (m,) staged blocks this step completes
    fill_slots: torch.Tensor  # (m,) their staging slots
    fill_rows: torch.Tensor  # rows that complete them
    fill_pos: torch.Tensor  # their positions in the (m * block_size) completed blocks


class QuantizedKV(KVFormat):
    """Quantized full blocks plus a full-precision staging pool for partly filled blocks.

    A subclass gives `layout` (what one block of a layer stores), `_quantize` and `_dequantize`
    (a batch of whole blocks), and `_kernel_codes` (what the Triton decode kernel reads)."""

    def __init__(self, cfg, num_blocks, block_size, device, dtype, max_num_seqs=256, **options):
        super().__init__(cfg, num_blocks, block_size, device, dtype, max_num_seqs, **options)
        self.options = options
        self.layout(cfg, block_size, **options)  # validates the options

    # ---- sizes -----------------------------------------------------------------------------------
    @classmethod
    def layout(cls, cfg, block_size: int, **options) -> list[Layout]:
        raise NotImplementedError

    @classmethod
    def bytes_per_block(cls, cfg, block_size, dtype, **options):
        """Codes, scales, zeros and means of one block in every layer, plus the block's 4-byte
        staging-slot entry. The staging pool itself is fixed-size: `fixed_bytes`."""
        per_layer = sum(math.prod(shape) * _itemsize(dt) for layer in cls.layout(cfg, block_size, **options)
                        for shape, dt in layer.values())
        return per_layer + 4

    @classmethod
    def fixed_bytes(cls, cfg, block_size, dtype, max_num_seqs, **options):
        """The staging pool: keys and values of `max_num_seqs` blocks in the model dtype."""
        return 2 * cfg.num_layers * max_num_seqs * block_size * cfg.num_kv_heads * cfg.head_dim * _itemsize(dtype)

    # ---- storage ---------------------------------------------------------------------------------
    def allocate(self):
        c, dev = self.cfg, self.device
        # zeros, not empty: the unwritten tail of a gathered block must decode to finite numbers
        self.tensors = [{name: torch.zeros(self.num_blocks, *shape, dtype=dt, device=dev)
                         for name, (shape, dt) in layer.items()}
                        for layer in self.layout(c, self.block_size, **self.options)]
        # (layers, k/v, max_num_seqs, block_size, kv_heads, head_dim): the partly filled blocks
        self.staging = torch.zeros(c.num_layers, 2, self.max_num_seqs, self.block_size, c.num_kv_heads, c.head_dim,
                                   dtype=self.dtype, device=dev)
        self.slots = StagingSlots(self.name, self.max_num_seqs, self.num_blocks, dev)
        self._plan: WritePlan | None = None
        self._fresh: dict[int, list[torch.Tensor]] = {}  # layer -> (blocks, k, v) its write in this step quantized
        self._attending: list[torch.Tensor] | None = None  # the attending layer's entry of _fresh
        self._undo: tuple[dict[int, int], list[int], dict[int, torch.Tensor]] | None = None

    def release(self):
        self.tensors, self.staging, self.slots, self._plan, self._undo = None, None, None, None, None
        self._fresh, self._attending = {}, None

    def storage(self):
        if getattr(self, "tensors", None) is None:
            return []
        return [t for layer in self.tensors for t in layer.values()] + [self.staging, self.slots.table]

    # ---- writes ----------------------------------------------------------------------------------
    def write(self, layer, slots, k, v):
        if layer == 0:  # a step writes the same slots in every layer, layer 0 first
            self._plan, self._fresh = self._make_plan(slots), {}
        p, bs = self._plan, self.block_size
        fresh = []  # (blocks, k, v) of the blocks this write quantizes: this step attends them as computed
        if p.direct_blocks.numel():
            shape = (-1, bs) + k.shape[1:]
            kd, vd = k[p.direct_rows].view(shape), v[p.direct_rows].view(shape)
            self._quantize(layer, p.direct_blocks, kd, vd)
            fresh.append((p.direct_blocks, kd, vd))
        if p.fill_blocks.numel():  # before staging: a slot returned by a filled block may be retaken this step
            kf, vf = self.staging[layer, 0][p.fill_slots], self.staging[layer, 1][p.fill_slots]  # copies
            kf.flatten(0, 1)[p.fill_pos] = k[p.fill_rows].to(self.dtype)
            vf.flatten(0, 1)[p.fill_pos] = v[p.fill_rows].to(self.dtype)
            self._quantize(layer, p.fill_blocks, kf, vf)
            fresh.append((p.fill_blocks, kf, vf))
        if fresh:
            self._fresh[layer] = [torch.cat(part) for part in zip(*fresh)]
        if p.stage_rows.numel():
            flat = self.staging[layer].flatten(1, 2)  # (2, slots * block_size, H, D)
            flat[0].index_copy_(0, p.stage_dst, k[p.stage_rows].to(self.dtype))
            flat[1].index_copy_(0, p.stage_dst, v[p.stage_rows].to(self.dtype))

    def _make_plan(self, slots: torch.Tensor) -> WritePlan:
        """Sorts this step's tokens into whole blocks (quantized directly), tokens that complete a
        staged block, and tokens that stay staged; takes and returns staging slots. Tokens of one
        block arrive in order, so a block whose offsets 0 and block_size - 1 are both here is here
        whole."""
        bs = self.block_size
        # what `rollback` restores: the slot map before this plan, and the rows of a slot that a
        # block filling in this step hands back and another block takes in the same step
        self._undo = (dict(self.slots.of), list(self.slots.free), {})
        handed_back: set[int] = set()
        by_block: dict[int, list[tuple[int, int]]] = {}
        for row, slot in enumerate(slots.tolist()):
            by_block.setdefault(slot // bs, []).append((slot % bs, row))
        direct_blocks, direct_rows, stage_rows, stage_dst = [], [], [], []
        fill_blocks, fill_slots, fill_rows, fill_pos = [], [], [], []
        for block, items in by_block.items():
            items.sort()
            if items[0][0] == 0 and len(items) == bs:
                self.slots.drop(block)  # a stale slot from an earlier life of the block
                direct_blocks.append(block)
                direct_rows += [row for _, row in items]
            elif items[-1][0] == bs - 1:
                slot = self.slots.of.get(block)
                if slot is None:
                    raise RuntimeError(f"kv_format {self.name!r}: block {block} completed from offset {items[0][0]} but "
                                       f"its earlier tokens were never staged (a block's tokens must be written in order)")
                fill_pos += [len(fill_blocks) * bs + off for off, _ in items]
                fill_rows += [row for _, row in items]
                fill_blocks.append(block)
                fill_slots.append(slot)
                self.slots.drop(block)  # back to the pool now; write() reads it before any reuse
                handed_back.add(slot)
            else:
                slot = self.slots.take(block) if items[0][0] == 0 else self.slots.of.get(block)
                if slot is None:
                    raise RuntimeError(f"kv_format {self.name!r}: block {block} written from offset {items[0][0]} but "
                                       f"its offset-0 token was never written (a block's tokens must be written in order)")
                if slot in handed_back and slot not in self._undo[2]:
                    self._undo[2][slot] = self.staging[:, :, slot].clone()  # the filled block's rows, every layer
                stage_rows += [row for _, row in items]
                stage_dst += [slot * bs + off for off, _ in items]
        self.slots.flush()
        dev = slots.device
        t = lambda xs: torch.tensor(xs, dtype=torch.long, device=dev)  # noqa: E731
        return WritePlan(t(direct_rows), t(direct_blocks), t(stage_rows), t(stage_dst), t(fill_blocks),
                         t(fill_slots), t(fill_rows), t(fill_pos))

    def free_blocks(self, block_ids):
        for block in block_ids:
            self.slots.drop(block)
        self.slots.flush()

    def begin_attempt(self):
        self._undo = None  # a failure before this attempt's first write has nothing to undo

    def rollback(self):
        """The last plan's slot changes undone, and the rows of slots it let another block take
        restored: a rerun of the step's other sequences finds each filling block's staged rows
        where they were (without this, it found none, and failed those sequences too)."""
        if self._undo is None:
            return
        of, free, saved = self._undo
        self.slots.restore(of, free)
        for slot, rows in saved.items():
            self.staging[:, :, slot] = rows
        self._undo = None

    # ---- attention (PyTorch path; CUDA decode uses the Triton kernel, which reads the same) ---------
    def attend(self, layer, q, meta):
        """As the base class's, but the blocks this layer's write quantized in this step are read
        as written (`gather`); any other read of them (a later step, a direct `gather`) decodes the
        codes, and nothing written is held past the step's last layer."""
        self._attending = self._fresh.pop(layer, None)
        try:
            return super().attend(layer, q, meta)
        finally:
            self._attending = None
            if layer == self.cfg.num_layers - 1:
                self._fresh.clear()

    def gather(self, layer: int, tables: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A temporary of the listed blocks, decoded: tables (B, nb), lens (B,) -> k, v (B, nb * block_size, H, D)
        float32; the partial last block of each row comes from the staging pool, and inside `attend`
        the blocks the layer's write quantized in this step come as written (the step attends its
        own tokens as it computed them, earlier ones as stored; so does the Triton decode kernel)."""
        b, nb = tables.shape
        flat = tables.flatten().long()
        k, v = self._dequantize(layer, flat)  # (B * nb, bs, H, D)
        if self._attending is not None:
            blocks, kf, vf = self._attending
            match = flat[:, None] == blocks[None, :]  # (B * nb, m)
            hit = match.any(1)
            if bool(hit.any()):
                which = match.to(torch.int8).argmax(1)[hit]
                k[hit], v[hit] = kf[which].float(), vf[which].float()
        k, v = k.view(b, nb, *k.shape[1:]), v.view(b, nb, *v.shape[1:])
        rows = torch.nonzero(lens % self.block_size).flatten()
        if rows.numel():
            last = (lens[rows] // self.block_size).long()
            slots = self.slots.table[tables[rows, last].long()].long()
            if bool((slots < 0).any()):
                raise RuntimeError(f"kv_format {self.name!r}: a partly filled block has no staging slot")
            k[rows, last] = self.staging[layer, 0][slots].float()
            v[rows, last] = self.staging[layer, 1][slots].float()
        return k.flatten(1, 2), v.flatten(1, 2)

    def decode_kernel(self, layer, q, tables, lens):
        if not q.is_cuda:
            return None
        from reasonrl.kernels.paged_attention import kernel_fits

        if not kernel_fits(self.block_size, q.shape[-1], q.dtype):
            return None
        return self.triton_decode(layer, q, tables, lens)

    def triton_decode(self, layer, q, tables, lens):
        """The Triton decode kernel over this layer's blocks in place (on CPU only under TRITON_INTERPRET=1):
        what `gather` reads, a block the decode token completes included (as written, not from its codes)."""
        from reasonrl.kernels.kv_quant import quant_paged_decode

        kc, vc = self._kernel_codes(layer)
        return quant_paged_decode(q, kc, vc, self.staging[layer, 0], self.staging[layer, 1], self.slots.table, tables,
                                  lens, fresh=self._completed_now(layer, tables, lens))

    def _completed_now(self, layer, tables, lens):
        """(fresh_of (B,) int32, k, v) for the kernel: per row, the index among the blocks this layer's write
        quantized in this step (`attend`'s `_attending`) of its last block if the row's context ends on it
        (-1: none); None when the write quantized nothing."""
        if self._attending is None:
            return None
        blocks, kf, vf = self._attending
        full = lens.long() // self.block_size
        last = tables.long().gather(1, (full - 1).clamp(min=0)[:, None])[:, 0]
        match = (last[:, None] == blocks[None, :]) & ((lens % self.block_size == 0) & (full > 0))[:, None]
        fresh_of = torch.where(match.any(1), match.to(torch.int32).argmax(1), -1).to(torch.int32)
        return fresh_of, kf.contiguous(), vf.contiguous()

    # ---- per format ------------------------------------------------------------------------------
    def _quantize(self, layer: int, blocks: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store whole blocks: k, v (n, block_size, H, D) into blocks (n,)."""
        raise NotImplementedError

    def _dequantize(self, layer: int, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """blocks (n,) -> k, v (n, block_size, H, D) float32."""
        raise NotImplementedError

    def _kernel_codes(self, layer: int):
        """-> (k, v) `reasonrl.kernels.kv_quant.QuantCodes` of this layer."""
        raise NotImplementedError


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
