// CUDA kernels of sample_views (semantics: sample_views_reference in pyengine/ops/view_sampling.py);
// the per-view and per-pixel math is ../sample_views_math.h, shared with the CPU kernels.
//
// One block per view, with the passes of the CPU kernel. The view is not staged in shared
// memory: each pass recomputes a pixel's bilinear sample from x (12 loads that hit L1/L2), so
// every view size runs on one code path and shared memory holds only the reduction scratch.
// Forward: pass 1 reduces the contrast mean, pass 2 writes the requested dtype and layout.
// Backward: pass 1 as forward, pass 2 reduces sum(dL/da2) for the contrast mean's adjoint,
// pass 3 scatters dL/dx with atomicAdd into an fp32 (fp64 for fp64 x) accumulator, so the
// backward is not deterministic (the CPU kernel is) and says so under deterministic mode.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "../sample_views_math.h"

namespace pyengine::ops {

namespace {

using namespace detail::views;

constexpr int kThreads = 256;
// ATen's CUDA kernels divide a tensor by a Python scalar as a multiply by its fp32 reciprocal
// (built with -fmad=false: no FMAs, so each op rounds as in the reference's separate kernels).
constexpr bool kByReciprocal = true;

struct PixelTaps {
  Tap y, x;
};

__device__ __forceinline__ PixelTaps pixel_taps(const float* p, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                                int64_t q) {
  return {row_tap(p, h, oh, q / ow, kByReciprocal), column_tap(p, w, ow, q % ow, kByReciprocal)};
}

// Sum over the block, returned to every thread; scratch holds kThreads / 32 values.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  acc_t total = 0;
  for (int k = 0; k < kThreads / 32; ++k) total += scratch[k];
  __syncthreads();  // scratch is reused by the next call
  return total;
}

// Pass 1 of both kernels: the mean of gray(clamp(a1)) over the view.
template <typename in_t, typename acc_t>
__device__ acc_t contrast_mean(const in_t* img, const Strides& xs, const float* p, acc_t brightness, int64_t h,
                               int64_t w, int64_t oh, int64_t ow, acc_t* scratch) {
  acc_t part = 0;
  for (int64_t q = threadIdx.x; q < oh * ow; q += kThreads) {
    const PixelTaps t = pixel_taps(p, h, w, oh, ow, q);
    acc_t a1[3];
    sample_a1(img, xs, t.y, t.x, brightness, a1);
    const acc_t v1[3] = {clamp01(a1[0]), clamp01(a1[1]), clamp01(a1[2])};
    part += gray(v1);
  }
  return block_sum(part, scratch) / static_cast<acc_t>(oh * ow);
}

template <typename in_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
    sample_views_kernel(const in_t* __restrict__ x, Strides xs, int64_t n, int64_t h, int64_t w,
                        const float* __restrict__ params, out_t* __restrict__ out, Strides os, int64_t oh, int64_t ow) {
  using acc_t = at::opmath_type<in_t>;
  __shared__ acc_t scratch[kThreads / 32];
  const int64_t m = blockIdx.x;
  const float* p = params + m * kColumns;
  const in_t* img = x + (m % n) * xs.n;
  const auto k = view_colour<acc_t>(p, kByReciprocal);
  const acc_t mean = contrast_mean(img, xs, p, k.brightness, h, w, oh, ow, scratch);
  for (int64_t q = threadIdx.x; q < oh * ow; q += kThreads) {
    const PixelTaps t = pixel_taps(p, h, w, oh, ow, q);
    acc_t a1[3], v4[3];
    sample_a1(img, xs, t.y, t.x, k.brightness, a1);
    colour_out(k, colour_stages(k, mean, a1), v4);
    out_t* o = out + m * os.n + (q / ow) * os.h + (q % ow) * os.w;
    for (int c = 0; c < 3; ++c) o[c * os.c] = static_cast<out_t>(v4[c]);
  }
}

template <typename in_t, typename grad_t>
__global__ void __launch_bounds__(kThreads)
    sample_views_backward_kernel(const grad_t* __restrict__ grad, Strides gs, const in_t* __restrict__ x, Strides xs,
                                 int64_t n, int64_t h, int64_t w, const float* __restrict__ params,
                                 at::opmath_type<in_t>* __restrict__ grad_x, int64_t oh, int64_t ow) {
  using acc_t = at::opmath_type<in_t>;
  __shared__ acc_t scratch[kThreads / 32];
  const int64_t m = blockIdx.x;
  const float* p = params + m * kColumns;
  const in_t* img = x + (m % n) * xs.n;
  const auto k = view_colour<acc_t>(p, kByReciprocal);
  const acc_t mean = contrast_mean(img, xs, p, k.brightness, h, w, oh, ow, scratch);
  // dL/da2 of one pixel; pass 3 recomputes it rather than keeping a view-sized buffer.
  auto pixel_ga2 = [&](int64_t q, const PixelTaps& t, acc_t a1[3], acc_t ga2[3]) {
    sample_a1(img, xs, t.y, t.x, k.brightness, a1);
    const grad_t* go_p = grad + m * gs.n + (q / ow) * gs.h + (q % ow) * gs.w;
    const acc_t go[3] = {acc_t(go_p[0]), acc_t(go_p[gs.c]), acc_t(go_p[2 * gs.c])};
    colour_adjoint(k, colour_stages(k, mean, a1), go, ga2);
  };
  acc_t part = 0;
  for (int64_t q = threadIdx.x; q < oh * ow; q += kThreads) {
    acc_t a1[3], ga2[3];
    pixel_ga2(q, pixel_taps(p, h, w, oh, ow, q), a1, ga2);
    part += ga2[0] + ga2[1] + ga2[2];
  }
  // Every a2 of the view depends on mean = sum_{c,q} gray_c * v1[c,q] / P.
  const acc_t mean_grad = (1 - k.contrast) * block_sum(part, scratch) / static_cast<acc_t>(oh * ow);
  acc_t* image_grad = grad_x + (m % n) * 3 * h * w;
  for (int64_t q = threadIdx.x; q < oh * ow; q += kThreads) {
    const PixelTaps t = pixel_taps(p, h, w, oh, ow, q);
    acc_t a1[3], ga2[3];
    pixel_ga2(q, t, a1, ga2);
    for (int c = 0; c < 3; ++c) {
      const acc_t g = sample_grad(k, c, a1[c], ga2[c], mean_grad);
      if (g == acc_t(0)) continue;  // clamped pixels cost no atomics
      acc_t* r0 = image_grad + c * h * w + t.y.lo * w;
      acc_t* r1 = image_grad + c * h * w + t.y.hi * w;
      const acc_t top = acc_t(t.y.w_lo) * g, bottom = acc_t(t.y.w_hi) * g;
      const acc_t wx0 = t.x.w_lo, wx1 = t.x.w_hi;
      atomicAdd(r0 + t.x.lo, wx0 * top);
      atomicAdd(r0 + t.x.hi, wx1 * top);
      atomicAdd(r1 + t.x.lo, wx0 * bottom);
      atomicAdd(r1 + t.x.hi, wx1 * bottom);
    }
  }
}

at::Tensor sample_views_cuda(const at::Tensor& x, const at::Tensor& params, int64_t out_h, int64_t out_w,
                             std::optional<at::ScalarType> out_dtype, bool channels_last) {
  // After the checks: x may be the CPU tensor of a mixed-device call.
  at::Tensor out = detail::checked_views_output(x, params, out_h, out_w, out_dtype, channels_last);
  const c10::cuda::CUDAGuard device_guard(x.device());
  if (out.numel() == 0) return out;
  const at::Tensor p = params.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sample_views_cuda", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sample_views_cuda", [&] {
      sample_views_kernel<in_t, scalar_t><<<out.size(0), kThreads, 0, stream>>>(
          x.const_data_ptr<in_t>(), strides_of(x), x.size(0), x.size(2), x.size(3), p.const_data_ptr<float>(),
          out.mutable_data_ptr<scalar_t>(), strides_of(out), out_h, out_w);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor sample_views_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& params,
                                      int64_t out_h, int64_t out_w) {
  detail::check_views_backward(grad, x, params, out_h, out_w);
  // atomicAdd sums a source pixel's taps in a run-dependent order: under
  // torch.use_deterministic_algorithms(True) this raises (or warns, with warn_only=True).
  at::globalContext().alertNotDeterministic("sample_views_backward (CUDA)");
  const c10::cuda::CUDAGuard device_guard(x.device());
  if (grad.numel() == 0) return at::zeros(x.sizes(), x.options());
  const at::Tensor p = params.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sample_views_backward_cuda", [&] {
    using in_t = scalar_t;
    using acc_t = at::opmath_type<in_t>;
    grad_x = at::zeros(x.sizes(), x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "sample_views_backward_cuda", [&] {
      sample_views_backward_kernel<in_t, scalar_t><<<grad.size(0), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), strides_of(grad), x.const_data_ptr<in_t>(), strides_of(x), x.size(0),
          x.size(2), x.size(3), p.const_data_ptr<float>(), grad_x.mutable_data_ptr<acc_t>(), out_h, out_w);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad_x.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(pyengine, CUDA, m) {
  m.impl("sample_views", &sample_views_cuda);
  m.impl("_sample_views_backward", &sample_views_backward_cuda);
}

}  // namespace pyengine::ops
