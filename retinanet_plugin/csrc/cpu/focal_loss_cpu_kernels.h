// The CPU kernels of the focal losses (sigmoid focal loss, quality focal loss), compiled once per instruction set
// (focal_loss_cpu_{default,avx2,avx512}.cpp) and picked at run time from what ATen reports for this CPU
// (focal_loss_cpu.cpp).
#pragma once

#include "loss_driver.h"

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

namespace retinanet_plugin {
namespace cpu {

// Rows are processed in fixed blocks of about this many elements: the blocks are the unit of parallel
// work and of the partial sums, so a reduced loss does not depend on the number of threads.
constexpr int64_t kElementsPerBlock = 16384;

inline int64_t rows_per_block(int64_t num_classes) {
  return std::max<int64_t>(1, kElementsPerBlock / std::max<int64_t>(1, num_classes));
}

// Every kernel computes the loss `spec` describes (its kind, constants and, for the quality focal loss, the
// per-row quality targets) and raises the op's error for a label outside [-1, K] or a quality outside [0, 1].
struct Kernels {
  // reduction "none": loss_out [N, K] (fp32, or fp64 for fp64 logits, contiguous) = loss * scale.
  void (*forward_elementwise)(
      const at::Tensor& logits, const at::Tensor& labels, const LossSpec& spec, double scale, at::Tensor& loss_out);
  // reduction "sum"/"mean": per block of rows, the loss sum (accumulated in fp32, fp64 for fp64 logits) and the
  // number of non-ignored rows. partial_sums/valid_rows hold ceil(N / rows_per_block(K)) entries.
  void (*forward_partial_sums)(
      const at::Tensor& logits, const at::Tensor& labels, const LossSpec& spec, double* partial_sums,
      int64_t* valid_rows);
  // grad_logits [N, K] (logits dtype, contiguous) = dloss/dx * scale, times grad_loss[n, k] when grad_loss is
  // defined (reduction "none": fp32/fp64 with unit column stride).
  void (*backward)(
      const at::Tensor& logits, const at::Tensor& labels, const LossSpec& spec, double scale,
      const at::Tensor& grad_loss, at::Tensor& grad_logits);
};

// nullptr when the variant was not compiled (compiler or architecture without it).
const Kernels* kernels_DEFAULT();
const Kernels* kernels_AVX2();
const Kernels* kernels_AVX512();

}  // namespace cpu
}  // namespace retinanet_plugin
