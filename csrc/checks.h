// Argument checks shared by the CPU and CUDA kernels of every op.
// They are defined beside each op's schema (csrc/<op>.cpp); every message names the op, the
// argument, what was expected and what came.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

namespace pyengine::ops::detail {

// z [V*N, D] floating, n_views >= 2 dividing V*N, temperature > 0, bank [M, D] on z's device.
void check_contrastive_loss(const char* op, const at::Tensor& z, int64_t n_views, double temperature,
                            const std::optional<at::Tensor>& bank);

// Adds grad [N] (the per-image loss gradient) to the forward checks.
void check_contrastive_loss_backward(const at::Tensor& grad, const at::Tensor& z, int64_t n_views,
                                     double temperature, const std::optional<at::Tensor>& bank);

enum class Norm { Linf, L2 };

// x, grad, x0 of one shape [N, ...], device and floating dtype; step_size, eps >= 0; norm in {linf, l2}.
Norm check_projection_step(const char* op, const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x0,
                           double step_size, double eps, c10::string_view norm);

// Adds grad_out, shaped like x, to the forward checks.
Norm check_projection_step_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& grad,
                                    const at::Tensor& x0, double step_size, double eps, c10::string_view norm);

// x [N, 3, H, W] floating, params float32 [M, 10] with M a multiple of N, out sizes >= 1;
// returns the empty output in the asked dtype and memory format.
at::Tensor checked_views_output(const at::Tensor& x, const at::Tensor& params, int64_t out_h, int64_t out_w,
                                std::optional<at::ScalarType> out_dtype, bool channels_last);

// Adds grad [M, 3, out_h, out_w] to the forward checks.
void check_views_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& params, int64_t out_h,
                          int64_t out_w);

}  // namespace pyengine::ops::detail
