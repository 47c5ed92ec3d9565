// CUDA kernels of projection_step (semantics: projection_step_reference in
// pyengine/ops/projection_step.py) and of its backward.
//
// L-inf is elementwise (grid-stride loop over the shared math of projection_step_math.h).
// L2 needs two per-image norms, |grad| and then |x - a*grad/|grad| - x0|, before any output
// can be written: one block per image reduces them in turn and then writes, so the image is
// read from DRAM once (the later passes hit L1/L2) and the sums are deterministic (no atomics).
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
#include <tuple>

#include "../checks.h"
#include "../projection_step_math.h"

namespace pyengine::ops {

namespace {

using detail::LinfStep;
using detail::Norm;
namespace compat = c10::cuda::compat;

constexpr int kThreads = 256;
constexpr double kNormEps = 1e-12;  // the reference's clamp_min on per-image norms

unsigned elementwise_blocks(int64_t numel) {
  constexpr int64_t kMaxBlocks = 1 << 16;  // the grid-stride loop covers the rest
  const int64_t blocks = (numel + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// Sum over the block, returned to every thread.
template <typename T>
__device__ T block_sum(T v) {
  using Reduce = cub::BlockReduce<T, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ T result;
  v = Reduce(tmp).Sum(v);
  if (threadIdx.x == 0) result = v;
  __syncthreads();
  v = result;
  __syncthreads();  // tmp and result are reused by the next call
  return v;
}

template <typename scalar_t>
__global__ void linf_forward_kernel(const scalar_t* x, const scalar_t* g, const scalar_t* x0, scalar_t* out,
                                    int64_t numel, LinfStep<scalar_t> step) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    out[i] = step(x[i], g[i], x0[i]);
  }
}

template <typename scalar_t>
__global__ void linf_backward_kernel(const scalar_t* go, const scalar_t* x, const scalar_t* g, const scalar_t* x0,
                                     scalar_t* gx, scalar_t* gx0, int64_t numel, LinfStep<scalar_t> step) {
  using op_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    op_t grad_x, grad_x0;
    step.backward(go[i], x[i], g[i], x0[i], grad_x, grad_x0);
    gx[i] = static_cast<scalar_t>(grad_x);
    gx0[i] = static_cast<scalar_t>(grad_x0);
  }
}

// One image's L2 step terms: delta = x - a*g/|g| - x0 and the norms behind its scale.
template <typename scalar_t>
struct L2Image {
  using op_t = at::opmath_type<scalar_t>;
  const scalar_t *x, *g, *x0;
  int64_t per;
  op_t a, grad_norm, raw_delta_norm, delta_norm;

