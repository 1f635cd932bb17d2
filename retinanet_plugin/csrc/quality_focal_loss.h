// Quality focal loss op (retinanet_plugin::quality_focal_loss), from "Generalized Focal Loss" (Li
// et al., 2020): its front, from the registered kernel to the device's driver (loss_driver.h) after
// the shared argument checks (loss_checks.h) and its own of quality.
//
// Math. For one logit x with s = sigmoid(x) and target y (the row's quality on the labelled column,
// 0 on every other column and on background rows):
//   loss = |y - s|^b * BCE(x, y),
//   BCE = -(y log s + (1 - y) log(1 - s)) = y softplus(-x) + (1 - y) softplus(x)
// With d = s - y, ds/dx = s (1 - s) and dBCE/dx = s - y = d:
//   dloss/dx = |d|^b d + b |d|^(b-1) sign(d) s (1 - s) BCE
//            = |d|^b d + b (|d|^b / d) s (1 - s) BCE    (d != 0)
// and 0 where d = 0 (the minimum of |d|^b: the derivative for b >= 1; for b < 1 the one-sided
// derivatives are infinite there and 0 is the subgradient used; for 0 < b < 1 the gradient grows
// without bound as d -> 0).
// For b = 2: dloss/dx = d (d^2 + 2 s (1 - s) BCE); for b = 0 (plain BCE): d.
// y = 1 gives the sigmoid focal loss of a positive with alpha off and gamma = b, y = 0 that of a
// negative, so hard targets (quality 1 on every labelled row) give
// sigmoid_focal_loss(alpha = -1, gamma = beta).
//
// Stable evaluation, one exp and one log1p per element: with e = exp(-|x|) and l = log1p(e),
//   softplus(+-x) = max(+-x, 0) + l,  s and 1 - s are 1/(1+e) and e/(1+e) (which is which by the
//   sign of x),
//   d = s - y for x < 0 and (1 - y) - (1 - s) for x >= 0 (d keeps its precision where s is near 1),
//   BCE as the convex combination above (no cancellation), |d|^b = d * d for b = 2, else
//   pow(|d|, b).
// No term overflows for any finite x, so logits of +-1e4 give finite losses and gradients in every
// dtype.
//
// quality is a target: no gradient flows to it. Rows labelled -1 (ignored) have no loss and a zero
// gradient; rows labelled K (background) have y = 0 on every column; on both, quality is not read.
#pragma once

#include "loss_driver.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

namespace retinanet_plugin {

// Checks the quality focal loss arguments (those of check_loss_args, and quality: [N] floating
// point on the logits' device; its values are checked by the CPU kernels, asserted on the device by
// the CUDA ones) and returns the reduction.
Reduction check_quality_focal_loss_args(const char* op_name, const at::Tensor& logits,
    const at::Tensor& labels, const at::Tensor& quality,
    const std::optional<at::Tensor>& normalizer, double beta, c10::string_view reduction);

// The op on the device whose driver is given (loss_forward_cpu / loss_forward_cuda and the backward
// ones); ops.cpp registers it once per device, with that device's driver bound (OnDriver).
at::Tensor quality_focal_loss_with(LossForward& forward, const at::Tensor& logits,
    const at::Tensor& labels, const at::Tensor& quality,
    const std::optional<at::Tensor>& normalizer, double beta, c10::string_view reduction,
    double divisor);
at::Tensor quality_focal_loss_backward_with(LossBackward& backward, const at::Tensor& grad,
    const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& quality,
    const std::optional<at::Tensor>& normalizer, double beta, c10::string_view reduction,
    double divisor);

}  // namespace retinanet_plugin
