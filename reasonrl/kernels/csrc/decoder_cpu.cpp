// A decoder layer over a few rows on CPU, without a Python dispatch per operation, and what is built
// on it (built on first use by reasonrl/kernels/cpu_ops.py, next to the other CPU kernels):
//
// - draft_tree: grow B draft trees from their roots (EAGLE-2 expansion, engine/spec/tree.py and
//   grow.py): per depth, the draft's layer over every frontier row, the LM head, a log-softmax and
//   a top-k, then the next frontier. Returns what TreeSearch.tensors() holds.
// - draft_rows: the draft's layer over a catch-up of new rows per sequence, after the sequence's
//   committed rows: every row's key and value, and the newest row's output only (one layer: the
//   other rows' outputs are read by nobody); draft_catch_up: the same for text tokens, their input
//   rows fused here from the token ids and the target's features.
// - decoder_forward: the target model's forward over a step of decode rows, draft-tree rows and
//   short prompt chunks (engine/cpu_forward.py), keys and values written to and read from the paged
//   cache in place.
//
// On a small model every one of those operations costs more to dispatch from Python than to
// compute (docs/spec.md); here only the products with the weights go through ATen (the small-product
// kernel at a few rows, MKL above), and everything between them is a loop over a few rows. fp32.
// Attention runs one row at a time through the same function whatever the row's batch, so a row's
// result depends on its own context only. The sums run in another order than PyTorch's: results
// agree with the PyTorch paths to float rounding, not bit for bit.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "cpu_common.h"

namespace {

constexpr int64_t LANES = 8;

const float* ptr(const at::Tensor& t) { return t.numel() ? t.data_ptr<float>() : nullptr; }

void check_float(at::TensorList w, const char* what) {
  for (const auto& t : w)
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, what, ": weights must be float32 on CPU");
}

// One decoder layer's weights (models/model.py DecoderLayer), 12 tensors from w in the order
// cpu_ops lists them; an absent bias or norm is an empty tensor. And the shapes it runs with.
struct Layer {
  at::Tensor in_norm, qkv_w, qkv_b, q_norm, k_norm, o_w, o_b, post_norm, gu_w, gu_b, down_w, down_b;
  const float* inv_freq;
  int64_t h, hq, hk, d, inter;
  float eps;

  Layer(at::TensorList w, const at::Tensor& inv_freq_, int64_t hidden, int64_t num_heads, int64_t num_kv_heads,
        double eps_) {
    in_norm = w[0], qkv_w = w[1], qkv_b = w[2], q_norm = w[3], k_norm = w[4], o_w = w[5], o_b = w[6];
    post_norm = w[7], gu_w = w[8], gu_b = w[9], down_w = w[10], down_b = w[11];
    h = hidden, hq = num_heads, hk = num_kv_heads, inter = gu_w.size(0) / 2, eps = static_cast<float>(eps_);
    TORCH_CHECK(hq > 0 && hk > 0 && hq % hk == 0, "decoder kernels: ", hq, " query heads over ", hk, " kv heads");
    d = qkv_w.size(0) / (hq + 2 * hk);
    TORCH_CHECK(qkv_w.size(0) == (hq + 2 * hk) * d && d % 2 == 0 && inv_freq_.numel() == d / 2 && inv_freq_.is_contiguous(),
                "decoder kernels: qkv_proj of ", qkv_w.size(0), " outputs does not fit ", hq, "+2x", hk, " heads");
    TORCH_CHECK(qkv_w.size(1) == h && o_w.size(0) == h && gu_w.size(1) == h && down_w.size(0) == h,
                "decoder kernels: layer weight shapes do not fit hidden size ", h);
    inv_freq = inv_freq_.data_ptr<float>();
  }
};

// The draft's weights: 7 of its own around its layer's 12 (cpu_ops.draft_weights lists them).
struct Draft {
  at::Tensor embed, embed_norm, feature_norm, fc_w, fc_b, lm_head, inv_freq;
  Layer layer;
  int64_t h, vocab;