  __device__ L2Image(const scalar_t* x_, const scalar_t* g_, const scalar_t* x0_, int64_t per_, op_t a_)
      : x(x_ + blockIdx.x * per_), g(g_ + blockIdx.x * per_), x0(x0_ + blockIdx.x * per_), per(per_), a(a_) {
    op_t gg = 0, dd = 0;
    for (int64_t i = threadIdx.x; i < per; i += kThreads) gg += static_cast<op_t>(g[i]) * static_cast<op_t>(g[i]);
    grad_norm = compat::max(compat::sqrt(block_sum(gg)), static_cast<op_t>(kNormEps));
    for (int64_t i = threadIdx.x; i < per; i += kThreads) dd += delta(i) * delta(i);
    raw_delta_norm = compat::sqrt(block_sum(dd));
    delta_norm = compat::max(raw_delta_norm, static_cast<op_t>(kNormEps));
  }
  __device__ op_t delta(int64_t i) const {
    return static_cast<op_t>(x[i]) - a * static_cast<op_t>(g[i]) / grad_norm - static_cast<op_t>(x0[i]);
  }
};

template <typename scalar_t>
__global__ void l2_forward_kernel(const scalar_t* x, const scalar_t* g, const scalar_t* x0, scalar_t* out,
                                  int64_t per, double step_size, double eps) {
  using op_t = at::opmath_type<scalar_t>;
  const L2Image<scalar_t> img(x, g, x0, per, static_cast<op_t>(step_size));
  const op_t scale = compat::min(static_cast<op_t>(eps) / img.delta_norm, op_t(1));
  scalar_t* o = out + blockIdx.x * per;
  for (int64_t i = threadIdx.x; i < per; i += kThreads) {
    const op_t y = static_cast<op_t>(img.x0[i]) + img.delta(i) * scale;
    o[i] = static_cast<scalar_t>(detail::min_nan(detail::max_nan(y, op_t(0)), op_t(1)));
  }
}

template <typename scalar_t>
__global__ void l2_backward_kernel(const scalar_t* go, const scalar_t* x, const scalar_t* g, const scalar_t* x0,
                                   scalar_t* gx, scalar_t* gx0, int64_t per, double step_size, double eps) {
  using op_t = at::opmath_type<scalar_t>;
  const L2Image<scalar_t> img(x, g, x0, per, static_cast<op_t>(step_size));
  const op_t e = static_cast<op_t>(eps), ratio = e / img.delta_norm, scale = compat::min(ratio, op_t(1));
  const int64_t off = blockIdx.x * per;
  // Gradient wrt delta, masked by clamp(0, 1) on the output.
  const auto passed = [&](int64_t i) {
    const op_t y = static_cast<op_t>(img.x0[i]) + img.delta(i) * scale;
    return (y >= op_t(0) && y <= op_t(1)) ? static_cast<op_t>(go[off + i]) : op_t(0);
  };
  op_t dot = 0;
  for (int64_t i = threadIdx.x; i < per; i += kThreads) dot += passed(i) * img.delta(i);
  dot = block_sum(dot);
  // d scale / d delta = -eps / nd^2 * delta / |delta|, where neither clamp is active.
  const op_t k = (ratio <= op_t(1) && img.raw_delta_norm >= static_cast<op_t>(kNormEps))
                     ? -e / (img.delta_norm * img.delta_norm) * dot / img.raw_delta_norm
                     : op_t(0);
  for (int64_t i = threadIdx.x; i < per; i += kThreads) {
    const op_t p = passed(i), gd = p * scale + k * img.delta(i);
    gx[off + i] = static_cast<scalar_t>(gd);
    gx0[off + i] = static_cast<scalar_t>(p - gd);
  }
}

void step_into(const at::Tensor& out, const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x0,
               double step_size, double eps, Norm norm) {
  if (x.numel() == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "projection_step_cuda", [&] {
    const scalar_t *xp = x.const_data_ptr<scalar_t>(), *gp = grad.const_data_ptr<scalar_t>(),
                   *x0p = x0.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    if (norm == Norm::Linf) {
      linf_forward_kernel<scalar_t><<<elementwise_blocks(x.numel()), kThreads, 0, stream>>>(
          xp, gp, x0p, op, x.numel(), LinfStep<scalar_t>(step_size, eps, /*scalars_in_input_dtype=*/false));
    } else {
      l2_forward_kernel<scalar_t><<<static_cast<unsigned>(x.size(0)), kThreads, 0, stream>>>(
          xp, gp, x0p, op, x.numel() / x.size(0), step_size, eps);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor projection_step_cuda(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x0, double step_size,
                                double eps, c10::string_view norm) {
  const Norm n = detail::check_projection_step("projection_step", x, grad, x0, step_size, eps, norm);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options());
  step_into(out, x.contiguous(), grad.contiguous(), x0.contiguous(), step_size, eps, n);
  return out;
}

void projection_step_inplace_cuda(at::Tensor& x, const at::Tensor& grad, const at::Tensor& x0,
                                  double step_size, double eps, c10::string_view norm) {
  const Norm n = detail::check_projection_step("projection_step_", x, grad, x0, step_size, eps, norm);
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.is_contiguous()) {
    step_into(x, x, grad.contiguous(), x0.contiguous(), step_size, eps, n);
  } else {
    at::Tensor out = at::empty(x.sizes(), x.options());
    step_into(out, x.contiguous(), grad.contiguous(), x0.contiguous(), step_size, eps, n);
    x.copy_(out);
  }
}

std::tuple<at::Tensor, at::Tensor> projection_step_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x_in,
                                                                 const at::Tensor& grad_in, const at::Tensor& x0_in,
                                                                 double step_size, double eps,
                                                                 c10::string_view norm) {
  const Norm n = detail::check_projection_step_backward(grad_out, x_in, grad_in, x0_in, step_size, eps, norm);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor gx = at::empty(x_in.sizes(), x_in.options()), gx0 = at::empty(x_in.sizes(), x_in.options());
  if (x_in.numel() == 0) return {gx, gx0};
  const at::Tensor go = grad_out.contiguous(), x = x_in.contiguous(), g = grad_in.contiguous(),
                   x0 = x0_in.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "projection_step_backward_cuda", [&] {
    const scalar_t *gop = go.const_data_ptr<scalar_t>(), *xp = x.const_data_ptr<scalar_t>(),
                   *gp = g.const_data_ptr<scalar_t>(), *x0p = x0.const_data_ptr<scalar_t>();
    scalar_t *gxp = gx.data_ptr<scalar_t>(), *gx0p = gx0.data_ptr<scalar_t>();
    if (n == Norm::Linf) {
      linf_backward_kernel<scalar_t><<<elementwise_blocks(x.numel()), kThreads, 0, stream>>>(
          gop, xp, gp, x0p, gxp, gx0p, x.numel(), LinfStep<scalar_t>(step_size, eps, /*scalars_in_input_dtype=*/false));
    } else {
      l2_backward_kernel<scalar_t><<<static_cast<unsigned>(x.size(0)), kThreads, 0, stream>>>(
          gop, xp, gp, x0p, gxp, gx0p, x.numel() / x.size(0), step_size, eps);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, gx0};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyengine, CUDA, m) {
  m.impl("projection_step", &projection_step_cuda);
  m.impl("projection_step_", &projection_step_inplace_cuda);
  m.impl("_projection_step_backward", &projection_step_backward_cuda);
}

}  // namespace pyengine::ops
