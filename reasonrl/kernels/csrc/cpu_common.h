// Shared by the CPU decode kernels (reasonrl/kernels/cpu_ops.py copies it next to their sources to
// build them).
#pragma once

#include <ATen/ATen.h>

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

}  // namespace reasonrl_cpu
