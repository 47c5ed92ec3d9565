// CPU kernels of projection_step (semantics: projection_step_reference in
// pyengine/ops/projection_step.py) and of its backward.
//
// L-inf is elementwise: one vectorised pass (fp32/fp64), with the scalar math of
// projection_step_math.h for fp16/bf16 and the tails, so results match the reference bit for bit.
// L2 needs two per-image norms, |grad| and then |x - a*grad/|grad| - x0|, before any output
// can be written, so it runs one task per image: the image (three tensors of C*H*W values)
// stays in cache across its reduction passes and the write, and memory is read about once.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>

#include "../checks.h"
#include "../projection_step_math.h"
#include "capability.h"  // last but the vector headers: what follows may compile for AVX2

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace pyengine::ops::CPU_CAPABILITY {

namespace {

using detail::Norm;
using at::vec::Vectorized;

constexpr double kNormEps = 1e-12;  // the reference's clamp_min on per-image norms
constexpr int64_t kGrain = 32768;  // elements per task, as ATen's at::internal::GRAIN_SIZE

template <typename scalar_t>
void linf_forward(const scalar_t* x, const scalar_t* g, const scalar_t* x0, scalar_t* out, int64_t numel,
                  double step_size, double eps) {
  const detail::LinfStep<scalar_t> step(step_size, eps, /*scalars_in_input_dtype=*/true);
  at::parallel_for(0, numel, kGrain, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    if constexpr (std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
      // Full precision: one rounding per op already, so plain vector arithmetic matches.
      using Vec = Vectorized<scalar_t>;
      const Vec a(step.a), e(step.e), zero(0), one(1);
      for (; i + Vec::size() <= i1; i += Vec::size()) {
        const Vec gv = Vec::loadu(g + i), x0v = Vec::loadu(x0 + i);
        const Vec stepped = Vec::loadu(x + i) - a * (gv.gt(zero) - gv.lt(zero));
        const Vec y = at::vec::minimum(at::vec::maximum(stepped, x0v - e), x0v + e);
        at::vec::clamp(y, zero, one).store(out + i);
      }
    }
    for (; i < i1; ++i) out[i] = step(x[i], g[i], x0[i]);
  });
}

template <typename scalar_t>
void linf_backward(const scalar_t* go, const scalar_t* x, const scalar_t* g, const scalar_t* x0, scalar_t* gx,
                   scalar_t* gx0, int64_t numel, double step_size, double eps) {
  using op_t = at::opmath_type<scalar_t>;
  const detail::LinfStep<scalar_t> step(step_size, eps, /*scalars_in_input_dtype=*/true);
  at::parallel_for(0, numel, kGrain, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    if constexpr (std::is_same_v<scalar_t, op_t>) {
      // LinfStep::backward with masks instead of branches (which random data mispredicts).
      using Vec = Vectorized<scalar_t>;
      const Vec a(step.a), e(step.e), zero(0), one(1), half(0.5);
      const auto dmax = [half](Vec p, Vec q) { return p.gt(q) + p.eq(q) * half; };
      for (; i + Vec::size() <= i1; i += Vec::size()) {
        const Vec gv = Vec::loadu(g + i), x0v = Vec::loadu(x0 + i);
        const Vec s = Vec::loadu(x + i) - a * (gv.gt(zero) - gv.lt(zero)), lo = x0v - e, hi = x0v + e;
        const Vec m1 = at::vec::maximum(s, lo), m2 = at::vec::minimum(m1, hi);
        const Vec grad = Vec::blendv(zero, Vec::loadu(go + i), (m2 >= zero) & (m2 <= one));
        const Vec d_m1 = dmax(hi, m1);
        (grad * d_m1 * dmax(s, lo)).store(gx + i);
        (grad * (d_m1 * dmax(lo, s) + dmax(m1, hi))).store(gx0 + i);
      }
    }
    for (; i < i1; ++i) {
      op_t grad_x, grad_x0;
      step.backward(go[i], x[i], g[i], x0[i], grad_x, grad_x0);
      gx[i] = static_cast<scalar_t>(grad_x);
      gx0[i] = static_cast<scalar_t>(grad_x0);
    }
  });
}

template <typename scalar_t>
void l2_forward(const scalar_t* x, const scalar_t* g, const scalar_t* x0, scalar_t* out, int64_t n, int64_t per,
                double step_size, double eps) {
  using op_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<op_t>;
  const auto plus = [](Vec u, Vec v) { return u + v; };
  const Vec a(static_cast<op_t>(step_size));
  at::parallel_for(0, n, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t off = b * per;
      const op_t gg = at::vec::map_reduce_all<scalar_t>([](Vec v) { return v * v; }, plus, g + off, per);
      const Vec ng(std::max(std::sqrt(gg), static_cast<op_t>(kNormEps)));
      const auto delta = [=](Vec xv, Vec gv, Vec x0v) { return xv - a * gv / ng - x0v; };
      const op_t dd = at::vec::map3_reduce_all<scalar_t>(
          [=](Vec xv, Vec gv, Vec x0v) { const Vec d = delta(xv, gv, x0v); return d * d; }, plus, x + off, g + off,
          x0 + off, per);
      const op_t nd = std::max(std::sqrt(dd), static_cast<op_t>(kNormEps));
      const Vec scale(std::min(static_cast<op_t>(eps) / nd, op_t(1))), zero(0), one(1);
      at::vec::map3(
          [=](Vec xv, Vec gv, Vec x0v) { return at::vec::clamp(x0v + delta(xv, gv, x0v) * scale, zero, one); },
          out + off, x + off, g + off, x0 + off, per);
    }
  });
}

