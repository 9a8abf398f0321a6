"""Dense paged KV: keys and values stored as they are, in the model's dtype.

Prefill rows gather a sequence's blocks and run PyTorch SDPA. Decode rows read the blocks in
place: on CUDA with the Triton paged decode kernel, on CPU in fp32 with the C++ one
(kernels/cpu_ops.py); otherwise they are batched into masked SDPA calls over gathered copies.
Draft-tree rows (a few masked rows per sequence) read them in place on CPU in fp32 too, else are
gathered into one padded SDPA.
"""

from __future__ import annotations

import torch

from reasonrl.engine.kv.base import KVFormat
from reasonrl.kernels import cpu_ops


class DenseKV(KVFormat):
    name = "dense"
    supports_eviction = True
    supports_speculation = True

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

    def gather(self, layer, tables, lens):
        kv = self.cache[layer][:, tables].flatten(2, 3)  # keys and values in one gather: (2, B, nb * block_size, H, D)
        return kv[0], kv[1]

    @property
    def on_cpu_kernel(self) -> bool:
        """CPU, fp32, switched on and built (kernels/cpu_ops.py builds it on first ask)."""
        return self.cpu_kernel and self.device.type == "cpu" and self.dtype == torch.float32 and cpu_ops.available()

    def decode_kernel(self, layer, q, tables, lens):
        if q.device.type == "cpu":
            return cpu_ops.paged_decode_cpu(q, self.cache[layer, 0], self.cache[layer, 1], tables, lens) \
                if self.on_cpu_kernel else None
        if not q.is_cuda:
            return None
        from reasonrl.kernels.paged_attention import kernel_fits, paged_decode

        if not kernel_fits(self.block_size, q.shape[-1], q.dtype):
            return None
        return paged_decode(q, self.cache[layer, 0], self.cache[layer, 1], tables, lens)

    def short_kernel(self, layer, q, tables, lens, mask):
        if q.device.type != "cpu" or not self.on_cpu_kernel:
            return None
        return cpu_ops.paged_masked_cpu(q, self.cache[layer, 0], self.cache[layer, 1], tables, lens, mask)
