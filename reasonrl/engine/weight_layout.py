"""Column-major storage of a CPU model's wide weight matrices: faster small-batch decode, same values.

At batch 1 a decode step is one matrix-vector product per weight matrix, so its speed is that of
reading the weights. `F.linear(x, W)` with W stored row-major (out, in), as checkpoints and
`nn.Linear` keep it, asks the BLAS for x @ W^T with a transposed operand; on this project's CPU
(AMD EPYC, PyTorch's MKL build) that product streams the weights at about half the rate it reaches
when W^T is the contiguous one, for matrices with at least as many outputs as inputs (the LM head,
fused q/k/v, fused gate/up: 2-3x in a microbenchmark; docs/benchmarks.md has the engine figure).
For the narrow down-projection (more inputs than outputs) row-major was the faster of the two.

So the engine stores each wide matrix column-major: the same (out, in) parameter, values and
shape, with strides (1, out). Nothing that reads the weights by shape changes: `copy_` (weight
sync, `load_weights`) writes into the new layout, saving makes tensors contiguous first, autograd
and optimizers accept any strides. Only the summation order of the products differs, so logits
move in the last bits of fp32 (tests/engine/test_weight_layout.py bounds it).

CPU only: cuBLAS reads both layouts at full speed, and CUDA graphs or kernels that assume a
row-major weight are untouched. Off with `EngineConfig.column_major_weights=False`.
"""

from __future__ import annotations

import torch
from torch import nn


def is_column_major(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.stride() == (1, weight.shape[0])


def wide(module: nn.Module) -> bool:
    """A linear layer whose weight reads faster column-major at batch 1 (out_features >= in_features)."""
    return isinstance(module, nn.Linear) and module.out_features >= module.in_features


@torch.no_grad()
def store_wide_weights_column_major(*models: nn.Module) -> int:
    """Re-store every wide linear weight of `models` column-major, in place (values unchanged; a
    parameter shared between modules, e.g. tied embeddings, is moved once); the bytes re-stored."""
    moved, seen = 0, set()
    for model in models:
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not wide(module) or id(weight) in seen or is_column_major(weight):
                continue
            seen.add(id(weight))
            weight.data = weight.data.t().contiguous().t()
            moved += weight.numel() * weight.element_size()
    return moved
