// The focal loss CUDA kernels (retinanet_plugin/csrc/cuda/focal_loss_{kernels,launchers}.cuh, the source nvcc compiles)
// built as host code over cuda_emulator.h, behind a C interface for tests/test_cuda_kernels_emulated.py (ctypes).
// Build: c++ -std=c++20 -O1 -shared -fPIC -I retinanet_plugin/csrc -I tests/cuda_emulation emulated_kernels.cpp
#include "cuda_emulator.h"

#include "cuda/focal_loss_launchers.cuh"

#include <algorithm>
#include <cstring>

namespace {

using namespace retinanet_plugin;
using namespace retinanet_plugin::cuda;

int blocks_per_multiprocessor_setting = 1;

struct EmulatedRuntime {
  template <typename... Params, typename... Args>
  static void launch(void (*kernel)(Params...), int grid, cudaStream_t, Args... args) {
    rp_emulation::launch(grid, kThreads, [&] { kernel(args...); });
  }
  template <typename... Params>
  static int blocks_per_multiprocessor(void (*)(Params...)) {
    return blocks_per_multiprocessor_setting;
  }
  static cudaError_t last_error() {
    return rp_emulation::report.error.empty() ? cudaSuccess : cudaErrorLaunchFailure;
  }
};

}  // namespace

