"""Matrix multiplication variants (levels 3-4): tiled GEMM with fp32 accumulation, a fused epilogue,
batched GEMM, matrix-vector product, and int8 weight-only GEMM (dequantized in the K loop).

Shapes are (M, N, K) (with a leading batch for `batched_matmul`); fp32 tiles use IEEE dots, so
the answer does not depend on a GPU's TF32 setting.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..task import KernelTask, randn

MNK = ((33, 47, 65), (64, 64, 64), (17, 130, 31))
PERF_MNK = ((4096, 4096, 4096), (8192, 1024, 4096))
GEMM_TOL = {torch.float32: (1e-3, 1e-4), torch.float16: (2e-2, 1e-2)}


@triton.jit
def _matmul_kernel(a_ptr, b_ptr, bias_ptr, c_ptr, M, N, K, stride_ab, stride_bb, stride_cb,
                   HAS_BIAS: tl.constexpr, RELU: tl.constexpr, PRECISION: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """C[z] = A[z] (M, K) @ B[z] (K, N), row-major, batch z = program_id(2)."""
    pid_m, pid_n, z = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + z * stride_ab + rm[:, None] * K + (k + rk)[None, :],
                    mask=(rm[:, None] < M) & ((k + rk)[None, :] < K), other=0.0)
        b = tl.load(b_ptr + z * stride_bb + (k + rk)[:, None] * N + rn[None, :],
                    mask=((k + rk)[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(c_ptr + z * stride_cb + rm[:, None] * N + rn[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def _gemm(a, b, bias=None, relu=False):
    """a (..., M, K) @ b (..., K, N) with an optional fused bias and ReLU."""
    a, b = a.contiguous(), b.contiguous()
    M, K = a.shape[-2:]
    N = b.shape[-1]
    batch = a.shape[0] if a.dim() == 3 else 1
    c = torch.empty(*a.shape[:-2], M, N, dtype=a.dtype, device=a.device)
    grid = (triton.cdiv(M, 32), triton.cdiv(N, 32), batch)
    _matmul_kernel[grid](a, b, bias if bias is not None else a, c, M, N, K, M * K, K * N, M * N,
                         HAS_BIAS=bias is not None, RELU=relu,
                         PRECISION="ieee" if a.dtype == torch.float32 else "tf32", BM=32, BN=32, BK=32)
    return c


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _gemm(a, b)


def matmul_bias_relu(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _gemm(a, b, bias, relu=True)


def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _gemm(a, b)


@triton.jit
def _gemv_kernel(a_ptr, x_ptr, y_ptr, M, K, BM: tl.constexpr, BK: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    acc = tl.zeros((BM,), dtype=tl.float32)
    for k in range(0, K, BK):
        rk = k + tl.arange(0, BK)
        a = tl.load(a_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        x = tl.load(x_ptr + rk, mask=rk < K, other=0.0)
        acc += tl.sum(a.to(tl.float32) * x.to(tl.float32)[None, :], 1)
    tl.store(y_ptr + rm, acc.to(y_ptr.dtype.element_ty), mask=rm < M)


def gemv(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    a = a.contiguous()
    M, K = a.shape
    y = torch.empty(M, dtype=a.dtype, device=a.device)
    _gemv_kernel[(triton.cdiv(M, 32),)](a, x.contiguous(), y, M, K, BM=32, BK=128)
    return y


@triton.jit
def _w8_matmul_kernel(x_ptr, w_ptr, scale_ptr, y_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr,
                      BK: tl.constexpr):
    """y (M, N) = x (M, K) @ (w (N, K) int8 * scale (N,))^T; the scale is applied once, after the K loop."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        x = tl.load(x_ptr + rm[:, None] * K + (k + rk)[None, :], mask=(rm[:, None] < M) & ((k + rk)[None, :] < K),
                    other=0.0)
        w = tl.load(w_ptr + rn[None, :] * K + (k + rk)[:, None], mask=(rn[None, :] < N) & ((k + rk)[:, None] < K),
                    other=0)  # (BK, BN): w transposed by the indexing
        acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
    scale = tl.load(scale_ptr + rn, mask=rn < N, other=0.0)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], (acc * scale[None, :]).to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def int8_weight_matmul(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    M, K = x.shape
    N = w.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    _w8_matmul_kernel[(triton.cdiv(M, 32), triton.cdiv(N, 32))](x, w.contiguous(), scale.contiguous(), y, M, N, K,
                                                                 BM=32, BN=32, BK=32)
    return y


def _mm_ref(a, b):
    return (a.float() @ b.float()).to(a.dtype)


def _mm_inputs(s, d, g):
    m, n, k = s
    return randn((m, k), d, g), randn((k, n), d, g)


def _bmm_inputs(s, d, g):
    m, n, k = s
    return randn((3, m, k), d, g), randn((3, k, n), d, g)


def _w8_inputs(s, d, g):
    m, n, k = s
    return randn((m, k), d, g), torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8), \
        torch.rand(n, generator=g) * 0.02 + 0.001


