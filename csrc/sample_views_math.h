// Per-view and per-pixel math of sample_views, shared by the CPU and CUDA kernels so both sample,
// colour-jitter and differentiate a view exactly as sample_views_reference and its autograd do.
//
// The one rounding rule that differs by device is division by a Python scalar: ATen's CPU kernels
// divide, its CUDA kernels multiply by the scalar's fp32 reciprocal. Each kernel passes its rule
// (``by_reciprocal``) so its results match the reference on its own device bit for bit.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/MathConstants.h>

#include <cmath>
#include <cstdint>

namespace pyengine::ops::detail::views {

enum Column { kTop, kLeft, kHeight, kWidth, kFlip, kBrightness, kContrast, kSaturation, kHue, kGrayscale, kColumns };

struct Strides {
  int64_t n, c, h, w;
};

template <typename Tensor>  // host only: at::Tensor, without including it here
Strides strides_of(const Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

C10_HOST_DEVICE inline float div_scalar(float a, float b, bool by_reciprocal) {
  return by_reciprocal ? a * (1.0f / b) : a / b;
}

// The two source taps of one output coordinate, in fp32 with the reference's operation order.
struct Tap {
  int64_t lo, hi;
  float w_lo, w_hi;
};

C10_HOST_DEVICE inline Tap axis_tap(float start, float length, int64_t size, int64_t out, int64_t i,
                                    bool by_reciprocal) {
  float src = (start + div_scalar((static_cast<float>(i) + 0.5f) * length, static_cast<float>(out), by_reciprocal)) *
                  static_cast<float>(size) - 0.5f;
  // Written so that a NaN coordinate lands on tap 0 instead of an out-of-bounds index.
  src = src > 0.0f ? src : 0.0f;
  src = src < static_cast<float>(size - 1) ? src : static_cast<float>(size - 1);
  const float lo = ::floorf(src);
  const auto lo_i = static_cast<int64_t>(lo);
  return {lo_i, lo_i + 1 < size ? lo_i + 1 : size - 1, 1.0f - (src - lo), src - lo};
}

// Output column j of a view samples source column j, or ow - 1 - j when the view is flipped.
C10_HOST_DEVICE inline Tap row_tap(const float* p, int64_t h, int64_t oh, int64_t i, bool by_reciprocal) {
  return axis_tap(p[kTop], p[kHeight], h, oh, i, by_reciprocal);
}
C10_HOST_DEVICE inline Tap column_tap(const float* p, int64_t w, int64_t ow, int64_t j, bool by_reciprocal) {
  return axis_tap(p[kLeft], p[kWidth], w, ow, p[kFlip] > 0.5f ? ow - 1 - j : j, by_reciprocal);
}

template <typename acc_t>
C10_HOST_DEVICE acc_t gray_weight(int c) {
  return c == 0 ? acc_t(0.299) : c == 1 ? acc_t(0.587) : acc_t(0.114);
}

// Entry r (row-major) of the cross-product matrix of the grey axis (1, 1, 1).
C10_HOST_DEVICE inline float grey_cross(int r) {
  const int d = (r % 3 - r / 3 + 3) % 3;  // column minus row, mod 3
  return d == 0 ? 0.0f : d == 1 ? -1.0f : 1.0f;
}

template <typename acc_t>
struct Colour {
  acc_t brightness, contrast, saturation, rot[9];
  bool grayscale;
};

template <typename acc_t>
C10_HOST_DEVICE Colour<acc_t> view_colour(const float* p, bool by_reciprocal) {
  Colour<acc_t> k{p[kBrightness], p[kContrast], p[kSaturation], {}, p[kGrayscale] > 0.5f};
  // hue_matrices: Rodrigues rotation by 2*pi*hue about the grey axis, built in fp32.
  const float theta = static_cast<float>(2.0 * c10::pi<double>) * p[kHue];
  const float cos_t = ::cosf(theta), sin_t = ::sinf(theta), sqrt3 = ::sqrtf(3.0f);
  for (int r = 0; r < 9; ++r) {
    k.rot[r] = (r % 4 == 0 ? cos_t : 0.0f) + (1.0f - cos_t) * (1.0f / 3.0f) +
               div_scalar(sin_t * grey_cross(r), sqrt3, by_reciprocal);
  }
  return k;
}

// NaN-propagating, as torch.clamp.
template <typename acc_t>
C10_HOST_DEVICE acc_t clamp01(acc_t v) {
  return v < acc_t(0) ? acc_t(0) : v > acc_t(1) ? acc_t(1) : v;
}

// clamp passes the gradient on the closed interval [0, 1], as autograd's clamp does.
template <typename acc_t>
C10_HOST_DEVICE acc_t pass01(acc_t pre_clamp, acc_t g) {
  return pre_clamp >= acc_t(0) && pre_clamp <= acc_t(1) ? g : acc_t(0);
}

template <typename acc_t>
C10_HOST_DEVICE acc_t gray(const acc_t v[3]) {
  return gray_weight<acc_t>(0) * v[0] + gray_weight<acc_t>(1) * v[1] + gray_weight<acc_t>(2) * v[2];
}

// Brightness pre-clamp values a1 of one pixel: the bilinear sample of the image times brightness.
template <typename in_t, typename acc_t>
C10_HOST_DEVICE void sample_a1(const in_t* img, const Strides& xs, const Tap& ty, const Tap& tx, acc_t brightness,
                               acc_t a1[3]) {
  const acc_t wy0 = ty.w_lo, wy1 = ty.w_hi, wx0 = tx.w_lo, wx1 = tx.w_hi;
  for (int c = 0; c < 3; ++c) {
    const in_t* r0 = img + c * xs.c + ty.lo * xs.h;
    const in_t* r1 = img + c * xs.c + ty.hi * xs.h;
    const acc_t top = wx0 * acc_t(r0[tx.lo * xs.w]) + wx1 * acc_t(r0[tx.hi * xs.w]);
    const acc_t bottom = wx0 * acc_t(r1[tx.lo * xs.w]) + wx1 * acc_t(r1[tx.hi * xs.w]);
    a1[c] = brightness * (wy0 * top + wy1 * bottom);
  }
}

// Pre-clamp values of contrast, saturation and hue for one pixel: the backward's masks.
template <typename acc_t>
struct Stages {
  acc_t a2[3], a3[3], a4[3];
};

template <typename acc_t>
C10_HOST_DEVICE Stages<acc_t> colour_stages(const Colour<acc_t>& k, acc_t mean, const acc_t a1[3]) {
  Stages<acc_t> s;
  acc_t v2[3], v3[3];
  for (int c = 0; c < 3; ++c) v2[c] = clamp01(s.a2[c] = k.contrast * clamp01(a1[c]) + (1 - k.contrast) * mean);
  const acc_t g2 = gray(v2);
  for (int c = 0; c < 3; ++c) v3[c] = clamp01(s.a3[c] = k.saturation * v2[c] + (1 - k.saturation) * g2);
  for (int c = 0; c < 3; ++c) s.a4[c] = k.rot[3 * c] * v3[0] + k.rot[3 * c + 1] * v3[1] + k.rot[3 * c + 2] * v3[2];
  return s;
}

// The output pixel: hue's clamp, then grayscale.
template <typename acc_t>
C10_HOST_DEVICE void colour_out(const Colour<acc_t>& k, const Stages<acc_t>& s, acc_t v4[3]) {
  for (int c = 0; c < 3; ++c) v4[c] = clamp01(s.a4[c]);
  if (k.grayscale) v4[0] = v4[1] = v4[2] = gray(v4);
}

// Adjoint of hue, grayscale, saturation and the per-pixel part of contrast: dL/da2 from dL/dout.
template <typename acc_t>
C10_HOST_DEVICE void colour_adjoint(const Colour<acc_t>& k, const Stages<acc_t>& s, const acc_t go[3], acc_t ga2[3]) {
  acc_t g4[3], ga3[3];
  const acc_t go_sum = go[0] + go[1] + go[2];
  for (int c = 0; c < 3; ++c) g4[c] = pass01(s.a4[c], k.grayscale ? gray_weight<acc_t>(c) * go_sum : go[c]);
  for (int c = 0; c < 3; ++c) ga3[c] = pass01(s.a3[c], k.rot[c] * g4[0] + k.rot[3 + c] * g4[1] + k.rot[6 + c] * g4[2]);
  const acc_t gray_share = (1 - k.saturation) * (ga3[0] + ga3[1] + ga3[2]);
  for (int c = 0; c < 3; ++c) ga2[c] = pass01(s.a2[c], k.saturation * ga3[c] + gray_weight<acc_t>(c) * gray_share);
}

// dL/d(bilinear sample) of one channel from dL/da2, given the contrast mean's gradient
// mean_grad = (1 - contrast) * sum(dL/da2) / P (every a2 of the view depends on the mean).
template <typename acc_t>
C10_HOST_DEVICE acc_t sample_grad(const Colour<acc_t>& k, int c, acc_t a1, acc_t ga2, acc_t mean_grad) {
  return pass01(a1, k.brightness * (k.contrast * ga2 + gray_weight<acc_t>(c) * mean_grad));
}

}  // namespace pyengine::ops::detail::views
