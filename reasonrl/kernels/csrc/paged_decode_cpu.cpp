// Paged decode attention on CPU: one query token per sequence, keys and values read in place from
// the block table, no gathered copy (the PyTorch path copies every sequence's context once per
// layer and step, then reads the copy again). Built on first use by reasonrl/kernels/cpu_ops.py.
//
// One task per (sequence, KV head) on torch's intra-op threads. A task lists the cache rows of the
// sequence's context from its block table and runs `attend_group` (cpu_common.h): every cached key
// scored against the G query heads that share the KV head (each key read once for the group), an
// exact softmax, the values summed by it (each read once). fp32 throughout. A sequence's result depends on its own context only, not
// on the batch it runs in.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_common.h"

namespace {

// The cache rows of a sequence's first n tokens, listed by its block table: keys into kr, values
// into vr (token s's row of `row` floats, its KV heads side by side).
void rows_of(const float* k, const float* v, const int32_t* table, int64_t n, int64_t block, int64_t row,
             std::vector<const float*>& kr, std::vector<const float*>& vr) {
  kr.resize(n), vr.resize(n);
  for (int64_t s = 0; s < n; ++s) {
    const int64_t slot = static_cast<int64_t>(table[s / block]) * block + s % block;
    kr[s] = k + slot * row, vr[s] = v + slot * row;
  }
}

// The checks both entry points make: shapes, dtypes, and every block a context reads inside the cache.
void check_paged(const char* name, const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                 const at::Tensor& tables, const at::Tensor& lens) {
  TORCH_CHECK(q.device().is_cpu() && q.scalar_type() == at::kFloat, name, ": q must be a float32 CPU tensor");
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              name, ": caches must be (blocks, block size, kv heads, head dim), keys and values alike");
  TORCH_CHECK(k_cache.scalar_type() == at::kFloat && v_cache.scalar_type() == at::kFloat, name, ": caches must be float32");
  TORCH_CHECK(tables.scalar_type() == at::kInt && lens.scalar_type() == at::kInt, name,
              ": block tables and lengths must be int32");
  const int64_t B = q.size(0), Hq = q.size(-2), D = q.size(-1);
  const int64_t blocks = k_cache.size(0), block = k_cache.size(1), Hkv = k_cache.size(2);
  TORCH_CHECK(Hkv > 0 && block > 0 && k_cache.size(3) == D && Hq % Hkv == 0, name, ": head dim or GQA group mismatch");
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == B && lens.numel() == B, name, ": one table and length per sequence");
  auto tc = tables.contiguous(), lc = lens.contiguous();
  const int32_t* tp = tc.data_ptr<int32_t>();
  const int32_t* lp = lc.data_ptr<int32_t>();
  const int64_t width = tc.size(1);
  for (int64_t b = 0; b < B; ++b) {  // every block a sequence's context reads must be in the cache
    TORCH_CHECK(lp[b] >= 1 && lp[b] <= width * block, name, ": sequence ", b, " has context length ", lp[b], " outside 1..",
                width * block);
    for (int64_t i = 0; i < (lp[b] + block - 1) / block; ++i)
      TORCH_CHECK(tp[b * width + i] >= 0 && tp[b * width + i] < blocks, name, ": sequence ", b, " lists block ",
                  tp[b * width + i], " of a cache of ", blocks);
  }
}

