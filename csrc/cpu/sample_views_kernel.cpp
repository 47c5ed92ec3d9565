// CPU kernels of sample_views (semantics: sample_views_reference in pyengine/ops/view_sampling.py);
// the per-view and per-pixel math is ../sample_views_math.h, shared with the CUDA kernels.
//
// Forward: one task per view. Pass 1 samples the view bilinearly and keeps the brightness
// pre-clamp values a1 in a per-thread buffer while reducing the contrast mean; pass 2 runs the
// remaining colour stages per pixel and writes the requested dtype and layout directly.
// Backward: pass 1 as forward; pass 2 recomputes the colour stages per pixel, runs their adjoint
// in reverse order and reduces sum(dL/da2) for the contrast mean; pass 3 adds the mean's share and
// the brightness adjoint, giving a per-view gradient wrt the bilinear sample. The crop-resize
// adjoint then scatters those into grad_x with one task per (image, channel) plane, so no two
// threads write the same pixel.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../checks.h"
#include "../sample_views_math.h"

#include <algorithm>
#include <vector>

namespace pyengine::ops {

namespace {

using namespace detail::views;

// ATen's CPU kernels divide a tensor by a Python scalar (no reciprocal multiply).
constexpr bool kByReciprocal = false;

void view_taps(const float* p, int64_t h, int64_t w, std::vector<Tap>& ty, std::vector<Tap>& tx) {
  const auto oh = static_cast<int64_t>(ty.size()), ow = static_cast<int64_t>(tx.size());
  for (int64_t i = 0; i < oh; ++i) ty[i] = row_tap(p, h, oh, i, kByReciprocal);
  for (int64_t j = 0; j < ow; ++j) tx[j] = column_tap(p, w, ow, j, kByReciprocal);
}

// Pass 1: brightness pre-clamp values into a1 [3, P]; returns the contrast mean of gray(clamp(a1)).
template <typename in_t, typename acc_t>
acc_t brightness_pass(const in_t* img, const Strides& xs, const std::vector<Tap>& ty, const std::vector<Tap>& tx,
                      acc_t brightness, acc_t* a1) {
  const auto ow = static_cast<int64_t>(tx.size()), npix = static_cast<int64_t>(ty.size()) * ow;
  acc_t total = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(ty.size()); ++i) {
    acc_t row_sum = 0;  // per-row partial sums keep the fp32 mean accurate on large views
    for (int64_t j = 0; j < ow; ++j) {
      acc_t a1_q[3], v1[3];
      sample_a1(img, xs, ty[i], tx[j], brightness, a1_q);
      for (int c = 0; c < 3; ++c) {
        a1[c * npix + i * ow + j] = a1_q[c];
        v1[c] = clamp01(a1_q[c]);
      }
      row_sum += gray(v1);
    }
    total += row_sum;
  }
  return total / static_cast<acc_t>(npix);
}

int64_t views_per_task(int64_t npix) {
  return std::max<int64_t>(1, 16384 / npix);
}

template <typename in_t, typename out_t>
void forward_views(const at::Tensor& x, const at::Tensor& params, at::Tensor& out) {
  using acc_t = at::opmath_type<in_t>;
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3), oh = out.size(2), ow = out.size(3), npix = oh * ow;
  const Strides xs = strides_of(x), os = strides_of(out);
  const in_t* xp = x.const_data_ptr<in_t>();
  const float* pp = params.const_data_ptr<float>();
  out_t* op = out.mutable_data_ptr<out_t>();
  at::parallel_for(0, out.size(0), views_per_task(npix), [&](int64_t begin, int64_t end) {
    std::vector<Tap> ty(oh), tx(ow);
    std::vector<acc_t> a1(3 * npix);
    for (int64_t m = begin; m < end; ++m) {
      const float* p = pp + m * kColumns;
      view_taps(p, h, w, ty, tx);
      const auto k = view_colour<acc_t>(p, kByReciprocal);
      const acc_t mean = brightness_pass(xp + (m % n) * xs.n, xs, ty, tx, k.brightness, a1.data());
      for (int64_t i = 0; i < oh; ++i) {
        for (int64_t j = 0; j < ow; ++j) {
          const int64_t q = i * ow + j;
          const acc_t a1_q[3] = {a1[q], a1[npix + q], a1[2 * npix + q]};
          const auto s = colour_stages(k, mean, a1_q);
          acc_t v4[3];
          colour_out(k, s, v4);
          out_t* o = op + m * os.n + i * os.h + j * os.w;
          for (int c = 0; c < 3; ++c) o[c * os.c] = static_cast<out_t>(v4[c]);
        }
      }
    }
  });
}