  Draft(at::TensorList w, int64_t num_heads, int64_t num_kv_heads, double eps)
      : inv_freq(checked(w)[18]), layer(w.slice(5, 12), inv_freq, w[0].size(1), num_heads, num_kv_heads, eps) {
    embed = w[0], embed_norm = w[1], feature_norm = w[2], fc_w = w[3], fc_b = w[4], lm_head = w[17];
    h = embed.size(1), vocab = lm_head.size(0);
    TORCH_CHECK(fc_w.size(0) == h && fc_w.size(1) == 2 * h && lm_head.size(1) == h,
                "draft kernels: weight shapes do not fit hidden size ", h);
  }

  static at::TensorList checked(at::TensorList w) {
    TORCH_CHECK(w.size() == 19, "draft kernels: expected 19 weight tensors, got ", w.size());
    check_float(w, "draft kernels");
    return w;
  }
};

// Row `token` of an embedding into out (h floats); tied to a column-major LM head, the embedding is
// strided.
void embed_row(const at::Tensor& embed, int64_t token, float* out, const char* who) {
  TORCH_CHECK(token >= 0 && token < embed.size(0), who, ": token id ", token, " out of range");
  const float* e = embed.data_ptr<float>() + token * embed.stride(0);
  for (int64_t j = 0; j < embed.size(1); ++j) out[j] = e[j * embed.stride(1)];
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const c10::optional<at::Tensor> bias = b.numel() ? c10::optional<at::Tensor>(b) : c10::nullopt;
  // the small-product kernel streams a column-major weight once for all rows, about twice MKL's speed
  // up to 16 rows on the demo policy's shapes; a row-major one it reads per row, slower above 4
  const bool column_major = w.stride(0) == 1 && w.stride(1) == w.size(0);
  if (x.size(0) <= 4 || (column_major && x.size(0) <= 16)) return reasonrl_cpu::small_linear(x, w, bias);
  return bias ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t());
}

// y = w * x / sqrt(mean(x^2) + eps), n values, in place allowed.
void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps) {
  const float r = 1.f / std::sqrt(reasonrl_cpu::dot<LANES>(x, x, n) / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * r);
}

// The rotation of one position: cos and sin of pos * inv_freq, d / 2 of each.
void angles(int64_t pos, const float* inv_freq, int64_t half, float* cs, float* sn) {
  for (int64_t i = 0; i < half; ++i) {
    const float f = static_cast<float>(pos) * inv_freq[i];
    cs[i] = std::cos(f), sn[i] = std::sin(f);
  }
}

// Half-split rotary embedding of one head (the Llama/Qwen convention, models/rope.py).
void rotate(float* x, const float* cs, const float* sn, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cs[i] - b * sn[i];
    x[i + half] = b * cs[i] + a * sn[i];
  }
}

// The keys and values one row attends: pointers to (kv heads, head dim) rows, in order.
struct Context {
  std::vector<const float*> k, v;
  void clear() { k.clear(), v.clear(); }
  void add(const float* kr, const float* vr) { k.push_back(kr), v.push_back(vr); }
};

// Row i's attention output (hq, d) over ctx, its queries q (hq, d): each KV head's group of query
// heads through `attend_group` (cpu_common.h); scratch grows to group * ctx.k.size() floats.
void attend(const Layer& m, const float* q, const Context& ctx, float* out, std::vector<float>& scratch) {
  const int64_t n = static_cast<int64_t>(ctx.k.size()), group = m.hq / m.hk;
  const float scale = 1.f / std::sqrt(static_cast<float>(m.d));
  scratch.resize(group * n);
  for (int64_t kv = 0; kv < m.hk; ++kv)
    reasonrl_cpu::attend_group(q + kv * group * m.d, ctx.k.data(), ctx.v.data(), kv * m.d, n, group, m.d, scale,
                               scratch.data(), out + kv * group * m.d);
}

// Fused input rows of tokens and parent features: fc([embed_norm(embed[tok]), feature_norm(feat)]).
at::Tensor fuse(const Draft& m, const int64_t* tokens, const float* features, int64_t n) {
  auto cat = at::empty({n, 2 * m.h}, m.embed.options());
  float* c = cat.data_ptr<float>();
  std::vector<float> token(m.h);
  for (int64_t i = 0; i < n; ++i) {
    embed_row(m.embed, tokens[i], token.data(), "draft kernels");
    rms_norm(token.data(), ptr(m.embed_norm), c + i * 2 * m.h, m.h, m.layer.eps);
    rms_norm(features + i * m.h, ptr(m.feature_norm), c + i * 2 * m.h + m.h, m.h, m.layer.eps);
  }
  return linear(cat, m.fc_w, m.fc_b);
}

