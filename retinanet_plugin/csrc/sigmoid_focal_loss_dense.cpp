// The sigmoid focal loss of float targets on any device: argument checks, then the shared CPU or
// CUDA driver with a LossSpec of kind DenseFocal (math in sigmoid_focal_loss_dense.h).
#include "sigmoid_focal_loss_dense.h"
#include "loss_checks.h"

namespace retinanet_plugin {
namespace {

LossSpec dense_focal_loss_spec(const char* op_name, const at::Tensor& logits,
    const at::Tensor& targets, double gamma, double alpha) {
  LossSpec spec;
  spec.kind = LossKind::DenseFocal;
  spec.op_name = op_name;
  spec.focal = make_focal_loss_params(gamma, alpha);
  // no copy for fp32 targets
  spec.targets = targets.to(focal_loss_accumulate_type(logits.scalar_type()));
  return spec;
}

}  // namespace

at::Tensor sigmoid_focal_loss_dense_with(LossForward& forward, const at::Tensor& logits,
    const at::Tensor& targets, const std::optional<at::Tensor>& normalizer, double gamma,
    double alpha, c10::string_view reduction, double divisor) {
  const char* op_name = "sigmoid_focal_loss_dense";
  const Reduction mode =
      check_dense_loss_args(op_name, logits, targets, normalizer, gamma, reduction);
  const LossSpec spec = dense_focal_loss_spec(op_name, logits, targets, gamma, alpha);
  return forward(spec, logits, at::Tensor(), normalizer, mode, divisor);
}

at::Tensor sigmoid_focal_loss_dense_backward_with(LossBackward& backward, const at::Tensor& grad,
    const at::Tensor& logits, const at::Tensor& targets,
    const std::optional<at::Tensor>& normalizer, double gamma, double alpha,
    c10::string_view reduction, double divisor) {
  const char* op_name = "sigmoid_focal_loss_dense_backward";
  const Reduction mode =
      check_dense_loss_args(op_name, logits, targets, normalizer, gamma, reduction);
  check_loss_grad(op_name, grad, logits, mode);
  const LossSpec spec = dense_focal_loss_spec(op_name, logits, targets, gamma, alpha);
  return backward(spec, grad, logits, at::Tensor(), normalizer, mode, divisor);
}

}  // namespace retinanet_plugin
