// The argument checks every loss op's front runs before it calls a device driver (loss_driver.h).
// Each takes the op's name, which goes into every error message, and returns the parsed reduction.
#pragma once

#include "loss_driver.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

namespace retinanet_plugin {

// Checks the arguments of the label losses (sigmoid focal, quality focal): logits [N, K],
// integer labels [N], the normalizer, the focusing exponent called `exponent_name` ("gamma",
// "beta") and the reduction.
Reduction check_loss_args(const char* op_name, const at::Tensor& logits, const at::Tensor& labels,
    const std::optional<at::Tensor>& normalizer, const char* exponent_name, double exponent,
    c10::string_view reduction);

// The same for float targets [N, K] in place of labels (the dense focal loss).
Reduction check_dense_loss_args(const char* op_name, const at::Tensor& logits,
    const at::Tensor& targets, const std::optional<at::Tensor>& normalizer, double gamma,
    c10::string_view reduction);

// Checks the upstream gradient of a backward op: a 1-element tensor for sum/mean, [N, K] for none.
void check_loss_grad(
    const char* op_name, const at::Tensor& grad, const at::Tensor& logits, Reduction reduction);

}  // namespace retinanet_plugin
