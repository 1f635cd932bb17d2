// Sigmoid focal loss of float targets (retinanet_plugin::sigmoid_focal_loss_dense): the loss that
// fvcore's and torchvision's sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction) compute,
// for one-hot, multi-label or soft targets t in [0, 1] of the logits' shape, fused into one pass
// without [N, K] intermediates. Its front runs the shared argument checks (loss_checks.h), then the
// device's driver (loss_driver.h).
//
// Math. For one logit x with p = sigmoid(x) and its target t:
//   BCE = t softplus(-x) + (1 - t) softplus(x),   m = 1 - p_t = t (1 - p) + (1 - t) p,
//   loss = w m^g BCE,   w = alpha t + (1 - alpha) (1 - t)  (w = 1 when alpha < 0)
// With dp/dx = p (1 - p), dm/dx = (1 - 2t) p (1 - p), dBCE/dx = p - t:
//   dloss/dx = w m^g [ (p - t) + g (p (1 - p) / m) (1 - 2t) BCE ]
// p (1 - p) / m <= 1 for t in [0, 1] (m >= min(p, 1 - p)), and where m = 0 (t in {0, 1}, p
// saturated) the whole term carries m^g = 0, so no 0 * inf appears for any g >= 0. For t in {0, 1}
// the values are those of sigmoid_focal_loss with that label (sigmoid_focal_loss.h); p - t is
// evaluated as (1 - t) p - t (1 - p), precise near t. Evaluated with one exp and one log1p per
// element like the other losses (loss_elements.h: DenseFocalElement).
//
// Reductions: "none" [N, K], "sum", "mean" over all N * K elements (as fvcore and torchvision),
// each divided by divisor * normalizer. No gradient flows to the targets. A target outside [0, 1]
// or NaN raises on the CPU and trips a device-side assertion on CUDA.
#pragma once

#include "loss_driver.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

namespace retinanet_plugin {

// The op on the device whose driver is given (loss_forward_cpu / loss_forward_cuda and the backward
// ones); ops.cpp registers it once per device, with that device's driver bound (OnDriver).
at::Tensor sigmoid_focal_loss_dense_with(LossForward& forward, const at::Tensor& logits,
    const at::Tensor& targets, const std::optional<at::Tensor>& normalizer, double gamma,
    double alpha, c10::string_view reduction, double divisor);
at::Tensor sigmoid_focal_loss_dense_backward_with(LossBackward& backward, const at::Tensor& grad,
    const at::Tensor& logits, const at::Tensor& targets,
    const std::optional<at::Tensor>& normalizer, double gamma, double alpha,
    c10::string_view reduction, double divisor);

}  // namespace retinanet_plugin
