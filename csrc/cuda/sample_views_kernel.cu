// CUDA kernels of sample_views (semantics: sample_views_reference in pyengine/ops/view_sampling.py).
//
// One block per view, with the passes of the CPU kernel. The view is not staged in shared
// memory: each pass recomputes a pixel's bilinear sample from x (12 loads that hit L1/L2), so
// every view size runs on one code path and shared memory holds only the reduction scratch.
// Forward: pass 1 reduces the contrast mean, pass 2 writes the requested dtype and layout.
// Backward: pass 1 as forward, pass 2 reduces sum(dL/da2) for the contrast mean's adjoint,
// pass 3 scatters dL/dx with atomicAdd into an fp32 (fp64 for fp64 x) accumulator.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/MathConstants.h>
#include <torch/library.h>

#include "../checks.h"

namespace pyengine::ops {

namespace {

enum Column { kTop, kLeft, kHeight, kWidth, kFlip, kBrightness, kContrast, kSaturation, kHue, kGrayscale, kColumns };

constexpr int kThreads = 256;
__constant__ float kCross[9] = {0, -1, 1, 1, 0, -1, -1, 1, 0};

template <typename acc_t>
__device__ __forceinline__ acc_t gray_weight(int c) {
  return c == 0 ? acc_t(0.299) : c == 1 ? acc_t(0.587) : acc_t(0.114);
}

struct Strides {
  int64_t n, c, h, w;
};

Strides strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// The two source taps of one output coordinate, in fp32 with the reference's operation order
// and rounding on CUDA: ATen's CUDA division by a Python scalar multiplies by the scalar's
// rounded reciprocal, so "/ out" here is "* (1 / out)" (built with -fmad=false: no FMAs).
struct Tap {
  int64_t lo, hi;
  float w_lo, w_hi;
};

__device__ __forceinline__ Tap axis_tap(float start, float length, int64_t size, int64_t out, int64_t i) {
  const float inv_out = 1.0f / static_cast<float>(out);
  float src = (start + (static_cast<float>(i) + 0.5f) * length * inv_out) * static_cast<float>(size) - 0.5f;
  // Written so that a NaN coordinate lands on tap 0 instead of an out-of-bounds index.
  src = src > 0.0f ? src : 0.0f;
  src = src < static_cast<float>(size - 1) ? src : static_cast<float>(size - 1);
  const float lo = floorf(src);
  const auto lo_i = static_cast<int64_t>(lo);
  return {lo_i, lo_i + 1 < size ? lo_i + 1 : size - 1, 1.0f - (src - lo), src - lo};
}

struct PixelTaps {
  Tap y, x;
};

__device__ __forceinline__ PixelTaps pixel_taps(const float* p, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                                int64_t q) {
  const int64_t i = q / ow, j = q % ow;
  return {axis_tap(p[kTop], p[kHeight], h, oh, i),
          axis_tap(p[kLeft], p[kWidth], w, ow, p[kFlip] > 0.5f ? ow - 1 - j : j)};
}

template <typename acc_t>
struct Colour {
  acc_t brightness, contrast, saturation, rot[9];
  bool grayscale;
};

template <typename acc_t>
__device__ Colour<acc_t> view_colour(const float* p) {
  Colour<acc_t> k{p[kBrightness], p[kContrast], p[kSaturation], {}, p[kGrayscale] > 0.5f};
  // hue_matrices: Rodrigues rotation by 2*pi*hue about the grey axis, built in fp32 (its
  // "/ sqrt(3)" is a reciprocal multiply on CUDA, as in axis_tap).
  const float theta = static_cast<float>(2.0 * c10::pi<double>) * p[kHue];
  const float cos_t = cosf(theta), sin_t = sinf(theta), inv_sqrt3 = 1.0f / sqrtf(3.0f);
  for (int r = 0; r < 9; ++r) {
    k.rot[r] = (r % 4 == 0 ? cos_t : 0.0f) + (1.0f - cos_t) * (1.0f / 3.0f) + sin_t * kCross[r] * inv_sqrt3;
  }
  return k;
}

template <typename acc_t>
__device__ __forceinline__ acc_t clamp01(acc_t v) {
  return v < acc_t(0) ? acc_t(0) : v > acc_t(1) ? acc_t(1) : v;
}

// clamp passes the gradient on the closed interval [0, 1], as autograd's clamp does.
template <typename acc_t>
__device__ __forceinline__ acc_t pass01(acc_t pre_clamp, acc_t g) {
  return pre_clamp >= acc_t(0) && pre_clamp <= acc_t(1) ? g : acc_t(0);
}

template <typename acc_t>
__device__ __forceinline__ acc_t gray(const acc_t v[3]) {
  return gray_weight<acc_t>(0) * v[0] + gray_weight<acc_t>(1) * v[1] + gray_weight<acc_t>(2) * v[2];
}

// Brightness pre-clamp values a1 of one pixel: bilinear sample of the image times brightness.
template <typename in_t, typename acc_t>
__device__ __forceinline__ void sample_a1(const in_t* img, const Strides& xs, const PixelTaps& t, acc_t brightness,
                                          acc_t a1[3]) {
  const acc_t wy0 = t.y.w_lo, wy1 = t.y.w_hi, wx0 = t.x.w_lo, wx1 = t.x.w_hi;
  for (int c = 0; c < 3; ++c) {
    const in_t* r0 = img + c * xs.c + t.y.lo * xs.h;
    const in_t* r1 = img + c * xs.c + t.y.hi * xs.h;
    const acc_t top = wx0 * acc_t(r0[t.x.lo * xs.w]) + wx1 * acc_t(r0[t.x.hi * xs.w]);
    const acc_t bottom = wx0 * acc_t(r1[t.x.lo * xs.w]) + wx1 * acc_t(r1[t.x.hi * xs.w]);
    a1[c] = brightness * (wy0 * top + wy1 * bottom);
  }
}

// Pre-clamp values of contrast, saturation and hue for one pixel: the backward's masks.
template <typename acc_t>
struct Stages {
  acc_t a2[3], a3[3], a4[3];
};

template <typename acc_t>
__device__ __forceinline__ Stages<acc_t> colour_stages(const Colour<acc_t>& k, acc_t mean, const acc_t a1[3]) {
  Stages<acc_t> s;
  acc_t v2[3], v3[3];
  for (int c = 0; c < 3; ++c) v2[c] = clamp01(s.a2[c] = k.contrast * clamp01(a1[c]) + (1 - k.contrast) * mean);
  const acc_t g2 = gray(v2);
  for (int c = 0; c < 3; ++c) v3[c] = clamp01(s.a3[c] = k.saturation * v2[c] + (1 - k.saturation) * g2);
  for (int c = 0; c < 3; ++c) s.a4[c] = k.rot[3 * c] * v3[0] + k.rot[3 * c + 1] * v3[1] + k.rot[3 * c + 2] * v3[2];
  return s;
}

// Adjoint of hue, grayscale, saturation and the per-pixel part of contrast: dL/da2 from dL/dout.
template <typename acc_t>
__device__ __forceinline__ void colour_adjoint(const Colour<acc_t>& k, const Stages<acc_t>& s, const acc_t go[3],
                                               acc_t ga2[3]) {
  acc_t g4[3], ga3[3];
  const acc_t go_sum = go[0] + go[1] + go[2];
  for (int c = 0; c < 3; ++c) g4[c] = pass01(s.a4[c], k.grayscale ? gray_weight<acc_t>(c) * go_sum : go[c]);
  for (int c = 0; c < 3; ++c) ga3[c] = pass01(s.a3[c], k.rot[c] * g4[0] + k.rot[3 + c] * g4[1] + k.rot[6 + c] * g4[2]);
  const acc_t gray_share = (1 - k.saturation) * (ga3[0] + ga3[1] + ga3[2]);
  for (int c = 0; c < 3; ++c) ga2[c] = pass01(s.a2[c], k.saturation * ga3[c] + gray_weight<acc_t>(c) * gray_share);
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
    acc_t a1[3];
    sample_a1(img, xs, pixel_taps(p, h, w, oh, ow, q), brightness, a1);
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
  const auto k = view_colour<acc_t>(p);
  const acc_t mean = contrast_mean(img, xs, p, k.brightness, h, w, oh, ow, scratch);
  for (int64_t q = threadIdx.x; q < oh * ow; q += kThreads) {
    acc_t a1[3];
    sample_a1(img, xs, pixel_taps(p, h, w, oh, ow, q), k.brightness, a1);
    const auto s = colour_stages(k, mean, a1);
    acc_t v4[3] = {clamp01(s.a4[0]), clamp01(s.a4[1]), clamp01(s.a4[2])};
    if (k.grayscale) v4[0] = v4[1] = v4[2] = gray(v4);
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
  const auto k = view_colour<acc_t>(p);
  const acc_t mean = contrast_mean(img, xs, p, k.brightness, h, w, oh, ow, scratch);
  // dL/da2 of one pixel; pass 3 recomputes it rather than keeping a view-sized buffer.
  auto pixel_ga2 = [&](int64_t q, const PixelTaps& t, acc_t a1[3], acc_t ga2[3]) {
    sample_a1(img, xs, t, k.brightness, a1);
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
      const acc_t g = pass01(a1[c], k.brightness * (k.contrast * ga2[c] + gray_weight<acc_t>(c) * mean_grad));
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
