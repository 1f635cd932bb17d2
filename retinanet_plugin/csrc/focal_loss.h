// Sigmoid focal loss op (retinanet_plugin::sigmoid_focal_loss): shared declarations.
//
// Math (Lin et al., "Focal Loss for Dense Object Detection"). For one logit x with p = sigmoid(x):
//   positive element (column == label):  loss = -a_pos * (1 - p)^g * log(p)
//   negative element (any other column): loss = -a_neg * p^g       * log(1 - p)
// with a_pos = alpha, a_neg = 1 - alpha (both 1 when alpha < 0, as in fvcore) and g = gamma.
//
// Both cases are one formula in the "signed logit" z = s * x, s = -1 for a positive element and +1
// for a negative one, since sigmoid(-x) = 1 - sigmoid(x). With q = sigmoid(z) and w = a_pos or a_neg:
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

#include "loss_kind.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <vector>

namespace retinanet_plugin {

enum class Reduction { None, Sum, Mean };

// The constants of the loss, in double; kernels cast them to their accumulation type.
struct FocalLossParams {
  double gamma = 2.0;
  double weight_positive = 0.25;  // alpha, or 1 when alpha < 0
  double weight_negative = 0.75;  // 1 - alpha, or 1 when alpha < 0
  bool gamma_is_two = true;       // q^g computed as q * q
};

FocalLossParams make_focal_loss_params(double gamma, double alpha);

// What the shared kernels compute: the loss kind, its constants and, for the quality focal loss, the per-row
// targets. Built by each op's entry point, read by the CPU and CUDA drivers below.
struct LossSpec {
  LossKind kind = LossKind::SigmoidFocal;
  const char* op_name = "sigmoid_focal_loss";  // names the op in the errors the kernels raise
  FocalLossParams focal;                        // SigmoidFocal
  double beta = 2.0;                            // QualityFocal: exponent of |quality - sigmoid(x)|
  at::Tensor quality;                           // QualityFocal: [N] in the accumulation dtype, any stride
  at::Tensor targets;  // DenseFocal: [N, K] in the accumulation dtype, unit column stride (CPU) or any (CUDA)
};

// Checks the arguments every loss op shares (shapes, dtypes, devices, the focusing exponent called
// `exponent_name` ("gamma", "beta"), reduction) and returns the reduction. `op_name` goes into every error message.
Reduction check_loss_args(const char* op_name, const at::Tensor& logits, const at::Tensor& labels,
    const std::optional<at::Tensor>& normalizer, const char* exponent_name, double exponent,
    c10::string_view reduction);

// The same for float targets [N, K] in place of labels (the dense focal loss).
Reduction check_dense_loss_args(const char* op_name, const at::Tensor& logits, const at::Tensor& targets,
    const std::optional<at::Tensor>& normalizer, double gamma, c10::string_view reduction);

// Checks the upstream gradient of a backward op: a 1-element tensor for sum/mean, [N, K] for none.
void check_focal_loss_grad(const char* op_name, const at::Tensor& grad, const at::Tensor& logits, Reduction reduction);

// fp64 for fp64 logits, fp32 otherwise: the dtype of the accumulation and of the loss.
at::ScalarType focal_loss_accumulate_type(at::ScalarType logits_dtype);

// The strides of the [N, K] results (loss for reduction "none", gradient) of the drivers for these logits: those
// of a contiguous tensor, or on CUDA the column-major layout of column-major logits.
std::vector<int64_t> output_strides(const at::Tensor& logits);

// logits itself when its columns are adjacent in memory (any row stride), else a contiguous copy.
at::Tensor with_unit_column_stride(const at::Tensor& logits);

// Error for a label outside [-1, K] (CPU kernels; the CUDA kernels assert on the device).
[[noreturn]] void throw_bad_label(const char* op_name, int64_t row, int64_t label, int64_t num_classes);

// Error for a quality target outside [0, 1] or NaN on a labelled row (CPU kernels; CUDA asserts on the device).
[[noreturn]] void throw_bad_quality(const char* op_name, int64_t row, double quality);

// Error for a float target outside [0, 1] or NaN (CPU kernels of the dense focal loss; CUDA asserts on the device).
[[noreturn]] void throw_bad_target(const char* op_name, int64_t row, int64_t column, double target);

// Whether this build has the CUDA kernels (WITH_CUDA).
bool built_with_cuda();

// Which CPU kernel variant runs on this machine: "AVX512", "AVX2" or "DEFAULT".
std::string cpu_kernel_capability();

// ---- Drivers shared by the ops (arguments already checked): forward and backward of `spec` on one device ----
// Forward: [N, K] for Reduction::None, else a 0-dim tensor; fp32 (fp64 for fp64 logits). Backward: the gradient
// w.r.t. logits (logits dtype) given the upstream gradient `grad` of the forward's output. The [N, K] results are
// contiguous, except on CUDA for column-major logits (stride(0) == 1), whose layout they keep (output_strides()).
// `labels` is undefined for LossKind::DenseFocal (its targets are in the spec).
using LossForward = at::Tensor(const LossSpec& spec, const at::Tensor& logits, const at::Tensor& labels,
    const std::optional<at::Tensor>& normalizer, Reduction reduction, double divisor);
using LossBackward = at::Tensor(const LossSpec& spec, const at::Tensor& grad, const at::Tensor& logits,
    const at::Tensor& labels, const std::optional<at::Tensor>& normalizer, Reduction reduction, double divisor);
LossForward loss_forward_cpu;    // focal_loss_cpu.cpp
LossBackward loss_backward_cpu;  // focal_loss_cpu.cpp
// focal_loss_cuda_ops.cpp: no host synchronisation; in a build without CUDA they raise a rebuild hint.
LossForward loss_forward_cuda;
LossBackward loss_backward_cuda;

// The sigmoid focal loss op on the device whose driver is given (focal_loss_common.cpp).
at::Tensor sigmoid_focal_loss_with(LossForward& forward, const at::Tensor& logits, const at::Tensor& labels,
    const std::optional<at::Tensor>& normalizer, double gamma, double alpha, c10::string_view reduction,
    double divisor);
at::Tensor sigmoid_focal_loss_backward_with(LossBackward& backward, const at::Tensor& grad, const at::Tensor& logits,
    const at::Tensor& labels, const std::optional<at::Tensor>& normalizer, double gamma, double alpha,
    c10::string_view reduction, double divisor);

// The kernels ops.cpp registers for one device, e.g. sigmoid_focal_loss_op<loss_forward_cpu>. On CUDA tensors in a
// build without CUDA they raise a rebuild hint (loss_forward_cuda does).
template <LossForward& kForward>
at::Tensor sigmoid_focal_loss_op(const at::Tensor& logits, const at::Tensor& labels,
    const std::optional<at::Tensor>& normalizer, double gamma, double alpha, c10::string_view reduction,
    double divisor) {
  return sigmoid_focal_loss_with(kForward, logits, labels, normalizer, gamma, alpha, reduction, divisor);
}

template <LossBackward& kBackward>
at::Tensor sigmoid_focal_loss_backward_op(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& labels,
    const std::optional<at::Tensor>& normalizer, double gamma, double alpha, c10::string_view reduction,
    double divisor) {
  return sigmoid_focal_loss_backward_with(
      kBackward, grad, logits, labels, normalizer, gamma, alpha, reduction, divisor);
}

}  // namespace retinanet_plugin
