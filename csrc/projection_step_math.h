// Elementwise math of projection_step's L-inf step, shared by the CPU and CUDA kernels so both
// round, propagate NaN and split tie gradients exactly as the reference ops and their autograd.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

namespace pyengine::ops::detail {

// NaN-propagating max / min, as torch.maximum / minimum / clamp.
template <typename T>
C10_HOST_DEVICE T max_nan(T a, T b) {
  return a != a ? a : (b != b ? b : (a > b ? a : b));
}
template <typename T>
C10_HOST_DEVICE T min_nan(T a, T b) {
  return a != a ? a : (b != b ? b : (a < b ? a : b));
}

// Derivative of max(a, b) wrt a; torch splits the gradient evenly on ties.
template <typename T>
C10_HOST_DEVICE T dmax(T a, T b) {
  return a > b ? T(1) : (a == b ? T(0.5) : T(0));
}

// The L-inf step of one element, each intermediate rounded to scalar_t where the reference's
// separate ops round it (a no-op for fp32/fp64), so fp16/bf16 results match bit for bit.
// The reference's Python scalars (step_size, eps) reach ATen's CPU kernels cast to x's dtype
// but its CUDA kernels in opmath precision: ``scalars_in_input_dtype`` picks the device's rule.
template <typename scalar_t>
struct LinfStep {
  using op_t = at::opmath_type<scalar_t>;
  op_t a, e;  // step_size and eps as the reference sees them on this device

  LinfStep(double step_size, double eps, bool scalars_in_input_dtype)
      : a(scalar(step_size, scalars_in_input_dtype)), e(scalar(eps, scalars_in_input_dtype)) {}

  static op_t scalar(double v, bool in_input_dtype) {
    return in_input_dtype ? static_cast<op_t>(static_cast<scalar_t>(v)) : static_cast<op_t>(v);
  }

  static C10_HOST_DEVICE op_t round(op_t v) { return static_cast<op_t>(static_cast<scalar_t>(v)); }
  C10_HOST_DEVICE op_t stepped(op_t x, op_t g) const {
    return round(x - round(a * static_cast<op_t>((g > op_t(0)) - (g < op_t(0)))));
  }
  C10_HOST_DEVICE op_t lo(op_t x0) const { return round(x0 - e); }
  C10_HOST_DEVICE op_t hi(op_t x0) const { return round(x0 + e); }

  C10_HOST_DEVICE scalar_t operator()(op_t x, op_t g, op_t x0) const {
    const op_t y = min_nan(max_nan(stepped(x, g), lo(x0)), hi(x0));
    return static_cast<scalar_t>(min_nan(max_nan(y, op_t(0)), op_t(1)));
  }

  // Gradients wrt x and x0 of the step (not of grad: sign has zero derivative), given grad_out.
  C10_HOST_DEVICE void backward(op_t grad_out, op_t x, op_t g, op_t x0, op_t& grad_x, op_t& grad_x0) const {
    const op_t s = stepped(x, g), l = lo(x0), h = hi(x0);
    const op_t m1 = max_nan(s, l), m2 = min_nan(m1, h);
    const op_t go = (m2 >= op_t(0) && m2 <= op_t(1)) ? grad_out : op_t(0);  // clamp(0, 1): closed interval
    const op_t d_m1 = dmax(h, m1);                                          // min(m1, h) wrt m1
    grad_x = go * d_m1 * dmax(s, l);
    grad_x0 = go * (d_m1 * dmax(l, s) + dmax(m1, h));
  }
};

}  // namespace pyengine::ops::detail
