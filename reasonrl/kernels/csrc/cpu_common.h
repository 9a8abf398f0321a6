// Shared by the CPU decode kernels (reasonrl/kernels/cpu_ops.py copies it next to their sources to
// build them).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

// With GCC 11+ on x86-64: a function compiled for AVX-512, AVX2 + FMA and plain x86-64, the best for
// the CPU picked at load time; elsewhere (ARM, clang, older GCC) once, for the compiler's default target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define REASONRL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define REASONRL_CLONES
#endif

namespace reasonrl_cpu {

// y = x weight^T + bias for a few rows x (R, K), weight (N, K) row- or column-major
// (small_linear_cpu.cpp; the draft kernels call it too).
at::Tensor small_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);

// a . b in LANES independent partial sums (the compiler vectorises them without reassociating), so
// the order of summation is fixed by n alone.
template <int64_t LANES>
inline float dot(const float* a, const float* b, int64_t n) {
  float part[LANES] = {};
  int64_t d = 0;
  for (; d + LANES <= n; d += LANES)
    for (int64_t j = 0; j < LANES; ++j) part[j] += a[d + j] * b[d + j];
  float s = 0.f;
  for (int64_t j = 0; j < LANES; ++j) s += part[j];
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

// Attention of the G query heads q (G, D) that share one KV head over n tokens: token s's key at
// k[s] + offset and its value at v[s] + offset (D floats each; the callers list cache rows, paged or
// not, and offset picks the KV head). scores: G * n floats of scratch; out (G, D). Each key and value
// is read once for the group; the softmax is exact (max, then exp and sum) over the stored scores.
// Dot products in 8 partial sums. Every sum's order is fixed by n and D alone, so a row's result never depends on what else runs.
// The one attention loop of the CPU kernels: paged decode and tree rows (paged_decode_cpu.cpp) and
// the decoder forward and draft layers (decoder_cpu.cpp). Compiled per CPU generation, per caller.
static REASONRL_CLONES void attend_group(const float* q, const float* const* k, const float* const* v, int64_t offset,
                                         int64_t n, int64_t G, int64_t D, float scale, float* scores, float* out) {
  std::fill_n(out, G * D, 0.f);
  if (n == 0) return;  // nothing to attend: zeros (no caller passes an empty context today)
  for (int64_t s = 0; s < n; ++s) {
    const float* ks = k[s] + offset;
    for (int64_t g = 0; g < G; ++g) scores[g * n + s] = dot<8>(q + g * D, ks, D) * scale;
  }
  for (int64_t g = 0; g < G; ++g) {
    float* sc = scores + g * n;
    const float m = *std::max_element(sc, sc + n);
    float total = 0.f;
    for (int64_t s = 0; s < n; ++s) total += (sc[s] = std::exp(sc[s] - m));
    const float inv = 1.f / total;
    for (int64_t s = 0; s < n; ++s) sc[s] *= inv;
  }
  for (int64_t s = 0; s < n; ++s) {
    const float* vs = v[s] + offset;
    for (int64_t g = 0; g < G; ++g) {
      float* o = out + g * D;
      const float p = scores[g * n + s];
      for (int64_t d = 0; d < D; ++d) o[d] += p * vs[d];
    }
  }
}

}  // namespace reasonrl_cpu
