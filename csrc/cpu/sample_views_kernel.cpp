// CPU kernels of sample_views (semantics: sample_views_reference in pyengine/ops/view_sampling.py).
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
#include <c10/util/MathConstants.h>
#include <torch/library.h>

#include "../checks.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace pyengine::ops {

namespace {

enum Column { kTop, kLeft, kHeight, kWidth, kFlip, kBrightness, kContrast, kSaturation, kHue, kGrayscale, kColumns };

constexpr double kGray[3] = {0.299, 0.587, 0.114};
constexpr float kCross[9] = {0, -1, 1, 1, 0, -1, -1, 1, 0};

struct Strides {
  int64_t n, c, h, w;
  explicit Strides(const at::Tensor& t) : n(t.stride(0)), c(t.stride(1)), h(t.stride(2)), w(t.stride(3)) {}
};

// The two source taps of one output coordinate, in fp32 with the reference's operation order.
struct Tap {
  int64_t lo, hi;
  float w_lo, w_hi;
};

Tap axis_tap(float start, float length, int64_t size, int64_t out, int64_t i) {
  float src = (start + (static_cast<float>(i) + 0.5f) * length / static_cast<float>(out)) *
                  static_cast<float>(size) - 0.5f;
  // Written so that a NaN coordinate lands on tap 0 instead of an out-of-bounds index.
  src = src > 0.0f ? src : 0.0f;
  src = src < static_cast<float>(size - 1) ? src : static_cast<float>(size - 1);
  const float lo = std::floor(src);
  const auto lo_i = static_cast<int64_t>(lo);
  return {lo_i, std::min(lo_i + 1, size - 1), 1.0f - (src - lo), src - lo};
}

void view_taps(const float* p, int64_t h, int64_t w, std::vector<Tap>& ty, std::vector<Tap>& tx) {
  const auto oh = static_cast<int64_t>(ty.size()), ow = static_cast<int64_t>(tx.size());
  const bool flip = p[kFlip] > 0.5f;
  for (int64_t i = 0; i < oh; ++i) ty[i] = axis_tap(p[kTop], p[kHeight], h, oh, i);
  for (int64_t j = 0; j < ow; ++j) tx[j] = axis_tap(p[kLeft], p[kWidth], w, ow, flip ? ow - 1 - j : j);
}

template <typename acc_t>
struct Colour {
  acc_t brightness, contrast, saturation, rot[9];
  bool grayscale;
};

template <typename acc_t>
Colour<acc_t> view_colour(const float* p) {
  Colour<acc_t> k{p[kBrightness], p[kContrast], p[kSaturation], {}, p[kGrayscale] > 0.5f};
  // hue_matrices: Rodrigues rotation by 2*pi*hue about the grey axis, built in fp32.
  const float theta = static_cast<float>(2.0 * c10::pi<double>) * p[kHue];
  const float cos_t = std::cos(theta), sin_t = std::sin(theta), sqrt3 = std::sqrt(3.0f);
  for (int r = 0; r < 9; ++r) {
    k.rot[r] = (r % 4 == 0 ? cos_t : 0.0f) + (1.0f - cos_t) * (1.0f / 3.0f) + sin_t * kCross[r] / sqrt3;
  }
  return k;
}

template <typename acc_t>
acc_t clamp01(acc_t v) {
  return std::min(std::max(v, acc_t(0)), acc_t(1));
}

// clamp passes the gradient on the closed interval [0, 1], as autograd's clamp does.
template <typename acc_t>
acc_t pass01(acc_t pre_clamp, acc_t g) {
  return pre_clamp >= acc_t(0) && pre_clamp <= acc_t(1) ? g : acc_t(0);
}

template <typename acc_t>
acc_t gray(const acc_t v[3]) {
  return acc_t(kGray[0]) * v[0] + acc_t(kGray[1]) * v[1] + acc_t(kGray[2]) * v[2];
}

// Pre-clamp values of contrast, saturation and hue for one pixel: the backward's masks.
template <typename acc_t>
struct Stages {
  acc_t a2[3], a3[3], a4[3];
};

template <typename acc_t>
Stages<acc_t> colour_stages(const Colour<acc_t>& k, acc_t mean, const acc_t a1[3]) {
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
void colour_adjoint(const Colour<acc_t>& k, const Stages<acc_t>& s, const acc_t go[3], acc_t ga2[3]) {
  acc_t g4[3], ga3[3];
  const acc_t go_sum = go[0] + go[1] + go[2];
  for (int c = 0; c < 3; ++c) g4[c] = pass01(s.a4[c], k.grayscale ? acc_t(kGray[c]) * go_sum : go[c]);
  for (int c = 0; c < 3; ++c) ga3[c] = pass01(s.a3[c], k.rot[c] * g4[0] + k.rot[3 + c] * g4[1] + k.rot[6 + c] * g4[2]);
  const acc_t gray_share = (1 - k.saturation) * (ga3[0] + ga3[1] + ga3[2]);
  for (int c = 0; c < 3; ++c) ga2[c] = pass01(s.a2[c], k.saturation * ga3[c] + acc_t(kGray[c]) * gray_share);
}

// Pass 1: brightness pre-clamp values into a1 [3, P]; returns the contrast mean of gray(clamp(a1)).
template <typename in_t, typename acc_t>
acc_t brightness_pass(const in_t* img, const Strides& xs, const std::vector<Tap>& ty, const std::vector<Tap>& tx,
                      acc_t brightness, acc_t* a1) {
  const auto ow = static_cast<int64_t>(tx.size()), npix = static_cast<int64_t>(ty.size()) * ow;
  acc_t total = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(ty.size()); ++i) {
    const acc_t wy0 = ty[i].w_lo, wy1 = ty[i].w_hi;
    acc_t row_sum = 0;  // per-row partial sums keep the fp32 mean accurate on large views
    for (int64_t j = 0; j < ow; ++j) {
      const acc_t wx0 = tx[j].w_lo, wx1 = tx[j].w_hi;
      acc_t v1[3];
      for (int c = 0; c < 3; ++c) {
        const in_t* r0 = img + c * xs.c + ty[i].lo * xs.h;
        const in_t* r1 = img + c * xs.c + ty[i].hi * xs.h;
        const acc_t top = wx0 * acc_t(r0[tx[j].lo * xs.w]) + wx1 * acc_t(r0[tx[j].hi * xs.w]);
        const acc_t bottom = wx0 * acc_t(r1[tx[j].lo * xs.w]) + wx1 * acc_t(r1[tx[j].hi * xs.w]);
        a1[c * npix + i * ow + j] = brightness * (wy0 * top + wy1 * bottom);
        v1[c] = clamp01(a1[c * npix + i * ow + j]);
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
  const Strides xs(x), os(out);
  const in_t* xp = x.const_data_ptr<in_t>();
  const float* pp = params.const_data_ptr<float>();
  out_t* op = out.mutable_data_ptr<out_t>();
  at::parallel_for(0, out.size(0), views_per_task(npix), [&](int64_t begin, int64_t end) {
    std::vector<Tap> ty(oh), tx(ow);
    std::vector<acc_t> a1(3 * npix);
    for (int64_t m = begin; m < end; ++m) {
      const float* p = pp + m * kColumns;
      view_taps(p, h, w, ty, tx);
      const auto k = view_colour<acc_t>(p);
      const acc_t mean = brightness_pass(xp + (m % n) * xs.n, xs, ty, tx, k.brightness, a1.data());
      for (int64_t i = 0; i < oh; ++i) {
        for (int64_t j = 0; j < ow; ++j) {
          const int64_t q = i * ow + j;
          const acc_t a1_q[3] = {a1[q], a1[npix + q], a1[2 * npix + q]};
          const auto s = colour_stages(k, mean, a1_q);
          acc_t v4[3] = {clamp01(s.a4[0]), clamp01(s.a4[1]), clamp01(s.a4[2])};
          if (k.grayscale) v4[0] = v4[1] = v4[2] = gray(v4);
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
  const Strides xs(x), gs(grad);
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
      const auto k = view_colour<acc_t>(p);
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
      // Every a2 of the view depends on mean = sum_{c,q} gray_c * v1[c,q] / P.
      const acc_t mean_grad = (1 - k.contrast) * ga2_total / static_cast<acc_t>(npix);
      for (int c = 0; c < 3; ++c) {
        for (int64_t q = 0; q < npix; ++q) {
          const acc_t gv1 = k.contrast * g[c * npix + q] + acc_t(kGray[c]) * mean_grad;
          g[c * npix + q] = pass01(a1[c * npix + q], k.brightness * gv1);
        }
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
