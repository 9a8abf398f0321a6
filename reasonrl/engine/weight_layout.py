"""Faster small-batch products on CPU, same weights: wide matrices stored column-major, and products
of a few rows spread over threads.

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

Second, `SmallLinear`: the same product at a few rows (a decode step of 1-4 sequences) runs on one
thread in MKL whatever `torch.get_num_threads()` says, so a 2-core machine reads the weights with
one core. Two ways round it, the first that applies is taken:
- the C++ kernel (`kernels/csrc/small_linear_cpu.cpp`, fp32, `EngineConfig.cpu_linear_kernel`):
  the outputs split over the threads, each streaming its share of the weight in either layout.
  Each output is summed in a fixed order of its own, so a row's result does not depend on the other
  rows or the thread count, but differs from `F.linear`'s in the last bits (as the column-major
  layout's does). Measured in docs/benchmarks.md.
- one batched product with a slice of the outputs per thread (views of the weight in either
  layout), which `torch.bmm` runs in parallel (`EngineConfig.split_small_matmuls`, any dtype, two
  or more threads). Each output is still one dot product over all the inputs, so the result is
  bit-identical to the unsplit product (tested); the thread count only decides who computes which
  outputs. Measured in a microbenchmark with two threads: 27-31 GB/s against 20-22 unsplit for the
  20M model's column-major matrices.
The engine swaps the class of its model's `nn.Linear` modules to `SmallLinear` (same parameters,
state dict and `isinstance`; more rows, a forward that records gradients, or one under
`torch.compile` run `F.linear` as before).
"""

from __future__ import annotations

import torch
from torch import nn

from reasonrl.kernels import cpu_ops


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


SMALL_ROWS = 4  # above this a step is a matrix product, which MKL already spreads over threads


class SmallLinear(nn.Linear):
    """`nn.Linear` whose products of at most SMALL_ROWS rows on CPU run the C++ kernel (`kernel`) or
    one slice of the weight per thread (`split`), the first switched on that applies (above)."""

    kernel = False
    split = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[0] > SMALL_ROWS or x.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(x)  # compiled decode (engine/compiled.py) leaves products to inductor
        if self.kernel and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            y = cpu_ops.small_linear_cpu(x, self.weight, self.bias)  # no autograd formula: inference only
            if y is not None:
                return y
        parts, w = torch.get_num_threads(), self.weight
        if not self.split or parts < 2 or w.shape[0] % parts:
            return super().forward(x)
        rows = x.shape[0]
        ws = w.t().unflatten(1, (parts, w.shape[0] // parts)).transpose(0, 1)  # (t, K, N/t) views, either layout
        xs = x.expand(parts, rows, x.shape[1])
        if self.bias is None:
            y = torch.bmm(xs, ws)
        else:  # the bias inside the product, as F.linear's addmm has it: bit-identical, not just close
            y = torch.baddbmm(self.bias.view(parts, 1, -1).expand(parts, rows, -1), xs, ws)
        return y.transpose(0, 1).reshape(rows, self.out_features)


def small_products(*models: nn.Module, kernel: bool = True, split: bool = True) -> int:
    """Make every `nn.Linear` of `models` a `SmallLinear` with these switches, in place; how many."""
    swapped = 0
    for model in models:
        for module in model.modules():
            if type(module) in (nn.Linear, SmallLinear):
                module.__class__ = SmallLinear
                module.kernel, module.split = kernel, split
                swapped += 1
    return swapped


def runs_linear_kernel(model: nn.Module) -> bool:
    """Whether `model`'s small products run the C++ kernel: CPU, fp32, switched on, built."""
    linear = next((m for m in model.modules() if isinstance(m, SmallLinear)), None)
    return linear is not None and linear.kernel and linear.weight.device.type == "cpu" and \
        linear.weight.dtype == torch.float32 and cpu_ops.available()