extern "C" {

// One call of a launcher; every field is 8 bytes, so the ctypes mirror has no padding to guess.
struct EmuCall {
  int64_t op;  // 0 forward "none", 1 forward "sum", 2 forward "mean", 3 backward
  int64_t kind;         // LossKind
  int64_t logits_type;  // LogitsType
  const void* logits;
  int64_t rows, cols, row_stride, col_stride;
  const void* labels;
  int64_t labels_int32, label_stride;
  double gamma, weight_positive, weight_negative;
  int64_t gamma_is_two;
  double beta;
  const void* quality;
  int64_t quality_stride;
  const void* targets;
  int64_t targets_row_stride, targets_col_stride;
  const void* normalizer;
  double divisor;
  int64_t multiprocessors, blocks_per_multiprocessor;
  void* out;  // op 0: loss [rows, cols]; ops 1, 2: the 0-dim loss; op 3: grad_logits [rows, cols]
  void* partial_sums;
  void* partial_counts;
  int64_t partial_capacity;  // entries of partial_sums / partial_counts
  const void* grad;          // op 3
  int64_t grad_elementwise, grad_row_stride, grad_col_stride;
  const void* valid_rows;  // op 3, mean: int64 on "the device"
  int32_t* visits;         // [rows, cols] counters, or null
  int64_t schedule;        // 0 threads in index order, 1 highest warp first
};

struct EmuResult {
  int64_t status;  // 0 ok, 1 emulation error (see error), 2 partial buffer too small
  int64_t launches;
  int64_t grids[4];
  int64_t reduce_grid_size;
  int64_t vector_width, threads_per_row, column_major;
  int64_t assertion_count, visits_out_of_range;
  char assertion[256];
  char error[256];
};

int emu_run(const EmuCall* c, EmuResult* r) {
  std::memset(r, 0, sizeof(*r));
  rp_emulation::report = rp_emulation::Report{};
  rp_emulation::report.visits = c->visits;
  rp_emulation::report.visit_rows = c->rows;
  rp_emulation::report.visit_cols = c->cols;
  blocks_per_multiprocessor_setting = static_cast<int>(c->blocks_per_multiprocessor);
  rp_emulation::schedule = c->schedule == 1 ? rp_emulation::Schedule::HighestWarpFirst : rp_emulation::Schedule::InOrder;

  Problem p;
  p.logits = c->logits;
  p.type = static_cast<LogitsType>(c->logits_type);
  p.rows = c->rows;
  p.cols = c->cols;
  p.row_stride = c->row_stride;
  p.col_stride = c->col_stride;
  p.labels = c->labels;
  p.labels_int32 = c->labels_int32 != 0;
  p.label_stride = c->label_stride;
  p.kind = static_cast<LossKind>(c->kind);
  p.gamma = c->gamma;
  p.weight_positive = c->weight_positive;
  p.weight_negative = c->weight_negative;
  p.gamma_is_two = c->gamma_is_two != 0;
  p.beta = c->beta;
  p.quality = c->quality;
  p.quality_stride = c->quality_stride;
  p.targets = c->targets;
  p.targets_row_stride = c->targets_row_stride;
  p.targets_col_stride = c->targets_col_stride;
  p.normalizer = c->normalizer;
  p.divisor = c->divisor;
  p.multiprocessors = static_cast<int>(c->multiprocessors);

  kernels::dispatch(p, [&](auto instance, const auto&) {
    const Geometry g = decltype(instance)::type::args(p).geometry;
    r->vector_width = g.vector_width;
    r->threads_per_row = g.threads_per_row;
  });
  r->column_major = column_major(p);

  switch (c->op) {
    case 0:
      kernels::launch_forward_elementwise<EmulatedRuntime>(p, c->out);
      break;
    case 1:
    case 2:
      r->reduce_grid_size = kernels::reduce_grid_size<EmulatedRuntime>(p);
      if (r->reduce_grid_size > c->partial_capacity) {
        r->status = 2;
        return 2;
      }
      kernels::launch_forward_reduce<EmulatedRuntime>(
          p, c->op == 2, c->partial_sums, static_cast<int64_t*>(c->partial_counts),
          static_cast<int>(r->reduce_grid_size), c->out);
      break;
    case 3:
      kernels::launch_backward<EmulatedRuntime>(p, c->grad, c->grad_elementwise != 0, c->grad_row_stride,
          c->grad_col_stride, static_cast<const int64_t*>(c->valid_rows), c->out);
      break;
    default:
      std::strncpy(r->error, "unknown op", sizeof(r->error) - 1);
      r->status = 1;
      return 1;
  }
  const rp_emulation::Report& rep = rp_emulation::report;
  r->launches = rep.launches;
  for (size_t i = 0; i < rep.grids.size() && i < 4; ++i) {
    r->grids[i] = rep.grids[i];
  }
  r->assertion_count = rep.assertion_count;
  r->visits_out_of_range = rep.visits_out_of_range;
  std::strncpy(r->assertion, rep.assertion.c_str(), sizeof(r->assertion) - 1);
  std::strncpy(r->error, rep.error.c_str(), sizeof(r->error) - 1);
  r->status = rep.error.empty() ? 0 : 1;
  return static_cast<int>(r->status);
}

// Checks of the emulation itself, on the kernels' own block_sum: 0 a block sum of the thread indices (written to
// *out, expect 0 + 1 + ... + 255), 1 a __syncthreads that half of the block skips, 2 a shuffle that one lane skips,
// 3 two block sums of the thread indices through one shared array without a barrier between them (a race: *out is
// the first, right only if warp 0 reads before the other warps write again), 4 a misaligned 128-bit load.
// `schedule` as in EmuCall. Returns the emulation's error message (empty if none) in `error`.
int emu_selfcheck(int64_t which, int64_t schedule, double* out, char* error, int64_t error_size) {
  rp_emulation::report = rp_emulation::Report{};
  rp_emulation::schedule = schedule == 1 ? rp_emulation::Schedule::HighestWarpFirst : rp_emulation::Schedule::InOrder;
  alignas(16) float words[8] = {};
  auto body = [&] {
    __shared__ double shared[kWarps];
    if (which == 3) {
      const double first = kernels::block_sum(static_cast<double>(threadIdx.x), shared);
      kernels::block_sum(static_cast<double>(threadIdx.x) * 1000.0, shared);  // reuses `shared`: no barrier
      if (threadIdx.x == 0) {
        *out = first;
      }
    } else if (which == 4) {
      if (threadIdx.x == 0) {
        *out = kernels::load_pack<float, 4>(words + 1).v[0];
      }
    } else if (which == 0) {
      const double sum = kernels::block_sum(static_cast<double>(threadIdx.x), shared);
      if (threadIdx.x == 0) {
        *out = sum;
      }
    } else if (which == 1) {
      if (threadIdx.x < kThreads / 2) {
        __syncthreads();
      }
    } else if (threadIdx.x != 7) {
      *out = kernels::warp_sum(1.0);
    }
  };
  rp_emulation::launch(1, kThreads, body);
  std::strncpy(error, rp_emulation::report.error.c_str(), static_cast<size_t>(error_size) - 1);
  return rp_emulation::report.error.empty() ? 0 : 1;
}

}  // extern "C"