template <typename in_t, typename grad_t>
at::Tensor backward_views(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& params) {
  using acc_t = at::opmath_type<in_t>;
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3), views = grad.size(0), oh = grad.size(2),
                ow = grad.size(3), npix = oh * ow;
  const Strides xs = strides_of(x), gs = strides_of(grad);
  const in_t* xp = x.const_data_ptr<in_t>();
  const grad_t* gp = grad.const_data_ptr<grad_t>();
  const float* pp = params.const_data_ptr<float>();
  // dL/d(bilinear sample) of every view, [M, 3, P].
  at::Tensor gv = at::empty({views, 3, npix}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* gvp = gv.mutable_data_ptr<acc_t>();
  at::parallel_for(0, views, views_per_task(npix), [&](int64_t begin, int64_t end) {
    std::vector<Tap> ty(oh), tx(ow);
    std::vector<acc_t> a1(3 * npix);
    for (int64_t m = begin; m < end; ++m) {
      const float* p = pp + m * kColumns;
      view_taps(p, h, w, ty, tx);
      const auto k = view_colour<acc_t>(p, kByReciprocal);
      const acc_t mean = brightness_pass(xp + (m % n) * xs.n, xs, ty, tx, k.brightness, a1.data());
      acc_t* g = gvp + m * 3 * npix;
      acc_t ga2_total = 0;
      for (int64_t i = 0; i < oh; ++i) {
        acc_t row_sum = 0;
        for (int64_t j = 0; j < ow; ++j) {
          const int64_t q = i * ow + j;
          const acc_t a1_q[3] = {a1[q], a1[npix + q], a1[2 * npix + q]};
          const grad_t* go_p = gp + m * gs.n + i * gs.h + j * gs.w;
          const acc_t go[3] = {acc_t(go_p[0]), acc_t(go_p[gs.c]), acc_t(go_p[2 * gs.c])};
          acc_t ga2[3];
          colour_adjoint(k, colour_stages(k, mean, a1_q), go, ga2);
          for (int c = 0; c < 3; ++c) g[c * npix + q] = ga2[c];
          row_sum += ga2[0] + ga2[1] + ga2[2];
        }
        ga2_total += row_sum;
      }
      const acc_t mean_grad = (1 - k.contrast) * ga2_total / static_cast<acc_t>(npix);
      for (int c = 0; c < 3; ++c) {
        acc_t* gc = g + c * npix;
        for (int64_t q = 0; q < npix; ++q) gc[q] = sample_grad(k, c, a1[c * npix + q], gc[q], mean_grad);
      }
    }
  });
  at::Tensor gx = at::zeros(x.sizes(), gv.options());
  acc_t* gxp = gx.mutable_data_ptr<acc_t>();
  const int64_t views_per_image = views / n;
  at::parallel_for(0, 3 * n, 1, [&](int64_t begin, int64_t end) {
    std::vector<Tap> ty(oh), tx(ow);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t image = plane / 3, c = plane % 3;
      acc_t* dst = gxp + plane * h * w;
      for (int64_t v = 0; v < views_per_image; ++v) {
        const int64_t m = v * n + image;
        view_taps(pp + m * kColumns, h, w, ty, tx);
        const acc_t* g = gvp + (m * 3 + c) * npix;
        for (int64_t i = 0; i < oh; ++i) {
          acc_t* r0 = dst + ty[i].lo * w;
          acc_t* r1 = dst + ty[i].hi * w;
          const acc_t wy0 = ty[i].w_lo, wy1 = ty[i].w_hi;
          for (int64_t j = 0; j < ow; ++j) {
            const acc_t top = wy0 * g[i * ow + j], bottom = wy1 * g[i * ow + j];
            const acc_t wx0 = tx[j].w_lo, wx1 = tx[j].w_hi;
            r0[tx[j].lo] += wx0 * top;
            r0[tx[j].hi] += wx1 * top;
            r1[tx[j].lo] += wx0 * bottom;
            r1[tx[j].hi] += wx1 * bottom;
          }
        }
      }
    }
  });
  return gx.to(x.scalar_type());
}

at::Tensor sample_views_cpu(const at::Tensor& x, const at::Tensor& params, int64_t out_h, int64_t out_w,
                            std::optional<at::ScalarType> out_dtype, bool channels_last) {
  at::Tensor out = detail::checked_views_output(x, params, out_h, out_w, out_dtype, channels_last);
  if (out.numel() == 0) return out;
  const at::Tensor p = params.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sample_views_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sample_views_cpu", [&] {
      forward_views<in_t, scalar_t>(x, p, out);
    });
  });
  return out;
}

at::Tensor sample_views_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& params,
                                     int64_t out_h, int64_t out_w) {
  detail::check_views_backward(grad, x, params, out_h, out_w);
  if (grad.numel() == 0) return at::zeros(x.sizes(), x.options());
  const at::Tensor p = params.contiguous();
  at::Tensor grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sample_views_backward_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "sample_views_backward_cpu", [&] {
      grad_x = backward_views<in_t, scalar_t>(grad, x, p);
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyengine, CPU, m) {
  m.impl("sample_views", &sample_views_cpu);
  m.impl("_sample_views_backward", &sample_views_backward_cpu);
}

}  // namespace pyengine::ops
