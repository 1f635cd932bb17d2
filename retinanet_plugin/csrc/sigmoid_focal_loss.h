// Sigmoid focal loss op (retinanet_plugin::sigmoid_focal_loss): its front, from the registered
// kernel to the device's driver (loss_driver.h) after the shared argument checks (loss_checks.h).
//
// Math (Lin et al., "Focal Loss for Dense Object Detection"). For one logit x with p = sigmoid(x):
//   positive element (column == label):  loss = -a_pos * (1 - p)^g * log(p)
//   negative element (any other column): loss = -a_neg * p^g       * log(1 - p)
// with a_pos = alpha, a_neg = 1 - alpha (both 1 when alpha < 0, as in fvcore) and g = gamma.
//
// Both cases are one formula in the "signed logit" z = s * x, s = -1 for a positive element and +1
// for a negative one, since sigmoid(-x) = 1 - sigmoid(x). With q = sigmoid(z) and w = a_pos or
// a_neg:
//   loss = w * q^g * softplus(z)                    (softplus(z) = log(1 + e^z) = -log(1 - q))
// Derivative (dq/dz = q (1 - q), d softplus(z)/dz = q):
//   dloss/dz = w * [g q^(g-1) q (1-q) softplus(z) + q^g q] = w * q^g * (q + g (1 - q) softplus(z))
//   dloss/dx = s * dloss/dz
// For a negative element this is (1-a) p^g (p + g (1-p) softplus(x)); for a positive one
// -a (1-p)^g ((1-p) + g p softplus(-x)). There is no q^(g-1) factor left, so nothing of the form
// 0 * inf appears for any g >= 0, and g = 0 gives exactly the binary cross-entropy w * softplus(z)
// with gradient s * w * q.
//
// Stable evaluation, one exp and one log1p per element: with e = exp(-|z|) in (0, 1],
//   l = log1p(e), softplus(z) = max(z, 0) + l, softplus(-z) = max(-z, 0) + l,
//   sigma(z) = 1/(1+e) if z >= 0 else e/(1+e), 1 - sigma(z) the other one,
//   q^g = exp(-g * softplus(-z))  (or q*q when g == 2).
// No term overflows for any finite x, so logits of +-1e4 give finite losses and gradients.
#pragma once

#include "loss_driver.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

namespace retinanet_plugin {

// The op on the device whose driver is given (loss_forward_cpu / loss_forward_cuda and the backward
// ones); ops.cpp registers it once per device, with that device's driver bound (OnDriver).
at::Tensor sigmoid_focal_loss_with(LossForward& forward, const at::Tensor& logits,
    const at::Tensor& labels, const std::optional<at::Tensor>& normalizer, double gamma,
    double alpha, c10::string_view reduction, double divisor);
at::Tensor sigmoid_focal_loss_backward_with(LossBackward& backward, const at::Tensor& grad,
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& normalizer,
    double gamma, double alpha, c10::string_view reduction, double divisor);

}  // namespace retinanet_plugin
