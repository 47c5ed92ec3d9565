// Calls every pyengine op through the dispatcher on small CPU tensors and checks values worked
// out by hand: the registrations of libpyengine_ops must be usable without Python.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <tuple>

namespace {

int failures = 0;

void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what, double tol = 1e-6) {
  const bool ok = got.sizes() == want.sizes() && at::allclose(got.to(at::kDouble), want.to(at::kDouble), tol, tol);
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) {
    std::printf("got:\n%s\nwant:\n%s\n", c10::str(got).c_str(), c10::str(want).c_str());
    ++failures;
  }
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

at::Tensor tensor(std::initializer_list<double> values, at::IntArrayRef shape) {
  return at::tensor(std::vector<double>(values), at::kDouble).to(at::kFloat).reshape(shape);
}

void test_projection_step() {
  using Step = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, c10::string_view);
  const auto step = op<Step>("pyengine::projection_step");
  // L-inf, a = 0.25, eps = 0.125: x - a*sign(g) is clipped to [x0 - eps, x0 + eps], then to [0, 1].
  const at::Tensor x = tensor({0.5, 0.9, 0.1, 0.3}, {1, 4}), g = tensor({1, -1, 0, -1}, {1, 4}),
                   x0 = tensor({0.5, 0.8, 0.2, 0.0}, {1, 4});
  expect_close(step.call(x, g, x0, 0.25, 0.125, "linf"), tensor({0.375, 0.925, 0.1, 0.125}, {1, 4}),
               "projection_step linf");
  // L2, a = 0.5, eps = 0.2. Image 0: g/|g| = (0.6, 0.8), delta = (-0.3, -0.4) has norm 0.5, scaled
  // by 0.4 onto the ball. Image 1: g/|g| = (0, -1), delta = (0, 0.1) is inside the ball.
  const at::Tensor x2 = tensor({0.5, 0.5, 0.9, 0.1}, {2, 2}), g2 = tensor({3, 4, 0, -2}, {2, 2}),
                   x02 = tensor({0.5, 0.5, 0.9, 0.5}, {2, 2});
  expect_close(step.call(x2, g2, x02, 0.5, 0.2, "l2"), tensor({0.38, 0.34, 0.9, 0.6}, {2, 2}), "projection_step l2");

  using InPlace = void(at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, c10::string_view);
  at::Tensor target = x.clone();
  op<InPlace>("pyengine::projection_step_").call(target, g, x0, 0.25, 0.125, "linf");
  expect_close(target, tensor({0.375, 0.925, 0.1, 0.125}, {1, 4}), "projection_step_ linf (in place)");

  // Element 2 stays inside the ball (gradient to x); the others sit on a face (gradient to x0).
  using Backward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&, double, double, c10::string_view);
  const auto [gx, gx0] = op<Backward>("pyengine::_projection_step_backward")
                             .call(at::ones_like(x), x, g, x0, 0.25, 0.125, "linf");
  expect_close(gx, tensor({0, 0, 1, 0}, {1, 4}), "_projection_step_backward linf grad_x");
  expect_close(gx0, tensor({1, 1, 0, 1}, {1, 4}), "_projection_step_backward linf grad_x0");
}

void test_contrastive_loss() {
  using Loss = at::Tensor(const at::Tensor&, int64_t, double, const std::optional<at::Tensor>&, bool);
  const auto loss = op<Loss>("pyengine::contrastive_loss");
  // Two images, two views each, identical views: image 0 along e1, image 1 along e2; T = 1.
  const at::Tensor z = tensor({1, 0, 0, 1, 2, 0, 0, 3}, {4, 2}), bank = tensor({-1, 0}, {1, 2});
  // Batch negatives, no bank: every anchor sees sims (1, 0, 0): log(e + 2) - 1.
  const double e = std::exp(1.0);
  expect_close(loss.call(z, 2, 1.0, std::nullopt, true), tensor({std::log(e + 2) - 1, std::log(e + 2) - 1}, {2}),
               "contrastive_loss batch negatives");
  // Plus the bank row -e1: sim -1 for image 0's anchors, 0 for image 1's.
  expect_close(loss.call(z, 2, 1.0, bank, true), tensor({std::log(e + 2 + 1 / e) - 1, std::log(e + 3) - 1}, {2}),
               "contrastive_loss batch negatives + bank");
  // Positives only: the loss of identical views is 0; with the bank, log(e + e^s) - 1.
  expect_close(loss.call(z, 2, 1.0, bank, false), tensor({std::log(e + 1 / e) - 1, std::log(e + 1) - 1}, {2}),
               "contrastive_loss positives + bank");

  // The loss depends on each row only through its direction, so each row's gradient is
  // orthogonal to it; and it matches a central difference.
  using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double, const std::optional<at::Tensor>&,
                              bool);
  const at::Tensor zr = at::randn({6, 3}, at::kDouble), br = at::randn({4, 3}, at::kDouble);
  const at::Tensor grad = op<Backward>("pyengine::_contrastive_loss_backward")
                              .call(at::ones({3}, at::kDouble), zr, 2, 0.5, br, true);
  expect_close((grad * zr).sum(1), at::zeros({6}, at::kDouble), "_contrastive_loss_backward orthogonal to z", 1e-9);
  const double h = 1e-6;
  at::Tensor plus = zr.clone(), minus = zr.clone();
  plus[1][2] += h;
  minus[1][2] -= h;
  const auto total = [&](const at::Tensor& t) { return loss.call(t, 2, 0.5, br, true).sum().item<double>(); };
  const double numeric = (total(plus) - total(minus)) / (2 * h);
  expect_close(grad[1][2], at::scalar_tensor(numeric, at::kDouble), "_contrastive_loss_backward central difference",
               1e-6);
}

void test_sample_views() {
  if (!c10::Dispatcher::singleton().findSchema({"pyengine::sample_views", ""}).has_value()) {
    std::printf("skip sample_views (not registered)\n");
    return;
  }
  using Views = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, std::optional<at::ScalarType>, bool);
  const auto views = op<Views>("pyengine::sample_views");
  const at::Tensor x = at::arange(12, at::kFloat).reshape({1, 3, 2, 2}) / 12;
  // Columns: top, left, height, width, flip, brightness, contrast, saturation, hue, grayscale.
  const at::Tensor identity = tensor({0, 0, 1, 1, 0, 1, 1, 1, 0, 0}, {1, 10});
  expect_close(views.call(x, identity, 2, 2, std::nullopt, false), x, "sample_views identity");
  const at::Tensor flip = tensor({0, 0, 1, 1, 1, 1, 1, 1, 0, 0}, {1, 10});
  expect_close(views.call(x, flip, 2, 2, std::nullopt, false), x.flip({3}), "sample_views flip");
}

}  // namespace

int main() {
  test_projection_step();
  test_contrastive_loss();
  test_sample_views();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
