// Schemas of projection_step (one step of Algorithm 1 and its projection), its in-place
// variant for no-grad loops, and the backward of the functional one (gradients wrt x and x0;
// grad, the step direction, gets none), plus the argument checks all kernels share.
#include <torch/library.h>

#include "checks.h"

namespace pyengine::ops::detail {

Norm check_projection_step(const char* op, const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x0,
                           double step_size, double eps, c10::string_view norm) {
  TORCH_CHECK(norm == "linf" || norm == "l2", op, ": norm must be 'linf' or 'l2', got '", norm, "'");
  const Norm parsed = norm == "l2" ? Norm::L2 : Norm::Linf;
  TORCH_CHECK(x.dim() >= (parsed == Norm::L2 ? 2 : 1), op, ": x must be [N, ...] with ",
              parsed == Norm::L2 ? "at least 2 dims (l2 norms are per image)" : "at least 1 dim", ", got ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be a floating tensor, got ", x.scalar_type());
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad must have x's shape ", x.sizes(), ", got ", grad.sizes());
  TORCH_CHECK(x0.sizes() == x.sizes(), op, ": x0 must have x's shape ", x.sizes(), ", got ", x0.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), op, ": grad must have x's dtype ", x.scalar_type(), ", got ",
              grad.scalar_type());
  TORCH_CHECK(x0.scalar_type() == x.scalar_type(), op, ": x0 must have x's dtype ", x.scalar_type(), ", got ",
              x0.scalar_type());
  TORCH_CHECK(grad.device() == x.device(), op, ": grad must be on x's device ", x.device(), ", got ",
              grad.device());
  TORCH_CHECK(x0.device() == x.device(), op, ": x0 must be on x's device ", x.device(), ", got ", x0.device());
  TORCH_CHECK(step_size >= 0, op, ": step_size must be >= 0, got ", step_size);
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  return parsed;
}

Norm check_projection_step_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& grad,
                                    const at::Tensor& x0, double step_size, double eps, c10::string_view norm) {
  const Norm parsed = check_projection_step("_projection_step_backward", x, grad, x0, step_size, eps, norm);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "_projection_step_backward: grad_out must have x's shape ", x.sizes(),
              ", got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), "_projection_step_backward: grad_out must have x's dtype ",
              x.scalar_type(), ", got ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == x.device(), "_projection_step_backward: grad_out must be on x's device ",
              x.device(), ", got ", grad_out.device());
  return parsed;
}

}  // namespace pyengine::ops::detail

TORCH_LIBRARY_FRAGMENT(pyengine, m) {
  m.def("projection_step(Tensor x, Tensor grad, Tensor x0, float step_size, float eps, str norm) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // Returns nothing: torch.compile can functionalize a custom op that mutates an input, not one
  // whose output aliases it.
  m.def("projection_step_(Tensor(a!) x, Tensor grad, Tensor x0, float step_size, float eps, str norm) -> ()",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "_projection_step_backward(Tensor grad_out, Tensor x, Tensor grad, Tensor x0, float step_size, float eps, "
      "str norm) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}
