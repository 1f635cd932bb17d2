// Launchers of the CUDA kernels of the focal losses (focal_loss_cuda.cu). Plain types only, so the .cu file needs no
// ATen headers and compiles quickly for every architecture; focal_loss_cuda_ops.cpp does the ATen side.
#pragma once

#include "cuda/launch_geometry.h"
#include "loss_kind.h"

#ifndef RP_CUDA_EMULATION
#include <cuda_runtime_api.h>
#endif

#include <cstdint>

namespace retinanet_plugin {
namespace cuda {

enum class LogitsType : int { Float32, Float64, Float16, BFloat16 };

// One call's inputs. "acc" below is the accumulation type: double for Float64 logits, float otherwise.
struct Problem {
  const void* logits = nullptr;  // [rows, cols], any strides
  LogitsType type = LogitsType::Float32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;
  int64_t col_stride = 1;
  const void* labels = nullptr;  // [rows] int32 or int64, any stride (not DenseFocal)
  bool labels_int32 = false;
  int64_t label_stride = 1;
  LossKind kind = LossKind::SigmoidFocal;
  double gamma = 2.0;  // SigmoidFocal, DenseFocal
  double weight_positive = 0.25;
  double weight_negative = 0.75;
  bool gamma_is_two = true;
  double beta = 2.0;              // QualityFocal
  const void* quality = nullptr;  // QualityFocal: [rows] acc, any stride; each value in [0, 1] (device assertion)
  int64_t quality_stride = 1;
  const void* targets = nullptr;  // DenseFocal: [rows, cols] acc, any strides; each in [0, 1] (device assertion)
  int64_t targets_row_stride = 0;
  int64_t targets_col_stride = 1;
  const void* normalizer = nullptr;  // one acc value on the device, or nullptr
  double divisor = 1.0;              // the result is divided by divisor * normalizer
  int multiprocessors = 1;           // of the device: the grid is capped at what fits on them at once
  cudaStream_t stream = nullptr;
};

// Whether the [rows, cols] results (loss of reduction "none", gradient) are column-major ({1, rows} strides) rather
// than contiguous: for column-major logits (row_stride == 1), which the kernels then walk one thread per row.
inline bool column_major(const Problem& problem) {
  return is_column_major_layout(problem.rows, problem.cols, problem.row_stride);
}

// Number of blocks of the reduced forward, i.e. of partial sums it needs.
int reduce_grid_size(const Problem& problem);

// loss [rows, cols] acc, layout per column_major(): the per-element loss / (divisor * normalizer); 0 on ignored rows.
cudaError_t launch_forward_elementwise(const Problem& problem, void* loss);

// loss: one acc value = sum (or mean over non-ignored elements) / (divisor * normalizer). partial_sums (acc) and
// partial_counts hold `partial_capacity` entries (reduce_grid_size()); the grid never exceeds them. A second
// single-block kernel adds the partials in a fixed order.
cudaError_t launch_forward_reduce(const Problem& problem, bool mean, void* partial_sums, int64_t* partial_counts,
    int partial_capacity, void* loss);

// grad_logits [rows, cols] in the logits type, layout per column_major(). grad (acc): one value for sum/mean, or
// [rows, cols] with the given strides when grad_elementwise (reduction "none"). valid_rows: the number of
// non-ignored rows on the device for mean, nullptr otherwise.
cudaError_t launch_backward(
    const Problem& problem,
    const void* grad,
    bool grad_elementwise,
    int64_t grad_row_stride,
    int64_t grad_col_stride,
    const int64_t* valid_rows,
    void* grad_logits);

}  // namespace cuda
}  // namespace retinanet_plugin
