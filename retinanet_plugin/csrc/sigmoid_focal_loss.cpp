// The sigmoid focal loss op on any device: argument checks, then the shared CPU or CUDA driver with
// a LossSpec of kind SigmoidFocal (math in sigmoid_focal_loss.h).
#include "sigmoid_focal_loss.h"
#include "loss_checks.h"

namespace retinanet_plugin {
namespace {

LossSpec sigmoid_focal_loss_spec(const char* op_name, double gamma, double alpha) {
  LossSpec spec;
  spec.op_name = op_name;
  spec.focal = make_focal_loss_params(gamma, alpha);
  return spec;
}

}  // namespace

at::Tensor sigmoid_focal_loss_with(LossForward& forward, const at::Tensor& logits,
    const at::Tensor& labels, const std::optional<at::Tensor>& normalizer, double gamma,
    double alpha, c10::string_view reduction, double divisor) {
  const char* op_name = "sigmoid_focal_loss";
  const Reduction mode =
      check_loss_args(op_name, logits, labels, normalizer, "gamma", gamma, reduction);
  return forward(
      sigmoid_focal_loss_spec(op_name, gamma, alpha), logits, labels, normalizer, mode, divisor);
}

at::Tensor sigmoid_focal_loss_backward_with(LossBackward& backward, const at::Tensor& grad,
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& normalizer,
    double gamma, double alpha, c10::string_view reduction, double divisor) {
  const char* op_name = "sigmoid_focal_loss_backward";
  const Reduction mode =
      check_loss_args(op_name, logits, labels, normalizer, "gamma", gamma, reduction);
  check_loss_grad(op_name, grad, logits, mode);
  const LossSpec spec = sigmoid_focal_loss_spec(op_name, gamma, alpha);
  return backward(spec, grad, logits, labels, normalizer, mode, divisor);
}

}  // namespace retinanet_plugin