// A decoder layer over n rows x (n, h) at `pos`: returns the outputs (n, h) and fills new_k, new_v
// (n, hk, d). `store()` runs once they exist, before any row attends (the target writes them into
// its cache); `context(i, ctx)` lists what row i attends, and `own_row` appends row i's own new key
// and value last (the draft's rows, which are in no cache). Rows attend in parallel on torch's
// threads, each through the same function: a row's result never depends on the others. With
// `outputs`, only those rows attend and go on through the MLP, and the result is theirs (a
// one-layer draft's catch-up: the other rows' keys and values are all it needs of them).
template <typename StoreFn, typename ContextFn>
at::Tensor layer(const Layer& m, const at::Tensor& x, const int64_t* pos, at::Tensor& new_k, at::Tensor& new_v,
                 bool own_row, StoreFn store, ContextFn context, const std::vector<int64_t>* outputs = nullptr) {
  const int64_t n = x.size(0), h = m.h, d = m.d, qs = m.hq * d, ks = m.hk * d;
  auto normed = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) rms_norm(xp + i * h, ptr(m.in_norm), normed.data_ptr<float>() + i * h, h, m.eps);
  auto qkv = linear(normed, m.qkv_w, m.qkv_b).contiguous();  // (n, q heads, then k heads, then v heads)
  new_k = at::empty({n, m.hk, d}, x.options());
  new_v = at::empty({n, m.hk, d}, x.options());
  float *qkvp = qkv.data_ptr<float>(), *kp = new_k.data_ptr<float>(), *vp = new_v.data_ptr<float>();
  std::vector<float> cs(d / 2), sn(d / 2);
  for (int64_t i = 0; i < n; ++i) {
    float* r = qkvp + i * (qs + 2 * ks);
    angles(pos[i], m.inv_freq, d / 2, cs.data(), sn.data());
    for (int64_t head = 0; head < m.hq + m.hk; ++head) {
      float* x1 = r + head * d;
      if (m.q_norm.numel()) rms_norm(x1, ptr(head < m.hq ? m.q_norm : m.k_norm), x1, d, m.eps);  // Qwen3
      rotate(x1, cs.data(), sn.data(), d / 2);
    }
    std::copy_n(r + qs, ks, kp + i * ks);
    std::copy_n(r + qs + ks, ks, vp + i * ks);
  }
  store();
  const int64_t r = outputs ? static_cast<int64_t>(outputs->size()) : n;  // rows that go on
  auto att = at::empty({r, qs}, x.options());
  float* ap = att.data_ptr<float>();
  at::parallel_for(0, r, 4, [&](int64_t begin, int64_t end) {
    Context ctx;
    std::vector<float> scratch;
    for (int64_t o = begin; o < end; ++o) {
      const int64_t i = outputs ? (*outputs)[o] : o;
      ctx.clear();
      context(i, ctx);
      if (own_row) ctx.add(kp + i * ks, vp + i * ks);
      attend(m, qkvp + i * (qs + 2 * ks), ctx, ap + o * qs, scratch);
    }
  });
  const at::Tensor base = outputs ? x.index_select(0, at::tensor(*outputs, at::kLong)) : x;
  auto y = base + linear(att, m.o_w, m.o_b);
  const float* yp = y.data_ptr<float>();
  normed = at::empty({r, h}, x.options());
  for (int64_t i = 0; i < r; ++i) rms_norm(yp + i * h, ptr(m.post_norm), normed.data_ptr<float>() + i * h, h, m.eps);
  auto gu = linear(normed, m.gu_w, m.gu_b).contiguous();
  auto act = at::empty({r, m.inter}, x.options());
  const float* g = gu.data_ptr<float>();
  float* a = act.data_ptr<float>();
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < m.inter; ++j) {
      const float gv = g[i * 2 * m.inter + j];
      a[i * m.inter + j] = gv / (1.f + std::exp(-gv)) * g[i * 2 * m.inter + m.inter + j];
    }
  return y.add_(linear(act, m.down_w, m.down_b));
}

