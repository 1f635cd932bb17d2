// The quality focal loss op on any device: argument checks, then the shared CPU or CUDA driver with
// a LossSpec of kind QualityFocal (math in quality_focal_loss.h).
#include "quality_focal_loss.h"
#include "loss_checks.h"

#include <c10/util/Exception.h>

namespace retinanet_plugin {
namespace {

LossSpec quality_focal_loss_spec(
    const char* op_name, const at::Tensor& logits, const at::Tensor& quality, double beta) {
  LossSpec spec;
  spec.kind = LossKind::QualityFocal;
  spec.op_name = op_name;
  spec.beta = beta;
  // [N]: a cheap copy at most
  spec.quality = quality.to(focal_loss_accumulate_type(logits.scalar_type()));
  return spec;
}

}  // namespace

Reduction check_quality_focal_loss_args(const char* op_name, const at::Tensor& logits,
    const at::Tensor& labels, const at::Tensor& quality,
    const std::optional<at::Tensor>& normalizer, double beta, c10::string_view reduction) {
  const Reduction mode =
      check_loss_args(op_name, logits, labels, normalizer, "beta", beta, reduction);
  TORCH_CHECK(
      quality.dim() == 1 && quality.size(0) == logits.size(0), op_name,
      ": quality must be 1-D [N] with N = ", logits.size(0), " (the rows of logits), got shape ",
      quality.sizes());
  TORCH_CHECK(
      quality.is_floating_point(), op_name,
      ": quality must be a floating point tensor (targets in [0, 1]), got ", quality.scalar_type());
  TORCH_CHECK(
      quality.device() == logits.device(), op_name, ": quality is on ", quality.device(),
      " but logits are on ", logits.device());
  return mode;
}

at::Tensor quality_focal_loss_with(LossForward& forward, const at::Tensor& logits,
    const at::Tensor& labels, const at::Tensor& quality,
    const std::optional<at::Tensor>& normalizer, double beta, c10::string_view reduction,
    double divisor) {
  const char* op_name = "quality_focal_loss";
  const Reduction mode = check_quality_focal_loss_args(
      op_name, logits, labels, quality, normalizer, beta, reduction);
  const LossSpec spec = quality_focal_loss_spec(op_name, logits, quality, beta);
  return forward(spec, logits, labels, normalizer, mode, divisor);
}

at::Tensor quality_focal_loss_backward_with(LossBackward& backward, const at::Tensor& grad,
    const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& quality,
    const std::optional<at::Tensor>& normalizer, double beta, c10::string_view reduction,
    double divisor) {
  const char* op_name = "quality_focal_loss_backward";
  const Reduction mode = check_quality_focal_loss_args(
      op_name, logits, labels, quality, normalizer, beta, reduction);
  check_loss_grad(op_name, grad, logits, mode);
  const LossSpec spec = quality_focal_loss_spec(op_name, logits, quality, beta);
  return backward(spec, grad, logits, labels, normalizer, mode, divisor);
}

}  // namespace retinanet_plugin
