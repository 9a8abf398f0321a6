"""Data movement (levels 1-3): flip, sort, embedding gather, tiled transpose, scatter-add."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..task import KernelTask, randn

ROWS = ((7, 33), (16, 1000), (5, 257))
PERF_ROWS = ((8192, 4096),)


@triton.jit
def _flip_kernel(x_ptr, out_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * cols + c, mask=c < cols)
    tl.store(out_ptr + row * cols + (cols - 1 - c), x, mask=c < cols)


def flip(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    rows, cols = x.shape
    out = torch.empty_like(x)
    _flip_kernel[(rows,)](x, out, cols, BLOCK=triton.next_power_of_2(cols))
    return out


@triton.jit
def _sort_kernel(x_ptr, out_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * cols + c, mask=c < cols, other=float("inf"))  # padding sorts last
    tl.store(out_ptr + row * cols + c, tl.sort(x, 0), mask=c < cols)


def sort_rows(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    rows, cols = x.shape
    out = torch.empty_like(x)
    _sort_kernel[(rows,)](x, out, cols, BLOCK=triton.next_power_of_2(cols))
    return out


@triton.jit
def _embedding_kernel(table_ptr, ids_ptr, out_ptr, dim, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    token = tl.load(ids_ptr + i).to(tl.int64)
    d = tl.arange(0, BLOCK)
    tl.store(out_ptr + i * dim + d, tl.load(table_ptr + token * dim + d, mask=d < dim), mask=d < dim)


def embedding(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    table = table.contiguous()
    dim = table.shape[1]
    out = torch.empty(ids.numel(), dim, dtype=table.dtype, device=table.device)
    _embedding_kernel[(ids.numel(),)](table, ids.contiguous(), out, dim, BLOCK=triton.next_power_of_2(dim))
    return out


@triton.jit
def _transpose_kernel(x_ptr, out_ptr, rows, cols, B: tl.constexpr):
    r = tl.program_id(0) * B + tl.arange(0, B)
    c = tl.program_id(1) * B + tl.arange(0, B)
    ok = (r[:, None] < rows) & (c[None, :] < cols)
    tile = tl.load(x_ptr + r[:, None] * cols + c[None, :], mask=ok)
    tl.store(out_ptr + c[None, :] * rows + r[:, None], tile, mask=ok)


def transpose(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    rows, cols = x.shape
    out = torch.empty(cols, rows, dtype=x.dtype, device=x.device)
    _transpose_kernel[(triton.cdiv(rows, 32), triton.cdiv(cols, 32))](x, out, rows, cols, B=32)
    return out


@triton.jit
def _scatter_add_kernel(values_ptr, index_ptr, acc_ptr, dim, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    target = tl.load(index_ptr + i).to(tl.int64)
    d = tl.arange(0, BLOCK)
    v = tl.load(values_ptr + i * dim + d, mask=d < dim, other=0.0).to(tl.float32)
    tl.atomic_add(acc_ptr + target * dim + d, v, mask=d < dim)


def scatter_add(values: torch.Tensor, index: torch.Tensor, out_rows: int) -> torch.Tensor:
    values = values.contiguous()
    n, dim = values.shape
    acc = torch.zeros(out_rows, dim, dtype=torch.float32, device=values.device)
    _scatter_add_kernel[(n,)](values, index.contiguous(), acc, dim, BLOCK=triton.next_power_of_2(dim))
    return acc.to(values.dtype)


def _scatter_ref(values, index, out_rows):
    out = torch.zeros(out_rows, values.shape[1], dtype=torch.float32)
    return out.index_add_(0, index, values.float()).to(values.dtype)


def _scatter_inputs(s, d, g):
    n, dim = s
    rows = max(2, n // 3)
    return randn(s, d, g), torch.randint(0, rows, (n,), generator=g), rows


TASKS = [
    KernelTask(
        "flip", "indexing", 1,
        "Reverse each row of a 2-D tensor (flip along the last dimension), returning a new tensor.",
        "def flip(x: torch.Tensor) -> torch.Tensor",
        lambda x: x.flip(-1), lambda s, d, g: (randn(s, d, g),), (_flip_kernel, flip), ROWS, perf_shapes=PERF_ROWS),
    KernelTask(
        "sort_rows", "indexing", 3,
        "Sort each row of a 2-D floating-point tensor in ascending order (values only; no NaNs), returning a new "
        "tensor. Row lengths need not be powers of two.",
        "def sort_rows(x: torch.Tensor) -> torch.Tensor",
        lambda x: x.sort(-1).values, lambda s, d, g: (randn(s, d, g),), (_sort_kernel, sort_rows),
        ((5, 33), (3, 100), (2, 65)), perf_shapes=PERF_ROWS),  # the interpreter's sort is slow: few short rows
    KernelTask(
        "embedding", "indexing", 2,
        "Embedding lookup: given table (vocab, dim) and int64 ids of shape (n,), return table[ids] as (n, dim).",
        "def embedding(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor",
        lambda t, ids: t[ids], lambda s, d, g: (randn((s[0] + 11, s[1]), d, g), torch.randint(0, s[0] + 11, (s[0],),
                                                                                                 generator=g)),
        (_embedding_kernel, embedding), ROWS, perf_shapes=((32768, 4096),)),
    KernelTask(
        "transpose", "indexing", 2,
        "Transpose a 2-D tensor (rows, cols) into a new contiguous tensor (cols, rows), using tiles so that both "
        "reads and writes are coalesced.",
        "def transpose(x: torch.Tensor) -> torch.Tensor",
        lambda x: x.t().contiguous(), lambda s, d, g: (randn(s, d, g),), (_transpose_kernel, transpose),
        ((7, 33), (64, 100), (129, 65)), perf_shapes=((8192, 8192),)),
    KernelTask(
        "scatter_add", "indexing", 3,
        "Scatter-add rows: given values (n, dim), int64 index (n,) with entries in [0, out_rows) and an int "
        "out_rows, return out (out_rows, dim) with out[index[i]] += values[i] for every i (zeros elsewhere), "
        "accumulated in fp32 and returned in values' dtype.",
        "def scatter_add(values: torch.Tensor, index: torch.Tensor, out_rows: int) -> torch.Tensor",
        _scatter_ref, _scatter_inputs, (_scatter_add_kernel, scatter_add), ((7, 33), (64, 100), (129, 65)),
        tolerance={torch.float32: (1e-4, 1e-4)}, perf_shapes=((65536, 1024),)),
]