// The k most likely next tokens of each row's logits, with their log-probs, most likely first
// (ties: the lower token id first).
void top_log_probs(const float* logits, int64_t vocab, int64_t k, float* lp, int64_t* tok) {
  const float mx = *std::max_element(logits, logits + vocab);
  float total = 0.f;
  for (int64_t t = 0; t < vocab; ++t) total += std::exp(logits[t] - mx);
  const float lse = mx + std::log(total);
  int64_t filled = 0;
  for (int64_t t = 0; t < vocab; ++t) {
    const float s = logits[t];
    if (filled == k && s <= lp[k - 1]) continue;
    int64_t j = filled < k ? filled++ : k - 1;
    while (j > 0 && lp[j - 1] < s) lp[j] = lp[j - 1], tok[j] = tok[j - 1], --j;
    lp[j] = s, tok[j] = t;
  }
  for (int64_t j = 0; j < k; ++j) lp[j] -= lse;
}

// Committed rows of every sequence: keys and values (rows, hk, d), contiguous.
void check_past(const Layer& m, at::TensorList past_k, at::TensorList past_v, int64_t b) {
  TORCH_CHECK(static_cast<int64_t>(past_k.size()) == b && past_v.size() == past_k.size(),
              "draft kernels: ", b, " sequences but ", past_k.size(), " key and ", past_v.size(), " value caches");
  for (int64_t s = 0; s < b; ++s)
    TORCH_CHECK(past_k[s].is_contiguous() && past_v[s].is_contiguous() && past_k[s].dim() == 3 &&
                    past_k[s].size(1) == m.hk && past_k[s].size(2) == m.d && past_v[s].sizes() == past_k[s].sizes() &&
                    past_k[s].scalar_type() == at::kFloat,
                "draft kernels: sequence ", s, "'s committed keys and values must be contiguous float32 (rows, ", m.hk,
                ", ", m.d, ")");
}

void add_past(Context& ctx, const at::Tensor& k, const at::Tensor& v, int64_t row) {
  const float *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  for (int64_t t = 0; t < k.size(0); ++t) ctx.add(kp + t * row, vp + t * row);
}

