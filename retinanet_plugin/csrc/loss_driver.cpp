// The helpers and errors the device drivers share, and the focal loss constants (loss_driver.h).
#include "loss_driver.h"
#include "cuda/launch_geometry.h"

#include <c10/util/Exception.h>

namespace retinanet_plugin {

FocalLossParams make_focal_loss_params(double gamma, double alpha) {
  FocalLossParams params;
  params.gamma = gamma;
  params.gamma_is_two = gamma == 2.0;
  const bool weighted = alpha >= 0;
  params.weight_positive = weighted ? alpha : 1.0;
  params.weight_negative = weighted ? 1.0 - alpha : 1.0;
  return params;
}

at::ScalarType focal_loss_accumulate_type(at::ScalarType logits_dtype) {
  return logits_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

std::vector<int64_t> output_strides(const at::Tensor& logits) {
  const int64_t rows = logits.size(0);
  const int64_t cols = logits.size(1);
  if (logits.is_cuda() && cuda::is_column_major_layout(rows, cols, logits.stride(0))) {
    // column-major: the CUDA kernels walk it coalesced and write the results the same way
    return {1, rows};
  }
  return {cols, 1};
}

at::Tensor with_unit_column_stride(const at::Tensor& logits) {
  if (logits.size(1) <= 1 || logits.stride(1) == 1) {
    return logits;
  }
  return logits.contiguous();
}

void throw_bad_label(const char* op_name, int64_t row, int64_t label, int64_t num_classes) {
  TORCH_CHECK_INDEX(
      false, op_name, ": labels must be in [-1, K] = [-1, ", num_classes,
      "] (0..K-1 positive class, K background, -1 ignored); row ", row, " has label ", label);
}

void throw_bad_target(const char* op_name, int64_t row, int64_t column, double target) {
  TORCH_CHECK_VALUE(
      false, op_name, ": targets must be in [0, 1]; targets[", row, ", ", column, "] is ", target);
}

void throw_bad_quality(const char* op_name, int64_t row, double quality) {
  TORCH_CHECK_VALUE(
      false, op_name, ": quality must be in [0, 1] on rows with a class label (0..K-1); row ", row,
      " has quality ", quality);
}

bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace retinanet_plugin