template <typename scalar_t>
void l2_backward(const scalar_t* go, const scalar_t* x, const scalar_t* g, const scalar_t* x0, scalar_t* gx,
                 scalar_t* gx0, int64_t n, int64_t per, double step_size, double eps) {
  using op_t = at::opmath_type<scalar_t>;
  const op_t a = static_cast<op_t>(step_size), e = static_cast<op_t>(eps);
  at::parallel_for(0, n, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t off = b * per;
      op_t gg = 0, dd = 0;
      for (int64_t i = off; i < off + per; ++i) gg += static_cast<op_t>(g[i]) * static_cast<op_t>(g[i]);
      const op_t ng = std::max(std::sqrt(gg), static_cast<op_t>(kNormEps));
      const auto delta = [&](int64_t i) {
        return static_cast<op_t>(x[i]) - a * static_cast<op_t>(g[i]) / ng - static_cast<op_t>(x0[i]);
      };
      for (int64_t i = off; i < off + per; ++i) dd += delta(i) * delta(i);
      const op_t raw = std::sqrt(dd), nd = std::max(raw, static_cast<op_t>(kNormEps));
      const op_t ratio = e / nd, scale = std::min(ratio, op_t(1));
      // Gradient wrt delta, masked by clamp(0, 1) on the output.
      const auto passed = [&](int64_t i) {
        const op_t y = static_cast<op_t>(x0[i]) + delta(i) * scale;
        return (y >= 0 && y <= 1) ? static_cast<op_t>(go[i]) : op_t(0);
      };
      op_t dot = 0;
      for (int64_t i = off; i < off + per; ++i) dot += passed(i) * delta(i);
      // d scale / d delta = -eps / nd^2 * delta / |delta|, where neither clamp is active.
      const op_t k = (ratio <= 1 && raw >= static_cast<op_t>(kNormEps)) ? -e / (nd * nd) * dot / raw : op_t(0);
      for (int64_t i = off; i < off + per; ++i) {
        const op_t p = passed(i), gd = p * scale + k * delta(i);
        gx[i] = static_cast<scalar_t>(gd);
        gx0[i] = static_cast<scalar_t>(p - gd);
      }
    }
  });
}

void step_into(const at::Tensor& out, const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x0,
               double step_size, double eps, Norm norm) {
  if (x.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "projection_step_cpu", [&] {
    const scalar_t *xp = x.const_data_ptr<scalar_t>(), *gp = grad.const_data_ptr<scalar_t>(),
                   *x0p = x0.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    if (norm == Norm::Linf) {
      linf_forward(xp, gp, x0p, op, x.numel(), step_size, eps);
    } else {
      l2_forward(xp, gp, x0p, op, x.size(0), x.numel() / x.size(0), step_size, eps);
    }
  });
}

at::Tensor projection_step_cpu(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x0, double step_size,
                               double eps, c10::string_view norm) {
  const Norm n = detail::check_projection_step("projection_step", x, grad, x0, step_size, eps, norm);
  at::Tensor out = at::empty(x.sizes(), x.options());
  step_into(out, x.contiguous(), grad.contiguous(), x0.contiguous(), step_size, eps, n);
  return out;
}

void projection_step_inplace_cpu(at::Tensor& x, const at::Tensor& grad, const at::Tensor& x0,
                                 double step_size, double eps, c10::string_view norm) {
  const Norm n = detail::check_projection_step("projection_step_", x, grad, x0, step_size, eps, norm);
  if (x.is_contiguous()) {
    step_into(x, x, grad.contiguous(), x0.contiguous(), step_size, eps, n);
  } else {
    at::Tensor out = at::empty(x.sizes(), x.options());
    step_into(out, x.contiguous(), grad.contiguous(), x0.contiguous(), step_size, eps, n);
    x.copy_(out);
  }
}

std::tuple<at::Tensor, at::Tensor> projection_step_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x_in,
                                                                const at::Tensor& grad_in, const at::Tensor& x0_in,
                                                                double step_size, double eps,
                                                                c10::string_view norm) {
  const Norm n = detail::check_projection_step_backward(grad_out, x_in, grad_in, x0_in, step_size, eps, norm);
  at::Tensor gx = at::empty(x_in.sizes(), x_in.options()), gx0 = at::empty(x_in.sizes(), x_in.options());
  if (x_in.numel() == 0) return {gx, gx0};
  const at::Tensor go = grad_out.contiguous(), x = x_in.contiguous(), g = grad_in.contiguous(),
                   x0 = x0_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "projection_step_backward_cpu", [&] {
    const scalar_t *gop = go.const_data_ptr<scalar_t>(), *xp = x.const_data_ptr<scalar_t>(),
                   *gp = g.const_data_ptr<scalar_t>(), *x0p = x0.const_data_ptr<scalar_t>();
    scalar_t *gxp = gx.data_ptr<scalar_t>(), *gx0p = gx0.data_ptr<scalar_t>();
    if (n == Norm::Linf) {
      linf_backward(gop, xp, gp, x0p, gxp, gx0p, x.numel(), step_size, eps);
    } else {
      l2_backward(gop, xp, gp, x0p, gxp, gx0p, x.size(0), x.numel() / x.size(0), step_size, eps);
    }
  });
  return {gx, gx0};
}

}  // namespace

// This build's kernels; the baseline build registers those of the build that serves the process.
void register_projection_step(torch::Library& m) {
  m.impl("projection_step", &projection_step_cpu);
  m.impl("projection_step_", &projection_step_inplace_cpu);
  m.impl("_projection_step_backward", &projection_step_backward_cpu);
}

}  // namespace pyengine::ops::CPU_CAPABILITY

PYENGINE_REGISTER_CPU_KERNELS(register_projection_step)
