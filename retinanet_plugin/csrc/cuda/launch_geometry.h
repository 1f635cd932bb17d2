// How the CUDA kernels of the focal losses map a launch onto an [N, K] problem: the one definition that the kernels,
// their host launchers and the kernels' host emulation (tests/cuda_emulation/) share.
//
// A block has kThreads threads. A row's K columns are cut into `units` of `vector_width` adjacent columns (one
// 128-bit load each on the vectorised path, 1 column otherwise); `threads_per_row` adjacent threads (a power of two
// <= 32) share a row and stride over its units, so the loads of a warp are contiguous and the row's label is read
// once per thread and row. A block covers kThreads / threads_per_row rows at a time and blocks stride over the rows
// (the grid is capped at what the occupancy API says fits on the device at once).
//
// Column-major logits (stride(0) == 1) use one thread per row: a warp then reads 32 adjacent rows of one column,
// which are adjacent in memory, and writes its results in the same layout.
#pragma once

#include "loss_elements.h"

#include <cstdint>

namespace retinanet_plugin {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kUnroll = 4;  // units loaded before any is computed: the loads a thread keeps in flight
// __launch_bounds__: at least 2 resident blocks per multiprocessor, i.e. at most 128 registers per thread. ptxas
// then keeps every kernel free of spills (tests/test_cuda_kernels_compile.py) with no lower occupancy imposed on
// the hot ones (75 to 106 registers on sm_90 for the fp32 sigmoid focal loss).
constexpr int kMinBlocksPerMultiprocessor = 2;

// Threads per row: the largest power of two <= 32 that keeps at least 80% of the row's lanes busy, so that a warp
// reads long contiguous runs of a row (32 threads on K = 1203); else the one that idles the fewest lanes (the larger
// one on ties). K = 80 fp32 (20 units): 8; fp16 (10 units): 4; K = 3: 1.
RP_HOST_DEVICE_FN int threads_per_row_for(int64_t units) {
  int best = 32;
  double best_use = -1.0;
  for (int t = 32; t >= 1; t /= 2) {
    const int64_t steps = (units + t - 1) / t;
    const double use = units == 0 ? 1.0 : static_cast<double>(units) / static_cast<double>(steps * t);
    if (use >= 0.8) {
      return t;
    }
    if (use > best_use + 1e-12) {
      best = t;
      best_use = use;
    }
  }
  return best;
}

RP_HOST_DEVICE_FN int log2_of(int power_of_two) {
  int log = 0;
  while ((1 << log) < power_of_two) {
    ++log;
  }
  return log;
}

// Whether [rows, cols] logits with this row stride are walked column-major (and their results laid out so).
RP_HOST_DEVICE_FN bool is_column_major_layout(int64_t rows, int64_t cols, int64_t row_stride) {
  return rows > 1 && cols > 1 && row_stride == 1;
}

// One launch's mapping; built on the host (make_geometry), read by every thread.
struct Geometry {
  int64_t rows = 0;
  int64_t units = 0;      // per row
  int vector_width = 1;   // columns per unit
  int threads_per_row = 1;
  int log2_threads_per_row = 0;

  RP_HOST_DEVICE int64_t rows_per_block() const { return kThreads >> log2_threads_per_row; }
  // The first row of `thread` in `block`, and the step to its next row in a grid of `grid` blocks.
  RP_HOST_DEVICE int64_t first_row(int64_t block, int thread) const {
    return block * rows_per_block() + (thread >> log2_threads_per_row);
  }
  RP_HOST_DEVICE int64_t row_step(int64_t grid) const { return grid * rows_per_block(); }
  // The first unit of `thread` in its rows; it then steps by threads_per_row.
  RP_HOST_DEVICE int64_t first_unit(int thread) const { return thread & (threads_per_row - 1); }
};

// cols % vector_width == 0 when vector_width > 1; column_major: one thread per row (see above).
RP_HOST_DEVICE_FN Geometry make_geometry(int64_t rows, int64_t cols, int vector_width, bool column_major) {
  Geometry g;
  g.rows = rows;
  g.vector_width = vector_width;
  g.units = cols / vector_width;
  g.threads_per_row = column_major ? 1 : threads_per_row_for(g.units);
  g.log2_threads_per_row = log2_of(g.threads_per_row);
  return g;
}

// Blocks of a launch: enough to give every thread a row, at most `max_resident_blocks` (at least 1).
RP_HOST_DEVICE_FN int grid_size(const Geometry& g, int64_t max_resident_blocks) {
  const int64_t needed = (g.rows + g.rows_per_block() - 1) / g.rows_per_block();
  const int64_t cap = max_resident_blocks > 0 ? max_resident_blocks : 1;
  return static_cast<int>(needed < 1 ? 1 : (needed < cap ? needed : cap));
}

}  // namespace cuda
}  // namespace retinanet_plugin
