// CPU kernels of contrastive_loss (semantics: contrastive_loss_reference in
// pyengine/ops/contrastive_loss.py).
//
// The reference materialises the [V*N, V*N + M] logits (50 MB at V*N = 2048, M = 4096) and
// several masks of that size. Here one task takes a tile of kTile anchor rows: a register-
// blocked micro-kernel (kTile vector accumulators, one candidate load shared by all of them)
// fills a tile-sized similarity buffer from the L2-normalised candidates stored transposed,
// ct[D, C]; a two-pass log-sum-exp (max, then sum of exp, so nothing overflows) reduces each
// row with vectorised exp; only per-anchor numbers leave the tile. No BLAS call runs inside
// the parallel region: MKL there would start nested threads of its own.
//
// Backward: with p_ij = exp(s_ij - lse_i) and w_i = grad[i % N] / V, row k of z gets
//   dL/dzn_k = 1/T * sum_j (w_k (p_kj - pos_kj/(V-1)) + w_j (p_jk - pos_jk/(V-1))) zn_j
//            + 1/T * sum_b w_k p_kb bank_b,
// its terms as anchor and as candidate of every other anchor. The candidate sets are
// symmetric and s_jk = s_kj, so a tile of rows rebuilds its similarities, turns them into
// these coefficients in place and contracts them with ct: no scatter into other rows, no
// atomics, deterministic. Only the log-sum-exps of all anchors are needed first.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "capability.h"  // last but the vector headers: what follows may compile for AVX2

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace pyengine::ops::CPU_CAPABILITY {

namespace {

using at::vec::Vectorized;

constexpr double kNormEps = 1e-12;  // F.normalize's clamp
constexpr int64_t kTile = 8;        // anchor rows per task: their 8 accumulators fit the vector registers

// Row r of a tile buffer holds anchor i0 + r's similarities / T: `head` explicit z rows (its
// V-1 positives when batch_negatives is off) followed by the candidates [begin, C) of
// cat(z, bank) (all of z then the bank with batch_negatives, else the bank alone).
template <typename acc_t>
struct Problem {
  using Vec = Vectorized<acc_t>;
  const acc_t* ct;  // [D, C]: column c is the L2-normalised row c of cat(z, bank)
  int64_t M, N, V, D, C, begin, head;
  acc_t inv_t;
  bool batch_negatives;

  int64_t length() const { return head + C - begin; }
  int64_t positive(int64_t i, int64_t u) const { return ((i / N + 1 + u) % V) * N + i % N; }
  int64_t positive_slot(int64_t i, int64_t u) const { return batch_negatives ? positive(i, u) : u; }
  acc_t dot(int64_t i, int64_t j) const {
    acc_t s = 0;
    for (int64_t d = 0; d < D; ++d) s += ct[d * C + i] * ct[d * C + j];
    return s;
  }

  // a[kTile, D] <- zn of anchors [i0, i0 + n) (zero rows past n); buf[kTile, length()] <- their
  // similarities / T, each anchor's own slot -inf. Rows past n hold garbage.
  void similarities(int64_t i0, int64_t n, acc_t* a, acc_t* buf) const {
    const int64_t L = length();
    for (int64_t r = 0; r < kTile; ++r) {
      for (int64_t d = 0; d < D; ++d) a[r * D + d] = r < n ? ct[d * C + i0 + r] : acc_t(0);
    }
    for (int64_t j = begin; j < C; j += Vec::size()) {
      const int64_t w = std::min<int64_t>(Vec::size(), C - j);
      Vec acc[kTile];
      for (auto& v : acc) v = Vec(0);
      for (int64_t d = 0; d < D; ++d) {
        const Vec c = Vec::loadu(ct + d * C + j, w);
        for (int64_t r = 0; r < kTile; ++r) acc[r] = at::vec::fmadd(Vec(a[r * D + d]), c, acc[r]);
      }
      for (int64_t r = 0; r < n; ++r) (acc[r] * Vec(inv_t)).store(buf + r * L + head + j - begin, w);
    }
    for (int64_t r = 0; r < n; ++r) {
      const int64_t i = i0 + r;
      for (int64_t u = 0; u < head; ++u) buf[r * L + u] = dot(i, positive(i, u)) * inv_t;
      if (batch_negatives) buf[r * L + i] = -std::numeric_limits<acc_t>::infinity();
    }
  }

  // out[r * D + d] = sum over slots of coef[r, slot] * ct[d, column(slot)], for rows [0, n).
  void contract(int64_t i0, int64_t n, const acc_t* coef, acc_t* out) const {
    const int64_t L = length(), tail = C - begin;
    for (int64_t d = 0; d < D; ++d) {
      const acc_t* row = ct + d * C + begin;
      Vec acc[kTile];
      for (auto& v : acc) v = Vec(0);
      for (int64_t j = 0; j < tail; j += Vec::size()) {
        const int64_t w = std::min<int64_t>(Vec::size(), tail - j);
        const Vec c = Vec::loadu(row + j, w);
        for (int64_t r = 0; r < kTile; ++r) {
          acc[r] = at::vec::fmadd(Vec::loadu(coef + r * L + head + j, w), c, acc[r]);
        }
      }
      for (int64_t r = 0; r < n; ++r) {
        acc_t sum = at::vec::vec_reduce_all<acc_t>([](Vec x, Vec y) { return x + y; }, acc[r]);
        for (int64_t u = 0; u < head; ++u) sum += coef[r * L + u] * ct[d * C + positive(i0 + r, u)];
        out[r * D + d] = sum;
      }
    }
  }

  acc_t log_sum_exp(const acc_t* s) const {
    const int64_t n = length();
    const acc_t mx = at::vec::reduce_all<acc_t>([](Vec x, Vec y) { return at::vec::maximum(x, y); }, s, n);
    const acc_t sum = at::vec::map_reduce_all<acc_t>([mx](Vec x) { return (x - Vec(mx)).exp(); },
                                                     [](Vec x, Vec y) { return x + y; }, s, n);
    return mx + std::log(sum);
  }

  acc_t positive_mean(int64_t i, const acc_t* s) const {
    acc_t sum = 0;
    for (int64_t u = 0; u < V - 1; ++u) sum += s[positive_slot(i, u)];
    return sum / static_cast<acc_t>(V - 1);
  }

  // Runs fn(i0, n, a, buf, scratch) over the tiles of anchors in parallel, with per-task
  // buffers a and scratch [kTile, D] and buf [kTile, length()].
  template <typename Fn>
  void for_each_tile(const Fn& fn) const {
    at::parallel_for(0, (M + kTile - 1) / kTile, 1, [&](int64_t t0, int64_t t1) {
      std::vector<acc_t> a(kTile * D), buf(kTile * length()), scratch(kTile * D);
      for (int64_t t = t0; t < t1; ++t) {
        fn(t * kTile, std::min(kTile, M - t * kTile), a.data(), buf.data(), scratch.data());
      }
    });
  }
};

template <typename scalar_t, typename acc_t>
Problem<acc_t> prepare(const at::Tensor& z, const std::optional<at::Tensor>& bank, int64_t n_views,
                       double temperature, bool batch_negatives, at::Tensor& ct, at::Tensor& norms) {
  const int64_t M = z.size(0), D = z.size(1);
  const auto options = z.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const at::Tensor b = bank.has_value() ? bank->to(options.dtype()).contiguous() : at::empty({0, D}, options);
  const int64_t C = M + b.size(0);
  ct = at::empty({D, C}, options);
  norms = at::empty({M}, options);
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  const acc_t* bp = b.const_data_ptr<acc_t>();
  acc_t* cp = ct.data_ptr<acc_t>();
  acc_t* np = norms.data_ptr<acc_t>();
  at::parallel_for(0, C, std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const auto value = [&](int64_t d) -> acc_t {
        return r < M ? static_cast<acc_t>(zp[r * D + d]) : bp[(r - M) * D + d];
      };
      acc_t ss = 0;
      for (int64_t d = 0; d < D; ++d) ss += value(d) * value(d);
      const acc_t norm = std::sqrt(ss), denom = std::max(norm, static_cast<acc_t>(kNormEps));
      for (int64_t d = 0; d < D; ++d) cp[d * C + r] = value(d) / denom;
      if (r < M) np[r] = norm;
    }
  });
  return {cp, M, M / n_views, n_views, D, C, batch_negatives ? 0 : M, batch_negatives ? 0 : n_views - 1,
          static_cast<acc_t>(1.0 / temperature), batch_negatives};
}

