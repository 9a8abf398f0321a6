// Paged decode attention on CPU: one query token per sequence, keys and values read in place from
// the block table, no gathered copy (the PyTorch path copies every sequence's context once per
// layer and step, then reads the copy again). Built on first use by reasonrl/kernels/cpu_ops.py.
//
// One task per (sequence, KV head) on torch's intra-op threads. A task scores every cached key
// against the G query heads that share the KV head (each key read once for the group), takes an
// exact softmax over the stored scores (max, then exp and sum), and sums the values weighted by it
// (each value read once). fp32 throughout. A sequence's result depends on its own context only, not
// on the batch it runs in.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_common.h"

namespace {

constexpr int64_t LANES = 8;  // partial sums of each query-key dot product

// One (sequence, KV head): its G queries q (G, D) against the n cached tokens listed by `table`;
// k and v point at the KV head's slice of token 0 of block 0, a token's row is `row` floats.
// Compiled per CPU generation (cpu_common.h).
REASONRL_CLONES
void attend(const float* q, const float* k, const float* v, const int32_t* table, int64_t n, int64_t block,
            int64_t row, int64_t G, int64_t D, float scale, float* scores, float* out) {
  for (int64_t s = 0; s < n; ++s) {
    const float* ks = k + (static_cast<int64_t>(table[s / block]) * block + s % block) * row;
    for (int64_t g = 0; g < G; ++g) scores[g * n + s] = reasonrl_cpu::dot<LANES>(q + g * D, ks, D) * scale;
  }
  for (int64_t g = 0; g < G; ++g) {  // exact softmax over the stored scores
    float* sc = scores + g * n;
    const float m = *std::max_element(sc, sc + n);
    float total = 0.f;
    for (int64_t s = 0; s < n; ++s) total += (sc[s] = std::exp(sc[s] - m));
    const float inv = 1.f / total;
    for (int64_t s = 0; s < n; ++s) sc[s] *= inv;
  }
  std::fill_n(out, G * D, 0.f);
  for (int64_t s = 0; s < n; ++s) {
    const float* vs = v + (static_cast<int64_t>(table[s / block]) * block + s % block) * row;
    for (int64_t g = 0; g < G; ++g) {
      float* o = out + g * D;
      const float p = scores[g * n + s];
      for (int64_t d = 0; d < D; ++d) o[d] += p * vs[d];
    }
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
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hkv, h = task % Hkv, n = lp[b];
      scores.resize(G * n);
      attend(qp + (b * Hq + h * G) * D, kp + h * D, vp + h * D, tp + b * width, n, block, row, G, D,
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
    std::vector<int32_t> seen;  // the token slots a row may attend, as a block table of single tokens
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hkv, h = task % Hkv, n = lp[b];
      for (int64_t i = 0; i < Q; ++i) {
        seen.clear();
        const bool* m = mp + (b * Q + i) * S;
        for (int64_t s = 0; s < n; ++s)
          if (m[s]) seen.push_back(tp[b * width + s / block] * static_cast<int32_t>(block) + static_cast<int32_t>(s % block));
        if (seen.empty()) continue;
        scores.resize(G * seen.size());
        const int64_t at = ((b * Q + i) * Hq + h * G) * D;
        attend(qp + at, kp + h * D, vp + h * D, seen.data(), static_cast<int64_t>(seen.size()), 1, row, G, D,
               static_cast<float>(scale), scores.data(), op + at);
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