std::vector<at::Tensor> draft_tree(at::TensorList weights, int64_t num_heads, int64_t num_kv_heads,
                                   double eps, const at::Tensor& root_out, const at::Tensor& roots_pos,
                                   at::TensorList past_k, at::TensorList past_v,
                                   int64_t top_k, int64_t depth) {
  const Draft m(weights, num_heads, num_kv_heads, eps);
  TORCH_CHECK(root_out.dim() == 2 && root_out.size(1) == m.h && root_out.scalar_type() == at::kFloat,
              "draft_tree: root outputs must be float32 (sequences, ", m.h, ")");
  const int64_t b = root_out.size(0), k = std::min(top_k, m.vocab), row = m.layer.hk * m.layer.d;
  TORCH_CHECK(k >= 1 && depth >= 1, "draft_tree: top_k and depth must be at least 1, got ", top_k, " and ", depth);
  TORCH_CHECK(roots_pos.dim() == 1 && roots_pos.size(0) == b, "draft_tree: one root position per sequence");
  check_past(m.layer, past_k, past_v, b);
  auto pos_root = roots_pos.to(at::kLong).contiguous();
  const int64_t* rp = pos_root.data_ptr<int64_t>();
  auto i64 = root_out.options().dtype(at::kLong);
  std::vector<at::Tensor> tokens, scores, parents, frontier;
  {  // depth 1: the root's top k
    auto logits = linear(root_out.contiguous(), m.lm_head, at::Tensor()).contiguous();
    auto lp = at::empty({b, k}, root_out.options());
    auto tok = at::empty({b, k}, i64);
    for (int64_t s = 0; s < b; ++s)
      top_log_probs(logits.data_ptr<float>() + s * m.vocab, m.vocab, k, lp.data_ptr<float>() + s * k,
                    tok.data_ptr<int64_t>() + s * k);
    tokens.push_back(tok), scores.push_back(lp), parents.push_back(at::full({b, k}, -1, i64));
    frontier.push_back(at::arange(k, i64).expand({b, k}).contiguous());
  }
  auto parent_out = root_out.contiguous().repeat_interleave(k, 0);  // (b * k, h): features feeding each frontier node
  std::vector<at::Tensor> drafted_k, drafted_v;                      // per depth: (b * k, hk, d) frontier rows
  std::vector<std::vector<std::pair<int64_t, int64_t>>> ancestors(b * k);  // (depth, row) drafted rows each node sees
  std::vector<int64_t> in_tok(b * k), in_pos(b * k);
  auto lp = at::empty({b * k, k}, root_out.options());
  for (int64_t dep = 1; dep < depth; ++dep) {
    const int64_t* prev_tok = tokens.back().data_ptr<int64_t>();
    const int64_t* prev_front = frontier.back().data_ptr<int64_t>();
    const int64_t width = tokens.back().size(1);
    for (int64_t s = 0; s < b; ++s)
      for (int64_t j = 0; j < k; ++j) {
        in_tok[s * k + j] = prev_tok[s * width + prev_front[s * k + j]];
        in_pos[s * k + j] = rp[s] + dep;
      }
    at::Tensor new_k, new_v;
    auto x = fuse(m, in_tok.data(), parent_out.data_ptr<float>(), b * k);
    auto out = layer(m.layer, x, in_pos.data(), new_k, new_v, true, [] {}, [&](int64_t i, Context& ctx) {
      add_past(ctx, past_k[i / k], past_v[i / k], row);
      for (const auto& [dd, r] : ancestors[i])
        ctx.add(drafted_k[dd].data_ptr<float>() + r * row, drafted_v[dd].data_ptr<float>() + r * row);
    });
    auto logits = linear(out, m.lm_head, at::Tensor()).contiguous();
    auto tok = at::empty({b, k * k}, i64), sc = at::empty({b, k * k}, root_out.options());
    auto par = at::empty({b, k * k}, i64), front = at::empty({b, k}, i64);
    float *lpp = lp.data_ptr<float>(), *scp = sc.data_ptr<float>();
    int64_t *tp = tok.data_ptr<int64_t>(), *pp = par.data_ptr<int64_t>(), *fp = front.data_ptr<int64_t>();
    const float* prev_sc = scores.back().data_ptr<float>();
    for (int64_t i = 0; i < b * k; ++i)
      top_log_probs(logits.data_ptr<float>() + i * m.vocab, m.vocab, k, lpp + i * k, tp + i * k);
    std::vector<float> best(k);
    for (int64_t s = 0; s < b; ++s) {
      for (int64_t j = 0; j < k; ++j) {  // child c of frontier slot j: candidate j * k + c
        const float parent_score = prev_sc[s * width + prev_front[s * k + j]];
        for (int64_t c = 0; c < k; ++c) {
          scp[s * k * k + j * k + c] = parent_score + lpp[(s * k + j) * k + c];
          pp[s * k * k + j * k + c] = prev_front[s * k + j];
        }
      }
      int64_t filled = 0;  // the new frontier: the top k candidates by score, the lower index first on ties
      for (int64_t c = 0; c < k * k; ++c) {
        const float v = scp[s * k * k + c];
        if (filled == k && v <= best[k - 1]) continue;
        int64_t j = filled < k ? filled++ : k - 1;
        while (j > 0 && best[j - 1] < v) best[j] = best[j - 1], fp[s * k + j] = fp[s * k + j - 1], --j;
        best[j] = v, fp[s * k + j] = c;
      }
    }
    // each new frontier node sees its parent's ancestors and its parent's row; takes its parent's output
    std::vector<std::vector<std::pair<int64_t, int64_t>>> next(b * k);
    auto next_out = at::empty_like(parent_out);
    for (int64_t s = 0; s < b; ++s)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t parent_row = s * k + fp[s * k + j] / k;
        next[s * k + j] = ancestors[parent_row];
        next[s * k + j].emplace_back(dep - 1, parent_row);
        std::copy_n(out.data_ptr<float>() + parent_row * m.h, m.h, next_out.data_ptr<float>() + (s * k + j) * m.h);
      }
    ancestors = std::move(next);
    parent_out = next_out;
    drafted_k.push_back(new_k), drafted_v.push_back(new_v);
    tokens.push_back(tok), scores.push_back(sc), parents.push_back(par), frontier.push_back(front);
  }
  std::vector<at::Tensor> result;
  for (auto* part : {&tokens, &scores, &parents, &frontier}) result.insert(result.end(), part->begin(), part->end());
  return result;
}

