// The argument checks shared by the fronts of all loss ops (loss_checks.h).
#include "loss_checks.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <string>

namespace retinanet_plugin {

static Reduction parse_reduction(const char* op_name, c10::string_view reduction) {
  if (reduction == "none") {
    return Reduction::None;
  }
  if (reduction == "sum") {
    return Reduction::Sum;
  }
  if (reduction == "mean") {
    return Reduction::Mean;
  }
  TORCH_CHECK_VALUE(false, op_name, ": reduction must be one of 'none', 'sum', 'mean', got '",
      std::string(reduction), "'");
}

static void check_logits(const char* op_name, const at::Tensor& logits) {
  TORCH_CHECK(
      logits.dim() == 2, op_name, ": logits must be 2-D [N, K], got shape ", logits.sizes());
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(
      dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
      op_name, ": logits must be float32, float64, float16 or bfloat16, got ", dtype);
}

static void check_normalizer(
    const char* op_name, const at::Tensor& logits, const std::optional<at::Tensor>& normalizer) {
  if (!normalizer.has_value()) {
    return;
  }
  const at::Tensor& norm = *normalizer;
  TORCH_CHECK(
      norm.numel() == 1 && norm.dim() <= 1, op_name,
      ": normalizer must be a 0-dim tensor (or a float), got shape ", norm.sizes());
  TORCH_CHECK(
      norm.device() == logits.device() || norm.device().is_cpu(), op_name, ": normalizer is on ",
      norm.device(), " but logits are on ", logits.device(),
      "; put it on the logits' device (or the CPU)");
  TORCH_CHECK(
      !norm.is_complex() && norm.scalar_type() != at::kBool, op_name,
      ": normalizer must be a real number, got ", norm.scalar_type());
}

static void check_exponent(const char* op_name, const char* exponent_name, double exponent) {
  TORCH_CHECK_VALUE(
      std::isfinite(exponent) && exponent >= 0, op_name, ": ", exponent_name,
      " must be finite and >= 0, got ", exponent);
}

Reduction check_loss_args(
    const char* op_name,
    const at::Tensor& logits,
    const at::Tensor& labels,
    const std::optional<at::Tensor>& normalizer,
    const char* exponent_name,
    double exponent,
    c10::string_view reduction) {
  check_logits(op_name, logits);
  TORCH_CHECK(
      labels.dim() == 1 && labels.size(0) == logits.size(0), op_name,
      ": labels must be 1-D [N] with N = ", logits.size(0), " (the rows of logits), got shape ",
      labels.sizes());
  TORCH_CHECK(
      labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt, op_name,
      ": labels must be int64 or int32 (0..K-1 positive class, K background, -1 ignored), got ",
      labels.scalar_type());
  TORCH_CHECK(
      labels.device() == logits.device(), op_name, ": labels are on ", labels.device(),
      " but logits are on ", logits.device());
  check_normalizer(op_name, logits, normalizer);
  check_exponent(op_name, exponent_name, exponent);
  return parse_reduction(op_name, reduction);
}

Reduction check_dense_loss_args(
    const char* op_name,
    const at::Tensor& logits,
    const at::Tensor& targets,
    const std::optional<at::Tensor>& normalizer,
    double gamma,
    c10::string_view reduction) {
  check_logits(op_name, logits);
  TORCH_CHECK(
      targets.sizes() == logits.sizes(), op_name, ": targets must have the logits' shape ",
      logits.sizes(), " (one float target in [0, 1] per logit), got ", targets.sizes());
  TORCH_CHECK(
      targets.is_floating_point(), op_name,
      ": targets must be a floating point tensor (one-hot, multi-label or soft targets in [0, 1]), "
      "got ", targets.scalar_type(), "; for integer class labels use sigmoid_focal_loss");
  TORCH_CHECK(
      targets.device() == logits.device(), op_name, ": targets are on ", targets.device(),
      " but logits are on ", logits.device());
  check_normalizer(op_name, logits, normalizer);
  check_exponent(op_name, "gamma", gamma);
  return parse_reduction(op_name, reduction);
}

void check_loss_grad(
    const char* op_name, const at::Tensor& grad, const at::Tensor& logits, Reduction reduction) {
  TORCH_CHECK(
      grad.device() == logits.device(), op_name, ": grad is on ", grad.device(),
      " but logits are on ", logits.device());
  TORCH_CHECK(
      grad.is_floating_point(), op_name, ": grad must be a floating point tensor, got ",
      grad.scalar_type());
  if (reduction == Reduction::None) {
    TORCH_CHECK(
        grad.sizes() == logits.sizes(), op_name,
        ": for reduction='none' grad must have the logits' shape ", logits.sizes(), ", got ",
        grad.sizes());
  } else {
    TORCH_CHECK(
        grad.numel() == 1 && grad.dim() <= 1, op_name,
        ": for reduction='sum'/'mean' grad must be a 0-dim tensor, got shape ", grad.sizes());
  }
}

}  // namespace retinanet_plugin