at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& tables, const at::Tensor& lens, double scale) {
  TORCH_CHECK(q.dim() == 3, "paged_decode_cpu: q must be (sequences, query heads, head dim)");
  check_paged("paged_decode_cpu", q, k_cache, v_cache, tables, lens);
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t block = k_cache.size(1), Hkv = k_cache.size(2);
  auto qc = q.contiguous();
  auto kc = k_cache.contiguous(), vc = v_cache.contiguous();  // views of the engine's cache: already contiguous
  auto tc = tables.contiguous(), lc = lens.contiguous();
  auto out = at::empty({B, Hq, D}, q.options());
  const int64_t G = Hq / Hkv, width = tc.size(1);
  const float* qp = qc.data_ptr<float>();
  const float* kp = kc.data_ptr<float>();
  const float* vp = vc.data_ptr<float>();
  const int32_t* tp = tc.data_ptr<int32_t>();
  const int32_t* lp = lc.data_ptr<int32_t>();
  float* op = out.data_ptr<float>();
  const int64_t row = Hkv * D;  // floats between consecutive tokens of one block

  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<const float*> kr, vr;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hkv, h = task % Hkv, n = lp[b];
      scores.resize(G * n);
      rows_of(kp, vp, tp + b * width, n, block, row, kr, vr);
      reasonrl_cpu::attend_group(qp + (b * Hq + h * G) * D, kr.data(), vr.data(), h * D, n, G, D,
                                 static_cast<float>(scale), scores.data(), op + (b * Hq + h * G) * D);
    }
  });
  return out;
}

// A few query rows per sequence (a draft tree's, EAGLE verification), each attending the cached
// tokens its row of `mask` allows: q (B, Q, Hq, D) padded to Q rows, mask (B, Q, S) with S at least
// the longest context. One task per (sequence, KV head), as paged_decode; a row with no allowed
// token (padding) gets zeros.
at::Tensor paged_masked(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& tables, const at::Tensor& lens, const at::Tensor& mask, double scale) {
  TORCH_CHECK(q.dim() == 4 && q.size(0) >= 1, "paged_masked_cpu: q must be (sequences, rows, query heads, head dim), "
              "at least one sequence");
  check_paged("paged_masked_cpu", q, k_cache, v_cache, tables, lens);
  const int64_t B = q.size(0), Q = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t block = k_cache.size(1), Hkv = k_cache.size(2), G = Hq / Hkv, row = Hkv * D;
  auto lc = lens.contiguous();
  const int32_t* lp = lc.data_ptr<int32_t>();
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 3 && mask.size(0) == B && mask.size(1) == Q &&
                  mask.size(2) >= *std::max_element(lp, lp + B),
              "paged_masked_cpu: mask must be bool (", B, ", ", Q, ", at least the longest context), got ", mask.sizes());
  auto qc = q.contiguous(), mc = mask.contiguous(), tc = tables.contiguous();
  auto kc = k_cache.contiguous(), vc = v_cache.contiguous();
  auto out = at::zeros({B, Q, Hq, D}, q.options());
  const float *qp = qc.data_ptr<float>(), *kp = kc.data_ptr<float>(), *vp = vc.data_ptr<float>();
  const bool* mp = mc.data_ptr<bool>();
  const int32_t* tp = tc.data_ptr<int32_t>();
  float* op = out.data_ptr<float>();
  const int64_t width = tc.size(1), S = mc.size(2);
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<const float*> kr, vr, ks, vs;  // the context's rows; those a row may attend
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hkv, h = task % Hkv, n = lp[b];
      rows_of(kp, vp, tp + b * width, n, block, row, kr, vr);
      for (int64_t i = 0; i < Q; ++i) {
        ks.clear(), vs.clear();
        const bool* m = mp + (b * Q + i) * S;
        for (int64_t s = 0; s < n; ++s)
          if (m[s]) ks.push_back(kr[s]), vs.push_back(vr[s]);
        if (ks.empty()) continue;
        const int64_t seen = static_cast<int64_t>(ks.size()), at = ((b * Q + i) * Hq + h * G) * D;
        scores.resize(G * seen);
        reasonrl_cpu::attend_group(qp + at, ks.data(), vs.data(), h * D, seen, G, D, static_cast<float>(scale),
                                   scores.data(), op + at);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(reasonrl_cpu, m) {
  m.def("paged_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor tables, Tensor lens, float scale) -> Tensor");
  m.def("paged_masked(Tensor q, Tensor k_cache, Tensor v_cache, Tensor tables, Tensor lens, Tensor mask, float scale) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(reasonrl_cpu, CPU, m) {
  m.impl("paged_decode", &paged_decode);
  m.impl("paged_masked", &paged_masked);
}