// The draft layer over `lengths` (>= 1) new rows per sequence (x (sum, h) at pos), after each
// sequence's committed rows: the output of each sequence's newest row (b, h), which attends its
// committed and all its new rows, and every new row's key and value (sum, hk, d).
std::vector<at::Tensor> rows_after(const Draft& m, const at::Tensor& x, const int64_t* pos, at::TensorList past_k,
                                   at::TensorList past_v, const std::vector<int64_t>& lengths) {
  const int64_t b = static_cast<int64_t>(lengths.size()), row = m.layer.hk * m.layer.d, n = x.size(0);
  std::vector<int64_t> seq_of(n), start_of(n), newest(b);
  for (int64_t s = 0, lo = 0; s < b; lo += lengths[s], ++s) {
    for (int64_t i = lo; i < lo + lengths[s]; ++i) seq_of[i] = s, start_of[i] = lo;
    newest[s] = lo + lengths[s] - 1;
  }
  at::Tensor new_k, new_v;
  const float *kp = nullptr, *vp = nullptr;
  auto out = layer(m.layer, x, pos, new_k, new_v, true,
                   [&] { kp = new_k.data_ptr<float>(), vp = new_v.data_ptr<float>(); },
                   [&](int64_t i, Context& ctx) {
                     add_past(ctx, past_k[seq_of[i]], past_v[seq_of[i]], row);
                     for (int64_t j = start_of[i]; j < i; ++j)  // causal among its new rows
                       ctx.add(kp + j * row, vp + j * row);
                   },
                   &newest);
  return {out, new_k, new_v};
}

std::vector<at::Tensor> draft_rows(at::TensorList weights, int64_t num_heads, int64_t num_kv_heads,
                                   double eps, const at::Tensor& x, const at::Tensor& positions,
                                   at::TensorList past_k, at::TensorList past_v,
                                   at::IntArrayRef lengths) {
  const Draft m(weights, num_heads, num_kv_heads, eps);
  const int64_t b = static_cast<int64_t>(lengths.size());
  check_past(m.layer, past_k, past_v, b);
  int64_t n = 0;
  for (const int64_t len : lengths) {
    TORCH_CHECK(len >= 1, "draft_rows: a sequence cannot have ", len, " new rows");
    n += len;
  }
  TORCH_CHECK(x.dim() == 2 && x.size(0) == n && x.size(1) == m.h && x.scalar_type() == at::kFloat,
              "draft_rows: x must be float32 (", n, " rows, ", m.h, "), got ", x.sizes());
  TORCH_CHECK(positions.dim() == 1 && positions.size(0) == n, "draft_rows: one position per row");
  auto pos = positions.to(at::kLong).contiguous();
  return rows_after(m, x.contiguous(), pos.data_ptr<int64_t>(), past_k, past_v, lengths.vec());
}

// `draft_rows` for text tokens, their rows fused here: each sequence's new token ids (all in order
// in `ids`), the target's features of the positions before them (rows, h), and the position of its
// first new token; the rows of one sequence are consecutive positions.
std::vector<at::Tensor> draft_catch_up(at::TensorList weights, int64_t num_heads, int64_t num_kv_heads, double eps,
                                       at::IntArrayRef ids, at::TensorList features, at::IntArrayRef first_pos,
                                       at::TensorList past_k, at::TensorList past_v) {
  const Draft m(weights, num_heads, num_kv_heads, eps);
  const int64_t b = static_cast<int64_t>(features.size());
  check_past(m.layer, past_k, past_v, b);
  TORCH_CHECK(static_cast<int64_t>(first_pos.size()) == b, "draft_catch_up: ", b, " sequences but ", first_pos.size(),
              " first positions");
  std::vector<int64_t> lengths, pos;
  for (int64_t s = 0; s < b; ++s) {
    TORCH_CHECK(features[s].dim() == 2 && features[s].size(1) == m.h && features[s].scalar_type() == at::kFloat,
                "draft_catch_up: sequence ", s, "'s features must be float32 (rows, ", m.h, "), got ", features[s].sizes());
    TORCH_CHECK(features[s].size(0) >= 1, "draft_catch_up: sequence ", s, " has no new rows");
    lengths.push_back(features[s].size(0));
    for (int64_t j = 0; j < lengths.back(); ++j) pos.push_back(first_pos[s] + j);
  }
  const int64_t n = static_cast<int64_t>(pos.size());
  TORCH_CHECK(static_cast<int64_t>(ids.size()) == n, "draft_catch_up: ", n, " feature rows but ", ids.size(), " token ids");
  auto feats = at::cat(features).contiguous();
  return rows_after(m, fuse(m, ids.data(), feats.data_ptr<float>(), n), pos.data(), past_k, past_v, lengths);
}

