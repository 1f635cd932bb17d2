// The CUDA kernels of the focal losses, compiled for the GPU: the kernels and their dispatch are in
// focal_loss_kernels.cuh (shared with the host emulation in tests/cuda_emulation/); this file gives them the CUDA
// runtime (launch with <<<>>>, occupancy from the driver) and the plain entry points of focal_loss_cuda.h.
#include "cuda/focal_loss_cuda.h"
#include "cuda/focal_loss_launchers.cuh"

#include <cuda_runtime.h>

namespace retinanet_plugin {
namespace cuda {
namespace {

struct CudaRuntime {
  template <typename... Params, typename... Args>
  static void launch(void (*kernel)(Params...), int grid, cudaStream_t stream, Args... args) {
    kernel<<<grid, kThreads, 0, stream>>>(args...);
  }

  // Blocks of kThreads threads of `kernel` that fit on one multiprocessor of the current device (its registers and
  // shared memory as compiled), at least 1.
  template <typename... Params>
  static int blocks_per_multiprocessor(void (*kernel)(Params...)) {
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, 0) != cudaSuccess) {
      (void)cudaGetLastError();  // reported by the launch instead
      return 1;
    }
    return blocks > 0 ? blocks : 1;
  }

  static cudaError_t last_error() { return cudaGetLastError(); }
};

}  // namespace

int reduce_grid_size(const Problem& problem) {
  return kernels::reduce_grid_size<CudaRuntime>(problem);
}

cudaError_t launch_forward_elementwise(const Problem& problem, void* loss) {
  return kernels::launch_forward_elementwise<CudaRuntime>(problem, loss);
}

cudaError_t launch_forward_reduce(const Problem& problem, bool mean, void* partial_sums, int64_t* partial_counts,
    int partial_capacity, void* loss) {
  return kernels::launch_forward_reduce<CudaRuntime>(
      problem, mean, partial_sums, partial_counts, partial_capacity, loss);
}

cudaError_t launch_backward(
    const Problem& problem,
    const void* grad,
    bool grad_elementwise,
    int64_t grad_row_stride,
    int64_t grad_col_stride,
    const int64_t* valid_rows,
    void* grad_logits) {
  return kernels::launch_backward<CudaRuntime>(
      problem, grad, grad_elementwise, grad_row_stride, grad_col_stride, valid_rows, grad_logits);
}

}  // namespace cuda
}  // namespace retinanet_plugin
