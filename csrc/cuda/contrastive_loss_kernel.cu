// CUDA kernels of contrastive_loss (semantics: contrastive_loss_reference in
// pyengine/ops/contrastive_loss.py); the math is that of csrc/cpu/contrastive_loss_kernel.cpp.
//
// normalize_kernel writes the L2-normalised rows of cat(z, bank) twice: row-major [C, D] and
// transposed [D, C], so that both a block's similarity loop (threads over candidates) and its
// gradient accumulation (threads over features) read global memory coalesced.
// lse_kernel: one block per anchor row, each thread an online log-sum-exp over its strided
// share of the candidates, merged by a block reduction: nothing of size [V*N, C] is stored.
// grad_kernel: one block per row k builds the coefficients of dL/dzn_k (its terms as anchor
// and as every other anchor's candidate, see the CPU file) chunk by chunk in shared memory,
// and each thread group accumulates them over its own features: no atomics, deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAMathCompat.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <limits>

#include "../checks.h"

namespace pyengine::ops {

namespace {

namespace compat = c10::cuda::compat;

constexpr int kThreads = 256;
constexpr double kNormEps = 1e-12;  // F.normalize's clamp
constexpr size_t kMaxSharedBytes = 40 * 1024;  // dynamic; the 48 KB default leaves room for the reductions

// Candidates of anchor i, in slot order: `head` explicit z rows (its V-1 positives when
// batch_negatives is off), then the rows [begin, C) of cat(z, bank).
struct Problem {
  int64_t M, N, V, D, C, begin, head;
  bool batch_negatives;

  __device__ int64_t length() const { return head + C - begin; }
  __device__ int64_t column(int64_t i, int64_t e) const {
    return e < head ? ((i / N + 1 + e) % V) * N + i % N : begin + e - head;
  }
  __device__ bool is_positive(int64_t i, int64_t c) const { return c < M && c != i && c % N == i % N; }
};

template <typename acc_t>
struct LseState {
  acc_t max, sum, positives;
};

// Merges two online log-sum-exp states (and their sums of positive similarities).
template <typename acc_t>
struct MergeLse {
  __device__ LseState<acc_t> operator()(const LseState<acc_t>& x, const LseState<acc_t>& y) const {
    const acc_t m = compat::max(x.max, y.max);
    if (m == -std::numeric_limits<acc_t>::infinity()) return {m, acc_t(0), x.positives + y.positives};
    return {m, x.sum * compat::exp(x.max - m) + y.sum * compat::exp(y.max - m), x.positives + y.positives};
  }
};

template <typename scalar_t, typename acc_t>
__global__ void normalize_kernel(const scalar_t* z, const acc_t* bank, Problem p, acc_t* rows, acc_t* cols,
                                 acc_t* norms) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= p.C) return;
  const auto value = [&](int64_t d) -> acc_t {
    return r < p.M ? static_cast<acc_t>(z[r * p.D + d]) : bank[(r - p.M) * p.D + d];
  };
  acc_t ss = 0;
  for (int64_t d = 0; d < p.D; ++d) ss += value(d) * value(d);
  const acc_t norm = compat::sqrt(ss), denom = compat::max(norm, static_cast<acc_t>(kNormEps));
  for (int64_t d = 0; d < p.D; ++d) {
    const acc_t v = value(d) / denom;
    rows[r * p.D + d] = v;
    cols[d * p.C + r] = v;
  }
  if (r < p.M) norms[r] = norm;
}

// Similarity / T of the anchor a (zn_i, in shared memory) and candidate row c.
template <typename acc_t>
__device__ acc_t similarity(const acc_t* cols, const Problem& p, const acc_t* a, int64_t c, acc_t inv_t) {
  acc_t s = 0;
  for (int64_t d = 0; d < p.D; ++d) s += a[d] * cols[d * p.C + c];
  return s * inv_t;
}

template <typename acc_t>
__device__ void load_anchor(const acc_t* cols, const Problem& p, int64_t i, acc_t* a) {
  for (int64_t d = threadIdx.x; d < p.D; d += blockDim.x) a[d] = cols[d * p.C + i];
  __syncthreads();
}