// The target's forward over one step of decode and draft-tree rows (engine/cpu_forward.py): the N
// rows' token ids and positions, the cache (layers, 2, blocks, block size, kv heads, head dim), each
// row's cache slot, and per sequence its block table, its rows (query_start, B + 1 offsets), its
// context length once this step's rows are written and the mask among its new rows ((n, n) bool;
// empty: causal). weights: the embedding, the final norm, the rotary inverse frequencies, then 12
// per layer. Returns the final hidden states (N, h), after the model's last norm.
at::Tensor decoder_forward(at::TensorList weights, int64_t num_layers, int64_t num_heads, int64_t num_kv_heads,
                           double eps, const at::Tensor& ids, const at::Tensor& positions, const at::Tensor& cache,
                           const at::Tensor& slots, const at::Tensor& tables, at::IntArrayRef query_start,
                           at::IntArrayRef context_lens, at::TensorList masks) {
  TORCH_CHECK(num_layers >= 1 && static_cast<int64_t>(weights.size()) == 3 + 12 * num_layers, "decoder_forward: expected ",
              3 + 12 * num_layers, " weight tensors for ", num_layers, " layers, got ", weights.size());
  check_float(weights, "decoder_forward");
  const at::Tensor &embed = weights[0], &final_norm = weights[1];
  const int64_t h = embed.size(1);
  std::vector<Layer> layers;
  for (int64_t l = 0; l < num_layers; ++l)
    layers.emplace_back(weights.slice(3 + 12 * l, 12), weights[2], h, num_heads, num_kv_heads, eps);
  const Layer& m = layers[0];
  const int64_t B = static_cast<int64_t>(context_lens.size()), N = ids.size(0), row = m.hk * m.d;
  TORCH_CHECK(ids.dim() == 1 && ids.scalar_type() == at::kLong && positions.sizes() == ids.sizes() &&
                  positions.scalar_type() == at::kLong && slots.sizes() == ids.sizes() && slots.scalar_type() == at::kLong,
              "decoder_forward: ids, positions and slots must be int64 (rows,)");
  TORCH_CHECK(static_cast<int64_t>(query_start.size()) == B + 1 && query_start[0] == 0 && query_start[B] == N &&
                  static_cast<int64_t>(masks.size()) == B,
              "decoder_forward: ", B, " sequences need ", B + 1, " row offsets from 0 to ", N, " and ", B, " masks");
  TORCH_CHECK(cache.dim() == 6 && cache.size(0) == num_layers && cache.size(1) == 2 && cache.size(4) == m.hk &&
                  cache.size(5) == m.d && cache.scalar_type() == at::kFloat && cache.is_contiguous(),
              "decoder_forward: cache must be contiguous float32 (", num_layers, ", 2, blocks, block size, ", m.hk, ", ", m.d,
              "), got ", cache.sizes());
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == B && tables.scalar_type() == at::kInt,
              "decoder_forward: tables must be int32 (", B, ", blocks)");
  const int64_t blocks = cache.size(2), block = cache.size(3), width = tables.size(1);
  auto tc = tables.contiguous();
  auto ids_c = ids.contiguous(), pos_c = positions.contiguous(), slots_c = slots.contiguous();
  const int32_t* tp = tc.data_ptr<int32_t>();
  const int64_t *idp = ids_c.data_ptr<int64_t>(), *sp = slots_c.data_ptr<int64_t>();
  std::vector<int64_t> seq_of(N);
  for (int64_t b = 0; b < B; ++b) {  // every slot read or written must be in the cache, every mask the right shape
    const int64_t n = query_start[b + 1] - query_start[b], ctx = context_lens[b];
    TORCH_CHECK(n >= 1 && ctx >= n && ctx <= width * block, "decoder_forward: sequence ", b, " has ", n,
                " rows and context length ", ctx, " (a table of ", width * block, ")");
    for (int64_t i = 0; i < (ctx + block - 1) / block; ++i)
      TORCH_CHECK(tp[b * width + i] >= 0 && tp[b * width + i] < blocks, "decoder_forward: sequence ", b, " lists block ",
                  tp[b * width + i], " of a cache of ", blocks);
    TORCH_CHECK(!masks[b].numel() || (masks[b].scalar_type() == at::kBool && masks[b].dim() == 2 && masks[b].size(0) == n &&
                                      masks[b].size(1) == n && masks[b].is_contiguous()),
                "decoder_forward: sequence ", b, "'s mask must be bool (", n, ", ", n, ")");
    for (int64_t i = query_start[b]; i < query_start[b + 1]; ++i) {
      TORCH_CHECK(sp[i] >= 0 && sp[i] < blocks * block, "decoder_forward: row ", i, " writes slot ", sp[i], " of ",
                  blocks * block);
      seq_of[i] = b;
    }
  }
  auto x = at::empty({N, h}, cache.options());
  for (int64_t i = 0; i < N; ++i) embed_row(embed, idp[i], x.data_ptr<float>() + i * h, "decoder_forward");
  float* base = cache.data_ptr<float>();
  const int64_t plane = blocks * block * row;  // floats of one layer's keys (or values)
  for (int64_t l = 0; l < num_layers; ++l) {
    float *kc = base + (2 * l) * plane, *vc = base + (2 * l + 1) * plane;
    at::Tensor new_k, new_v;
    x = layer(
        layers[l], x, pos_c.data_ptr<int64_t>(), new_k, new_v, false,
        [&] {
          for (int64_t i = 0; i < N; ++i) {
            std::copy_n(new_k.data_ptr<float>() + i * row, row, kc + sp[i] * row);
            std::copy_n(new_v.data_ptr<float>() + i * row, row, vc + sp[i] * row);
          }
        },
        [&](int64_t i, Context& ctx) {
          const int64_t b = seq_of[i], lo = query_start[b], n = query_start[b + 1] - lo, r = i - lo;
          const int64_t committed = context_lens[b] - n;
          for (int64_t t = 0; t < committed; ++t) {
            const int64_t slot = static_cast<int64_t>(tp[b * width + t / block]) * block + t % block;
            ctx.add(kc + slot * row, vc + slot * row);
          }
          const bool* mk = masks[b].numel() ? masks[b].data_ptr<bool>() + r * n : nullptr;
          for (int64_t j = 0; j < n; ++j)
            if (mk ? mk[j] : j <= r) ctx.add(kc + sp[lo + j] * row, vc + sp[lo + j] * row);
        });
  }
  float* xp = x.data_ptr<float>();
  for (int64_t i = 0; i < N; ++i) rms_norm(xp + i * h, final_norm.data_ptr<float>(), xp + i * h, h, m.eps);
  return x;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(reasonrl_cpu, m) {
  m.def("draft_tree(Tensor[] weights, int num_heads, int num_kv_heads, float eps, Tensor root_out, Tensor roots_pos, "
        "Tensor[] past_k, Tensor[] past_v, int top_k, int depth) -> Tensor[]");
  m.def("draft_rows(Tensor[] weights, int num_heads, int num_kv_heads, float eps, Tensor x, Tensor positions, "
        "Tensor[] past_k, Tensor[] past_v, int[] lengths) -> Tensor[]");
  m.def("draft_catch_up(Tensor[] weights, int num_heads, int num_kv_heads, float eps, int[] ids, Tensor[] features, "
        "int[] first_pos, Tensor[] past_k, Tensor[] past_v) -> Tensor[]");
  m.def("decoder_forward(Tensor[] weights, int num_layers, int num_heads, int num_kv_heads, float eps, Tensor ids, "
        "Tensor positions, Tensor cache, Tensor slots, Tensor tables, int[] query_start, int[] context_lens, "
        "Tensor[] masks) -> Tensor");
}

TORCH_LIBRARY_IMPL(reasonrl_cpu, CPU, m) {
  m.impl("draft_tree", &draft_tree);
  m.impl("draft_rows", &draft_rows);
  m.impl("draft_catch_up", &draft_catch_up);
  m.impl("decoder_forward", &decoder_forward);
}
