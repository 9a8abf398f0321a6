"""The KV-cache format interface: how keys and values are stored in blocks, and attended over.

A format owns its storage (allocated once, sized in blocks) and the attention that reads it, so
a compressed format can attend straight from its compressed blocks. `bytes_per_token` is counted
from the tensors the format actually allocated.
"""

from __future__ import annotations

import torch

from reasonrl.engine.attention import AttentionMetadata
from reasonrl.models.config import ModelConfig


class KVFormat:
    name = "base"
    options: tuple[str, ...] = ()
    """Names of the keyword parameters the format takes (`EngineConfig.kv_options`)."""

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
        raise NotImplementedError

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

    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Move the keys and values of cache slots `src` to slots `dst` in every layer (speculative
        decoding keeps the accepted path of a draft tree this way). Every source is read before any
        destination is written."""
        raise NotImplementedError(f"kv_format {self.name!r} does not support speculative decoding (copy_slots)")


def dense16_bytes_per_token(cfg: ModelConfig) -> int:
    """The reference every compression ratio is quoted against: keys and values in 16 bits."""
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