// lse[i] and, if asked, loss[i] (the anchor's loss) for every anchor row.
template <typename acc_t>
void anchor_terms(const Problem<acc_t>& p, acc_t* lse, acc_t* loss) {
  p.for_each_tile([&](int64_t i0, int64_t n, acc_t* a, acc_t* buf, acc_t*) {
    p.similarities(i0, n, a, buf);
    for (int64_t r = 0; r < n; ++r) {
      const acc_t* s = buf + r * p.length();
      lse[i0 + r] = p.log_sum_exp(s);
      if (loss != nullptr) loss[i0 + r] = lse[i0 + r] - p.positive_mean(i0 + r, s);
    }
  });
}

at::Tensor contrastive_loss_cpu(const at::Tensor& z_in, int64_t n_views, double temperature,
                                const std::optional<at::Tensor>& bank, bool batch_negatives) {
  detail::check_contrastive_loss("contrastive_loss", z_in, n_views, temperature, bank);
  const at::Tensor z = z_in.contiguous();
  const int64_t M = z.size(0), N = M / n_views;
  const auto acc_type = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({N}, z.options().dtype(acc_type));
  if (M == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "contrastive_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor ct, norms;
    const auto p = prepare<scalar_t, acc_t>(z, bank, n_views, temperature, batch_negatives, ct, norms);
    std::vector<acc_t> lse(M), loss(M);
    anchor_terms(p, lse.data(), loss.data());
    acc_t* o = out.data_ptr<acc_t>();
    for (int64_t n = 0; n < N; ++n) {
      acc_t sum = 0;
      for (int64_t v = 0; v < n_views; ++v) sum += loss[v * N + n];
      o[n] = sum / static_cast<acc_t>(n_views);
    }
  });
  return out;
}