// lse[i] and, if loss is given, the anchor's loss lse_i - mean of its positives' similarities.
template <typename acc_t>
__global__ void lse_kernel(const acc_t* cols, Problem p, acc_t inv_t, acc_t* lse, acc_t* loss) {
  extern __shared__ __align__(sizeof(double)) unsigned char smem[];
  acc_t* a = reinterpret_cast<acc_t*>(smem);
  using Reduce = cub::BlockReduce<LseState<acc_t>, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t i = blockIdx.x;
  load_anchor(cols, p, i, a);
  LseState<acc_t> st{-std::numeric_limits<acc_t>::infinity(), acc_t(0), acc_t(0)};
  for (int64_t e = threadIdx.x; e < p.length(); e += kThreads) {
    const int64_t c = p.column(i, e);
    if (c == i) continue;
    const acc_t s = similarity(cols, p, a, c, inv_t);
    if (s > st.max) {
      st.sum = st.sum * compat::exp(st.max - s) + acc_t(1);
      st.max = s;
    } else {
      st.sum += compat::exp(s - st.max);
    }
    if (p.is_positive(i, c)) st.positives += s;
  }
  st = Reduce(tmp).Reduce(st, MergeLse<acc_t>());
  if (threadIdx.x == 0) {
    lse[i] = st.max + compat::log(st.sum);
    if (loss != nullptr) loss[i] = lse[i] - st.positives / static_cast<acc_t>(p.V - 1);
  }
}

template <typename acc_t>
__global__ void view_mean_kernel(const acc_t* loss, int64_t N, int64_t V, acc_t* out) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  acc_t sum = 0;
  for (int64_t v = 0; v < V; ++v) sum += loss[v * N + n];
  out[n] = sum / static_cast<acc_t>(V);
}

// Feature groups of the accumulation: D <= kThreads gives kThreads / D groups of D threads.
__host__ __device__ inline int64_t group_width(int64_t D) { return D < kThreads ? (D > 0 ? D : 1) : kThreads; }
__host__ __device__ inline int64_t groups(int64_t D) { return kThreads / group_width(D); }

template <typename acc_t>
size_t grad_shared_bytes(int64_t D) {
  return (2 * D + groups(D) * D + kThreads) * sizeof(acc_t) + kThreads * sizeof(int64_t);
}

