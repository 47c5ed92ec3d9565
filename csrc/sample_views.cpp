// Schemas of sample_views and its backward, and the argument checks both kernels share.
//
// params is float32 [M, 10] on every path, fp64 x included: crop coordinates and the hue
// rotation are computed in fp32, exactly as sample_views_reference does, so only x's dtype
// picks the accumulation type (fp64 for fp64 x, fp32 otherwise). params gets no gradient.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "checks.h"

namespace pyengine::ops::detail {

namespace {

constexpr int64_t kNumViewParams = 10;

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_x_and_params(const char* op, const at::Tensor& x, const at::Tensor& params, int64_t out_h,
                        int64_t out_w) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == 3, op, ": x must be 4-D [N, 3, H, W], got ", x.sizes());
  TORCH_CHECK(is_supported_float(x.scalar_type()), op,
              ": x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) >= 1 && x.size(3) >= 1, op, ": x must have H >= 1 and W >= 1, got ", x.sizes());
  TORCH_CHECK(params.dim() == 2 && params.size(1) == kNumViewParams, op, ": params must be 2-D [M, ",
              kNumViewParams, "], got ", params.sizes());
  TORCH_CHECK(params.scalar_type() == at::kFloat, op, ": params must be float32, got ", params.scalar_type());
  TORCH_CHECK(params.device() == x.device(), op, ": params must be on x's device ", x.device(), ", got ",
              params.device());
  const int64_t n = x.size(0), m = params.size(0);
  TORCH_CHECK(n == 0 ? m == 0 : m % n == 0, op, ": params must have a multiple of N = ", n,
              " rows (V views per image), got M = ", m);
  TORCH_CHECK(out_h >= 1 && out_w >= 1, op, ": out_h and out_w must be >= 1, got ", out_h, " and ", out_w);
}

}  // namespace

at::Tensor checked_views_output(const at::Tensor& x, const at::Tensor& params, int64_t out_h, int64_t out_w,
                                std::optional<at::ScalarType> out_dtype, bool channels_last) {
  check_x_and_params("sample_views", x, params, out_h, out_w);
  const auto dtype = out_dtype.value_or(x.scalar_type());
  TORCH_CHECK(is_supported_float(dtype),
              "sample_views: out_dtype must be float32, float64, float16 or bfloat16, got ", dtype);
  return at::empty({params.size(0), 3, out_h, out_w},
                   x.options().dtype(dtype).memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                        : at::MemoryFormat::Contiguous));
}

void check_views_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& params, int64_t out_h,
                          int64_t out_w) {
  check_x_and_params("_sample_views_backward", x, params, out_h, out_w);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == params.size(0) && grad.size(1) == 3 && grad.size(2) == out_h &&
                  grad.size(3) == out_w,
              "_sample_views_backward: grad must be [", params.size(0), ", 3, ", out_h, ", ", out_w, "], got ",
              grad.sizes());
  TORCH_CHECK(is_supported_float(grad.scalar_type()),
              "_sample_views_backward: grad must be float32, float64, float16 or bfloat16, got ", grad.scalar_type());
  TORCH_CHECK(grad.device() == x.device(), "_sample_views_backward: grad must be on x's device ", x.device(),
              ", got ", grad.device());
}

}  // namespace pyengine::ops::detail

TORCH_LIBRARY_FRAGMENT(pyengine, m) {
  m.def(
      "sample_views(Tensor x, Tensor params, int out_h, int out_w, ScalarType? out_dtype, bool channels_last) "
      "-> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def("_sample_views_backward(Tensor grad, Tensor x, Tensor params, int out_h, int out_w) -> Tensor",
        {at::Tag::pt2_compliant_tag});
}
