"""Row reductions and scans (level 2): one program per row, looping over column blocks."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..task import KernelTask, randn

ROWS = ((7, 33), (16, 1000), (5, 4097))  # rows longer than one block are included
PERF_ROWS = ((8192, 4096), (1024, 32768))


@triton.jit
def _row_sum_kernel(x_ptr, out_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, cols, BLOCK):
        c = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + row * cols + c, mask=c < cols, other=0.0).to(tl.float32)
    tl.store(out_ptr + row, tl.sum(acc, 0).to(out_ptr.dtype.element_ty))


def row_sum(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    rows, cols = x.shape
    out = torch.empty(rows, dtype=x.dtype, device=x.device)
    _row_sum_kernel[(rows,)](x, out, cols, BLOCK=1024)
    return out


@triton.jit
def _row_max_kernel(x_ptr, val_ptr, idx_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    best = tl.full((), float("-inf"), tl.float32)
    best_idx = tl.full((), 0, tl.int64)
    for start in range(0, cols, BLOCK):
        c = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * cols + c, mask=c < cols, other=float("-inf")).to(tl.float32)
        m = tl.max(x, 0)
        i = tl.argmax(x, 0).to(tl.int64) + start  # first maximum within the block
        better = m > best  # strictly: an earlier block keeps ties
        best_idx = tl.where(better, i, best_idx)
        best = tl.where(better, m, best)
    tl.store(val_ptr + row, best.to(val_ptr.dtype.element_ty))
    tl.store(idx_ptr + row, best_idx)


def row_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    rows, cols = x.shape
    values = torch.empty(rows, dtype=x.dtype, device=x.device)
    indices = torch.empty(rows, dtype=torch.int64, device=x.device)
    _row_max_kernel[(rows,)](x, values, indices, cols, BLOCK=1024)
    return values, indices


@triton.jit
def _mean_var_kernel(x_ptr, mean_ptr, var_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, cols, BLOCK):
        c = start + tl.arange(0, BLOCK)
        total += tl.load(x_ptr + row * cols + c, mask=c < cols, other=0.0).to(tl.float32)
    mean = tl.sum(total, 0) / cols
    squares = tl.zeros((BLOCK,), dtype=tl.float32)  # second pass: no cancellation of E[x^2] - E[x]^2
    for start in range(0, cols, BLOCK):
        c = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * cols + c, mask=c < cols, other=0.0).to(tl.float32)
        squares += tl.where(c < cols, (x - mean) * (x - mean), 0.0)
    tl.store(mean_ptr + row, mean)
    tl.store(var_ptr + row, tl.sum(squares, 0) / cols)


def row_mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    rows, cols = x.shape
    mean = torch.empty(rows, dtype=torch.float32, device=x.device)
    var = torch.empty(rows, dtype=torch.float32, device=x.device)
    _mean_var_kernel[(rows,)](x, mean, var, cols, BLOCK=1024)
    return mean, var


@triton.jit
def _l2_normalize_kernel(x_ptr, out_ptr, cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    squares = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, cols, BLOCK):
        c = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * cols + c, mask=c < cols, other=0.0).to(tl.float32)
        squares += x * x
    scale = 1.0 / tl.maximum(tl.sqrt(tl.sum(squares, 0)), eps)
    for start in range(0, cols, BLOCK):
        c = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * cols + c, mask=c < cols, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * cols + c, (x * scale).to(out_ptr.dtype.element_ty), mask=c < cols)


def l2_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.contiguous()
    rows, cols = x.shape
    out = torch.empty_like(x)
    _l2_normalize_kernel[(rows,)](x, out, cols, eps, BLOCK=1024)
    return out


@triton.jit
def _cumsum_kernel(x_ptr, out_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    carry = tl.zeros((), dtype=tl.float32)  # the sum of all earlier blocks of the row
    for start in range(0, cols, BLOCK):
        c = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * cols + c, mask=c < cols, other=0.0).to(tl.float32)
        scan = tl.cumsum(x, 0) + carry
        tl.store(out_ptr + row * cols + c, scan.to(out_ptr.dtype.element_ty), mask=c < cols)
        carry += tl.sum(x, 0)


def row_cumsum(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    rows, cols = x.shape
    out = torch.empty_like(x)
    _cumsum_kernel[(rows,)](x, out, cols, BLOCK=1024)
    return out


def _mean_var_ref(x):
    x = x.float()
    return x.mean(-1), x.var(-1, unbiased=False)


def _l2_ref(x, eps):
    x32 = x.float()
    return (x32 / x32.norm(dim=-1, keepdim=True).clamp_min(eps)).to(x.dtype)


def _one(s, d, g):
    return (randn(s, d, g),)


TASKS = [
    KernelTask(
        "row_sum", "reduction", 2,
        "Sum each row of a 2-D tensor (rows, cols), accumulating in fp32, and return a (rows,) tensor in the "
        "input's dtype. Rows can be longer than one block.",
        "def row_sum(x: torch.Tensor) -> torch.Tensor",
        lambda x: x.float().sum(-1).to(x.dtype), _one, (_row_sum_kernel, row_sum), ROWS,
        tolerance={torch.float32: (1e-3, 1e-4)}, perf_shapes=PERF_ROWS),
    KernelTask(
        "row_max", "reduction", 2,
        "For each row of a 2-D tensor return its maximum (input dtype) and the index of the first occurrence "
        "of that maximum (int64), as a tuple (values, indices) of shape (rows,) each.",
        "def row_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]",
        lambda x: (x.max(-1).values, x.float().argmax(-1)), _one, (_row_max_kernel, row_max), ROWS,
        perf_shapes=PERF_ROWS),
    KernelTask(
        "row_mean_var", "reduction", 2,
        "For each row of a 2-D tensor return its mean and its biased variance (divide by cols), both in fp32, "
        "as a tuple (mean, var) of shape (rows,) each. Use a numerically stable method.",
        "def row_mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]",
        _mean_var_ref, lambda s, d, g: (randn(s, d, g, 3.0) + 5.0,), (_mean_var_kernel, row_mean_var), ROWS,
        tolerance={torch.float32: (1e-4, 1e-4), torch.float16: (1e-3, 1e-3)}, perf_shapes=PERF_ROWS),
    KernelTask(
        "l2_normalize", "reduction", 2,
        "Divide each row of a 2-D tensor by max(its L2 norm, eps), computing in fp32 and returning the input's "
        "dtype and shape.",
        "def l2_normalize(x: torch.Tensor, eps: float) -> torch.Tensor",
        _l2_ref, lambda s, d, g: (randn(s, d, g), 1e-6), (_l2_normalize_kernel, l2_normalize), ROWS,
        perf_shapes=PERF_ROWS),
    KernelTask(
        "row_cumsum", "reduction", 2,
        "The inclusive prefix sum along each row of a 2-D tensor, accumulated in fp32, returned in the input's "
        "dtype and shape. Rows can be longer than one block.",
        "def row_cumsum(x: torch.Tensor) -> torch.Tensor",
        lambda x: x.float().cumsum(-1).to(x.dtype), _one, (_cumsum_kernel, row_cumsum), ROWS,
        tolerance={torch.float32: (1e-3, 1e-4)}, perf_shapes=PERF_ROWS),
]
