// Linear layers at a few rows on CPU (a decode step of 1-4 sequences): y = x W^T + b with x (R, K),
// W (N, K), fp32, reading each weight once for all rows. Built on first use by
// reasonrl/kernels/cpu_ops.py, next to the paged decode attention.
//
// At a few rows the product is a stream over the weights, and its speed is how fast they are read.
// MKL's matrix-vector path reads them with one thread and, for a row-major W, at about half the
// rate it reaches on a column-major one (engine/weight_layout.py). Here the outputs are split over
// torch's intra-op threads and each thread streams its share of the weight:
// - W column-major (strides (1, N), how the engine stores wide matrices): W^T is K contiguous rows
//   of N; a thread keeps its outputs in y and adds KB weight rows per pass over them.
// - W row-major (contiguous, the narrow down-projection): one dot product per output.
// Each output's sum runs in a fixed order over k that depends on neither the thread count nor the
// other rows of x, so a row's result is the same alone or in a batch (not bit-identical to MKL's,
// whose order differs: outputs agree to float rounding).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu_common.h"

namespace {

constexpr int64_t KB = 8;      // weight rows added per pass over the outputs (column-major case)
constexpr int64_t LANES = 16;  // independent partial sums of a dot product (row-major case)
constexpr int64_t TILE = 64;   // outputs per unit of work handed to a thread

// Outputs n0..n1 of every row, W^T = wt (K, N) contiguous: y[r, n] = b[n] + sum_k x[r, k] wt[k, n],
// summed in order of k.
REASONRL_CLONES
void column_major(const float* x, const float* wt, const float* bias, float* y, int64_t R, int64_t K, int64_t N,
                  int64_t n0, int64_t n1) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t n = n0; n < n1; ++n) y[r * N + n] = bias ? bias[n] : 0.f;
  int64_t k = 0;
  for (; k + KB <= K; k += KB) {
    const float* w = wt + k * N;
    for (int64_t r = 0; r < R; ++r) {
      const float* xr = x + r * K + k;
      float* yr = y + r * N;
      for (int64_t n = n0; n < n1; ++n) {
        float acc = yr[n];
        for (int64_t j = 0; j < KB; ++j) acc += xr[j] * w[j * N + n];
        yr[n] = acc;
      }
    }
  }
  for (; k < K; ++k) {
    const float* w = wt + k * N;
    for (int64_t r = 0; r < R; ++r) {
      const float a = x[r * K + k];
      float* yr = y + r * N;
      for (int64_t n = n0; n < n1; ++n) yr[n] += a * w[n];
    }
  }
}

// Outputs n0..n1 of every row, w (N, K) contiguous: one dot product of LANES partial sums each.
REASONRL_CLONES
void row_major(const float* x, const float* w, const float* bias, float* y, int64_t R, int64_t K, int64_t N,
               int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* wn = w + n * K;
    for (int64_t r = 0; r < R; ++r) {
      const float s = reasonrl_cpu::dot<LANES>(x + r * K, wn, K);
      y[r * N + n] = bias ? s + bias[n] : s;
    }
  }
}

}  // namespace

namespace reasonrl_cpu {

at::Tensor small_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "small_linear_cpu: x and weight must be CPU tensors");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "small_linear_cpu: x and weight must be float32");
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1),
              "small_linear_cpu: x (rows, in) and weight (out, in) do not match: ", x.sizes(), " and ", weight.sizes());
  const int64_t R = x.size(0), K = x.size(1), N = weight.size(0);
  const bool columns = weight.stride(1) == N && (weight.stride(0) == 1 || N == 1);
  TORCH_CHECK(columns || weight.is_contiguous(), "small_linear_cpu: weight must be row- or column-major, got strides ",
              weight.strides());
  const float* bp = nullptr;
  at::Tensor b;
  if (bias && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == N,
                "small_linear_cpu: bias must be float32 of ", N, " outputs");
    b = bias->contiguous();
    bp = b.data_ptr<float>();
  }
  auto xc = x.contiguous();
  auto y = at::empty({R, N}, x.options());
  const float* xp = xc.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t tiles = (N + TILE - 1) / TILE;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, K * TILE));  // >= 128 KB of weight a thread
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    const int64_t n0 = t0 * TILE, n1 = std::min(N, t1 * TILE);
    if (columns) column_major(xp, wp, bp, yp, R, K, N, n0, n1);
    else row_major(xp, wp, bp, yp, R, K, N, n0, n1);
  });
  return y;
}

}  // namespace reasonrl_cpu

TORCH_LIBRARY_FRAGMENT(reasonrl_cpu, m) { m.def("small_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor"); }

TORCH_LIBRARY_IMPL(reasonrl_cpu, CPU, m) { m.impl("small_linear", &reasonrl_cpu::small_linear); }