TASKS = [
    KernelTask(
        "matmul", "matmul", 3,
        "Matrix multiplication C = A @ B for row-major A (M, K) and B (K, N) of the same dtype, accumulating in "
        "fp32 (IEEE fp32 products for fp32 inputs, no TF32) and returning C (M, N) in the inputs' dtype. M, N "
        "and K can be any positive sizes.",
        "def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor",
        _mm_ref, _mm_inputs, (_matmul_kernel, _gemm, matmul), MNK, tolerance=GEMM_TOL, perf_shapes=PERF_MNK),
    KernelTask(
        "matmul_bias_relu", "matmul", 3,
        "A linear layer with a fused epilogue: relu(A @ B + bias) for A (M, K), B (K, N) and bias (N,), "
        "accumulated in fp32 and returned in A's dtype.",
        "def matmul_bias_relu(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor) -> torch.Tensor",
        lambda a, b, bias: torch.relu(a.float() @ b.float() + bias.float()).to(a.dtype),
        lambda s, d, g: (*_mm_inputs(s, d, g), randn((s[1],), d, g)), (_matmul_kernel, _gemm, matmul_bias_relu),
        MNK, tolerance=GEMM_TOL, perf_shapes=PERF_MNK),
    KernelTask(
        "batched_matmul", "matmul", 3,
        "Batched matrix multiplication: for A (B, M, K) and B (B, K, N) return (B, M, N) with C[i] = A[i] @ B[i], "
        "accumulated in fp32, in the inputs' dtype.",
        "def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor",
        _mm_ref, _bmm_inputs, (_matmul_kernel, _gemm, batched_matmul), MNK, tolerance=GEMM_TOL,
        perf_shapes=((64, 512, 512),)),
    KernelTask(
        "gemv", "matmul", 2,
        "Matrix-vector product y = A @ x for A (M, K) and x (K,), accumulated in fp32, returned as (M,) in A's "
        "dtype.",
        "def gemv(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor",
        lambda a, x: (a.float() @ x.float()).to(a.dtype), lambda s, d, g: (randn(s[::2], d, g), randn(s[2:], d, g)),
        (_gemv_kernel, gemv), ((33, 1, 65), (64, 1, 1000), (130, 1, 31)), tolerance=GEMM_TOL,
        perf_shapes=((8192, 1, 8192),)),
    KernelTask(
        "int8_weight_matmul", "matmul", 4,
        "Weight-only int8 linear layer: y = x @ (w * scale[:, None]).T for x (M, K) in fp32/fp16, w (N, K) int8 "
        "and per-output-channel fp32 scale (N,). Accumulate in fp32, return (M, N) in x's dtype. Do not "
        "materialize the dequantized weight in memory.",
        "def int8_weight_matmul(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor",
        lambda x, w, s: (x.float() @ (w.float() * s[:, None]).T).to(x.dtype), _w8_inputs,
        (_w8_matmul_kernel, int8_weight_matmul), MNK, tolerance=GEMM_TOL, perf_shapes=PERF_MNK),
]