template <typename scalar_t, typename acc_t>
__global__ void grad_kernel(const acc_t* rows, const acc_t* cols, const acc_t* norms, const acc_t* lse,
                            const acc_t* grad, Problem p, acc_t inv_t, scalar_t* grad_z) {
  extern __shared__ __align__(sizeof(double)) unsigned char smem[];
  const int64_t D = p.D, width = group_width(D), G = groups(D);
  int64_t* column = reinterpret_cast<int64_t*>(smem);  // [kThreads]: this chunk's candidate rows
  acc_t* coef = reinterpret_cast<acc_t*>(column + kThreads);  // [kThreads]: and their coefficients
  acc_t* a = coef + kThreads;
  acc_t* gzn = a + D;
  acc_t* partial = gzn + D;  // [G, D]: group g's sums, each entry written by one thread only
  using Reduce = cub::BlockReduce<acc_t, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ acc_t dot;

  const int64_t k = blockIdx.x, t = threadIdx.x, g = t / width, lane = t % width;
  for (int64_t q = t; q < G * D; q += kThreads) partial[q] = 0;
  load_anchor(cols, p, k, a);
  const acc_t wk = grad[k % p.N] / static_cast<acc_t>(p.V), lk = lse[k];
  const acc_t pos_scale = inv_t / static_cast<acc_t>(p.V - 1);
  const int64_t L = p.length();
  for (int64_t e0 = 0; e0 < L; e0 += kThreads) {
    if (e0 + t < L) {
      const int64_t c = p.column(k, e0 + t);
      const acc_t s = similarity(cols, p, a, c, inv_t);
      acc_t v = 0;
      if (c >= p.M) {
        v = wk * compat::exp(s - lk) * inv_t;
      } else if (c != k) {
        const acc_t wc = grad[c % p.N] / static_cast<acc_t>(p.V);
        v = (wk * compat::exp(s - lk) + wc * compat::exp(s - lse[c])) * inv_t;
        if (p.is_positive(k, c)) v -= (wk + wc) * pos_scale;
      }
      coef[t] = v;
      column[t] = c;
    }
    __syncthreads();
    const int64_t n = L - e0 < kThreads ? L - e0 : kThreads;
    if (g < G) {
      for (int64_t j = g; j < n; j += G) {
        const acc_t cj = coef[j];
        const acc_t* row = rows + column[j] * D;
        for (int64_t d = lane; d < D; d += width) partial[g * D + d] += cj * row[d];
      }
    }
    __syncthreads();
  }
  acc_t local = 0;
  for (int64_t d = t; d < D; d += kThreads) {
    acc_t sum = 0;
    for (int64_t q = 0; q < G; ++q) sum += partial[q * D + d];
    gzn[d] = sum;
    local += a[d] * sum;
  }
  local = Reduce(tmp).Sum(local);
  if (t == 0) dot = local;
  __syncthreads();
  // Through zn = z / max(|z|, eps): the clamp passes the gradient only where |z| >= eps.
  const acc_t norm = norms[k];
  for (int64_t d = t; d < D; d += kThreads) {
    const acc_t v = norm >= static_cast<acc_t>(kNormEps) ? (gzn[d] - a[d] * dot) / norm
                                                         : gzn[d] / static_cast<acc_t>(kNormEps);
    grad_z[k * D + d] = static_cast<scalar_t>(v);
  }
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Normalised rows [C, D], their transpose [D, C] and z's row norms [M], in acc_t.
template <typename scalar_t, typename acc_t>
Problem prepare(const at::Tensor& z, const std::optional<at::Tensor>& bank, int64_t n_views, bool batch_negatives,
                at::Tensor& rows, at::Tensor& cols, at::Tensor& norms) {
  const int64_t M = z.size(0), D = z.size(1);
  const auto options = z.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const at::Tensor b = bank.has_value() ? bank->to(options.dtype()).contiguous() : at::empty({0, D}, options);
  const int64_t C = M + b.size(0);
  rows = at::empty({C, D}, options);
  cols = at::empty({D, C}, options);
  norms = at::empty({M}, options);
  const Problem p{M, M / n_views, n_views, D, C, batch_negatives ? 0 : M, batch_negatives ? 0 : n_views - 1,
                  batch_negatives};
  normalize_kernel<scalar_t, acc_t><<<blocks_for(C), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      z.const_data_ptr<scalar_t>(), b.const_data_ptr<acc_t>(), p, rows.data_ptr<acc_t>(), cols.data_ptr<acc_t>(),
      norms.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return p;
}

at::Tensor contrastive_loss_cuda(const at::Tensor& z_in, int64_t n_views, double temperature,
                                 const std::optional<at::Tensor>& bank, bool batch_negatives) {
  detail::check_contrastive_loss("contrastive_loss", z_in, n_views, temperature, bank);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = z_in.contiguous();
  const int64_t M = z.size(0), N = M / n_views;
  const auto acc_type = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({N}, z.options().dtype(acc_type));
  if (M == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "contrastive_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor rows, cols, norms;
    const Problem p = prepare<scalar_t, acc_t>(z, bank, n_views, batch_negatives, rows, cols, norms);
    TORCH_CHECK(p.D * sizeof(acc_t) <= kMaxSharedBytes, "contrastive_loss: z's feature size D = ", p.D,
                " is too large for the CUDA kernel");
    at::Tensor lse = at::empty({M}, rows.options()), loss = at::empty({M}, rows.options());
    lse_kernel<acc_t><<<static_cast<unsigned>(M), kThreads, p.D * sizeof(acc_t), stream>>>(
        cols.const_data_ptr<acc_t>(), p, static_cast<acc_t>(1.0 / temperature), lse.data_ptr<acc_t>(),
        loss.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    view_mean_kernel<acc_t><<<blocks_for(N), kThreads, 0, stream>>>(loss.const_data_ptr<acc_t>(), N, n_views,
                                                                    out.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor contrastive_loss_backward_cuda(const at::Tensor& grad_in, const at::Tensor& z_in, int64_t n_views,
                                          double temperature, const std::optional<at::Tensor>& bank,
                                          bool batch_negatives) {
  detail::check_contrastive_loss_backward(grad_in, z_in, n_views, temperature, bank);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = z_in.contiguous();
  const int64_t M = z.size(0);
  at::Tensor grad_z = at::empty(z.sizes(), z.options());
  if (M == 0) return grad_z;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "contrastive_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor rows, cols, norms;
    const Problem p = prepare<scalar_t, acc_t>(z, bank, n_views, batch_negatives, rows, cols, norms);
    const size_t shared = grad_shared_bytes<acc_t>(p.D);
    TORCH_CHECK(shared <= kMaxSharedBytes, "_contrastive_loss_backward: z's feature size D = ", p.D,
                " is too large for the CUDA kernel");
    const acc_t inv_t = static_cast<acc_t>(1.0 / temperature);
    at::Tensor lse = at::empty({M}, rows.options());
    lse_kernel<acc_t><<<static_cast<unsigned>(M), kThreads, p.D * sizeof(acc_t), stream>>>(
        cols.const_data_ptr<acc_t>(), p, inv_t, lse.data_ptr<acc_t>(), nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor grad = grad_in.to(rows.scalar_type()).contiguous();
    grad_kernel<scalar_t, acc_t><<<static_cast<unsigned>(M), kThreads, shared, stream>>>(
        rows.const_data_ptr<acc_t>(), cols.const_data_ptr<acc_t>(), norms.const_data_ptr<acc_t>(),
        lse.const_data_ptr<acc_t>(), grad.const_data_ptr<acc_t>(), p, inv_t, grad_z.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_z;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyengine, CUDA, m) {
  m.impl("contrastive_loss", &contrastive_loss_cuda);
  m.impl("_contrastive_loss_backward", &contrastive_loss_backward_cuda);
}

}  // namespace pyengine::ops
