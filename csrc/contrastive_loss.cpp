// Schemas of contrastive_loss (Eq. 4 of Mao et al., per image) and its backward, and the
// argument checks both kernels share. The loss is fp32 (fp64 for fp64 z) whatever z's dtype;
// the bank gets no gradient: it holds fixed negatives.
#include <torch/library.h>

#include "checks.h"

namespace pyengine::ops::detail {

void check_contrastive_loss(const char* op, const at::Tensor& z, int64_t n_views, double temperature,
                            const std::optional<at::Tensor>& bank) {
  TORCH_CHECK(z.dim() == 2, op, ": z must be 2-D [V*N, D], got ", z.sizes());
  TORCH_CHECK(at::isFloatingType(z.scalar_type()), op, ": z must be a floating tensor, got ", z.scalar_type());
  TORCH_CHECK(n_views >= 2, op, ": n_views must be >= 2, got ", n_views);
  TORCH_CHECK(z.size(0) % n_views == 0, op, ": z must have a multiple of n_views = ", n_views,
              " rows (V views per image), got ", z.size(0));
  TORCH_CHECK(temperature > 0, op, ": temperature must be > 0, got ", temperature);
  if (bank.has_value()) {
    TORCH_CHECK(bank->dim() == 2 && bank->size(1) == z.size(1), op, ": bank must be 2-D [M, ", z.size(1),
                "] (z's feature size), got ", bank->sizes());
    TORCH_CHECK(at::isFloatingType(bank->scalar_type()), op, ": bank must be a floating tensor, got ",
                bank->scalar_type());
    TORCH_CHECK(bank->device() == z.device(), op, ": bank must be on z's device ", z.device(), ", got ",
                bank->device());
  }
}

void check_contrastive_loss_backward(const at::Tensor& grad, const at::Tensor& z, int64_t n_views,
                                     double temperature, const std::optional<at::Tensor>& bank) {
  check_contrastive_loss("_contrastive_loss_backward", z, n_views, temperature, bank);
  const int64_t n = z.size(0) / n_views;
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == n, "_contrastive_loss_backward: grad must be [", n,
              "] (one per image), got ", grad.sizes());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()),
              "_contrastive_loss_backward: grad must be a floating tensor, got ", grad.scalar_type());
  TORCH_CHECK(grad.device() == z.device(), "_contrastive_loss_backward: grad must be on z's device ", z.device(),
              ", got ", grad.device());
}

}  // namespace pyengine::ops::detail

TORCH_LIBRARY_FRAGMENT(pyengine, m) {
  m.def("contrastive_loss(Tensor z, int n_views, float temperature, Tensor? bank, bool batch_negatives) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "_contrastive_loss_backward(Tensor grad, Tensor z, int n_views, float temperature, Tensor? bank, "
      "bool batch_negatives) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}