at::Tensor contrastive_loss_backward_cpu(const at::Tensor& grad_in, const at::Tensor& z_in, int64_t n_views,
                                         double temperature, const std::optional<at::Tensor>& bank,
                                         bool batch_negatives) {
  detail::check_contrastive_loss_backward(grad_in, z_in, n_views, temperature, bank);
  const at::Tensor z = z_in.contiguous();
  const int64_t M = z.size(0), N = M / n_views, D = z.size(1);
  at::Tensor grad_z = at::empty({M, D}, z.options());
  if (M == 0) return grad_z;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "contrastive_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = Vectorized<acc_t>;
    at::Tensor ct, norms;
    const auto p = prepare<scalar_t, acc_t>(z, bank, n_views, temperature, batch_negatives, ct, norms);
    std::vector<acc_t> lse(M), w(M);
    anchor_terms<acc_t>(p, lse.data(), nullptr);
    const at::Tensor g = grad_in.to(ct.scalar_type()).contiguous();
    for (int64_t j = 0; j < M; ++j) w[j] = g.const_data_ptr<acc_t>()[j % N] / static_cast<acc_t>(n_views);
    const acc_t* np = norms.const_data_ptr<acc_t>();
    scalar_t* out = grad_z.data_ptr<scalar_t>();
    const int64_t L = p.length(), in_batch = M - p.begin, K = p.C - M;
    const acc_t pos_scale = p.inv_t / static_cast<acc_t>(n_views - 1);
    p.for_each_tile([&](int64_t k0, int64_t n, acc_t* a, acc_t* buf, acc_t* gzn) {
      p.similarities(k0, n, a, buf);
      for (int64_t r = 0; r < n; ++r) {
        // Similarities become the coefficients of dL/dzn_k in place; the self slot holds -inf, so exp gives 0.
        const int64_t k = k0 + r;
        acc_t* c = buf + r * L;
        const Vec wk(w[k]), lk(lse[k]), inv_t(p.inv_t);
        for (int64_t u = 0; u < p.head; ++u) {
          const int64_t j = p.positive(k, u);
          c[u] = (w[k] * std::exp(c[u] - lse[k]) + w[j] * std::exp(c[u] - lse[j])) * p.inv_t;
        }
        at::vec::map3([=](Vec s, Vec wj, Vec lj) { return (wk * (s - lk).exp() + wj * (s - lj).exp()) * inv_t; },
                      c + p.head, c + p.head, w.data() + p.begin, lse.data() + p.begin, in_batch);
        at::vec::map([=](Vec s) { return wk * (s - lk).exp() * inv_t; }, c + p.head + in_batch,
                     c + p.head + in_batch, K);
        for (int64_t u = 0; u < n_views - 1; ++u) {
          c[p.positive_slot(k, u)] -= (w[k] + w[p.positive(k, u)]) * pos_scale;
        }
      }
      p.contract(k0, n, buf, gzn);
      for (int64_t r = 0; r < n; ++r) {
        const int64_t k = k0 + r;
        const acc_t* gk = gzn + r * D;
        const acc_t* zn = a + r * D;
        // Through zn = z / max(|z|, eps): the clamp passes the gradient only where |z| >= eps.
        if (np[k] >= static_cast<acc_t>(kNormEps)) {
          acc_t dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += zn[d] * gk[d];
          for (int64_t d = 0; d < D; ++d) out[k * D + d] = static_cast<scalar_t>((gk[d] - zn[d] * dot) / np[k]);
        } else {
          for (int64_t d = 0; d < D; ++d) out[k * D + d] = static_cast<scalar_t>(gk[d] / acc_t(kNormEps));
        }
      }
    });
  });
  return grad_z;
}

}  // namespace

// This build's kernels; the baseline build registers those of the build that serves the process.
void register_contrastive_loss(torch::Library& m) {
  m.impl("contrastive_loss", &contrastive_loss_cpu);
  m.impl("_contrastive_loss_backward", &contrastive_loss_backward_cpu);
}

}  // namespace pyengine::ops::CPU_CAPABILITY

PYENGINE_REGISTER_CPU_KERNELS(register_contrastive_loss)
