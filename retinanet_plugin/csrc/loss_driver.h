// What the ops' fronts (sigmoid_focal_loss.cpp, quality_focal_loss.cpp,
// sigmoid_focal_loss_dense.cpp) hand to the device drivers (cpu/focal_loss_cpu.cpp,
// cuda/focal_loss_cuda_ops.cpp): the LossSpec a driver computes, the drivers' signatures, and the
// helpers and errors the drivers share (defined in loss_driver.cpp). The per-element math is in
// loss_elements.h; the argument checks in loss_checks.h.
#pragma once

#include "loss_kind.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <string>
#include <vector>

namespace retinanet_plugin {

enum class Reduction { None, Sum, Mean };

// The constants of the focal loss, in double; kernels cast them to their accumulation type.
struct FocalLossParams {
  double gamma = 2.0;
  double weight_positive = 0.25;  // alpha, or 1 when alpha < 0
  double weight_negative = 0.75;  // 1 - alpha, or 1 when alpha < 0
  bool gamma_is_two = true;       // q^g computed as q * q
};

FocalLossParams make_focal_loss_params(double gamma, double alpha);

// What the shared kernels compute: the loss kind, its constants and, for the quality focal loss,
// the per-row targets. Built by each op's front, read by the CPU and CUDA drivers below.
struct LossSpec {
  LossKind kind = LossKind::SigmoidFocal;
  const char* op_name = "sigmoid_focal_loss";  // names the op in the errors the kernels raise
  FocalLossParams focal;                        // SigmoidFocal, DenseFocal
  double beta = 2.0;                            // QualityFocal: exponent of |quality - sigmoid(x)|
  at::Tensor quality;  // QualityFocal: [N] in the accumulation dtype, any stride
  // DenseFocal: [N, K] in the accumulation dtype, unit column stride (CPU) or any (CUDA)
  at::Tensor targets;
};

// fp64 for fp64 logits, fp32 otherwise: the dtype of the accumulation and of the loss.
at::ScalarType focal_loss_accumulate_type(at::ScalarType logits_dtype);

// The strides of the [N, K] results (loss for reduction "none", gradient) of the drivers for these
// logits: those of a contiguous tensor, or on CUDA the column-major layout of column-major logits.
std::vector<int64_t> output_strides(const at::Tensor& logits);

// logits itself when its columns are adjacent in memory (any row stride), else a contiguous copy.
at::Tensor with_unit_column_stride(const at::Tensor& logits);

// Error for a label outside [-1, K] (CPU kernels; the CUDA kernels assert on the device).
[[noreturn]] void throw_bad_label(
    const char* op_name, int64_t row, int64_t label, int64_t num_classes);

// Error for a quality target outside [0, 1] or NaN on a labelled row (CPU kernels; CUDA asserts on
// the device).
[[noreturn]] void throw_bad_quality(const char* op_name, int64_t row, double quality);

// Error for a float target outside [0, 1] or NaN (CPU kernels of the dense focal loss; CUDA asserts
// on the device).
[[noreturn]] void throw_bad_target(const char* op_name, int64_t row, int64_t column, double target);

// Whether this build has the CUDA kernels (WITH_CUDA).
bool built_with_cuda();

// Which CPU kernel variant runs on this machine: "AVX512", "AVX2" or "DEFAULT"
// (cpu/focal_loss_cpu.cpp).
std::string cpu_kernel_capability();

// ---- The drivers (arguments already checked): forward and backward of `spec` on one device ----
// Forward: [N, K] for Reduction::None, else a 0-dim tensor; fp32 (fp64 for fp64 logits). Backward:
// the gradient w.r.t. logits (logits dtype) given the upstream gradient `grad` of the forward's
// output. The [N, K] results are contiguous, except on CUDA for column-major logits
// (stride(0) == 1), whose layout they keep (output_strides()). `labels` is undefined for
// LossKind::DenseFocal (its targets are in the spec).
using LossForward = at::Tensor(const LossSpec& spec, const at::Tensor& logits,
    const at::Tensor& labels, const std::optional<at::Tensor>& normalizer, Reduction reduction,
    double divisor);
using LossBackward = at::Tensor(const LossSpec& spec, const at::Tensor& grad,
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& normalizer,
    Reduction reduction, double divisor);
LossForward loss_forward_cpu;    // cpu/focal_loss_cpu.cpp
LossBackward loss_backward_cpu;  // cpu/focal_loss_cpu.cpp
// cuda/focal_loss_cuda_ops.cpp: no host synchronisation; in a build without CUDA they raise a
// rebuild hint.
LossForward loss_forward_cuda;
LossBackward loss_backward_cuda;

}  // namespace retinanet_plugin
