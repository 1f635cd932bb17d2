// The CUDA kernels of the focal losses, written once for two compilers: nvcc builds
// them for the GPU (focal_loss_cuda.cu), and tests/cuda_emulation/ builds the same source as host code with
// RP_CUDA_EMULATION defined, running every (block, thread) of each launch on the CPU. The per-element math is the
// shared loss_elements.h on one value per thread (ScalarMath); the mapping of threads to elements is
// launch_geometry.h.
//
// Kernels. Each is templated on the row policy (integer labels, or float targets), the element, the vector width V
// (1, or 16 bytes / sizeof(logit) on the vectorised path) and the logits/accumulation types. No [N, K] intermediate
// is written: the forward reads x once, the backward reads x again and writes the gradient once. A thread loads
// kUnroll units (V logits each, one 128-bit load per unit on the vectorised path) before it computes any, to keep
// several loads in flight.
//
// Reduced forward without host synchronisation: each block writes its partial sum and its count of non-ignored
// rows; one single-block kernel adds the partials in a fixed order (deterministic for a given grid) and divides by
// the normaliser, read from device memory. Labels outside [-1, K] and soft targets outside [0, 1] trip a
// device-side assertion.
//
// Their host side (choice of vector width, dispatch on dtype and loss, grids, launches) is
// focal_loss_launchers.cuh.
#pragma once

#include "cuda/focal_loss_cuda.h"
#include "cuda/launch_geometry.h"
#include "loss_elements.h"

#ifndef RP_CUDA_EMULATION
#include <c10/macros/Macros.h>  // CUDA_KERNEL_ASSERT_MSG
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define RP_EMULATION_VISIT(row, col) ((void)0)
#define RP_EMULATION_ALIGNED_16(pointer) ((void)0)
#endif

#include <cstdint>
#include <type_traits>

namespace retinanet_plugin {
namespace cuda {
namespace kernels {

__device__ __forceinline__ float to_acc(float v) {
  return v;
}
__device__ __forceinline__ double to_acc(double v) {
  return v;
}
__device__ __forceinline__ float to_acc(__half v) {
  return __half2float(v);
}
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t from_acc(float v) {
  if constexpr (std::is_same_v<scalar_t, __half>) {
    return __float2half_rn(v);
  } else if constexpr (std::is_same_v<scalar_t, __nv_bfloat16>) {
    return __float2bfloat16_rn(v);
  } else {
    return static_cast<scalar_t>(v);
  }
}
template <typename scalar_t>
__device__ __forceinline__ scalar_t from_acc(double v) {
  return static_cast<scalar_t>(v);
}

// V values of T, loaded and stored as whole 16-byte words (V * sizeof(T) is a multiple of 16 on the vectorised
// path; V = 1 is a plain scalar access).
template <typename T, int V>
struct alignas(V * sizeof(T) >= 16 ? 16 : sizeof(T)) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  if constexpr (V == 1) {
    return Pack<T, 1>{{*p}};
  } else {
    static_assert(V * sizeof(T) % 16 == 0, "a vector unit is whole 16-byte words");
    RP_EMULATION_ALIGNED_16(p);
    Pack<T, V> pack;
    constexpr int kWords = V * sizeof(T) / 16;
#pragma unroll
    for (int w = 0; w < kWords; ++w) {
      reinterpret_cast<uint4*>(&pack)[w] = reinterpret_cast<const uint4*>(p)[w];
    }
    return pack;
  }
}

template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& pack) {
  if constexpr (V == 1) {
    *p = pack.v[0];
  } else {
    RP_EMULATION_ALIGNED_16(p);
    constexpr int kWords = V * sizeof(T) / 16;
#pragma unroll
    for (int w = 0; w < kWords; ++w) {
      reinterpret_cast<uint4*>(p)[w] = reinterpret_cast<const uint4*>(&pack)[w];
    }
  }
}

template <typename scalar_t, typename acc_t>
struct KernelArgs {
  const scalar_t* __restrict__ logits;
  int64_t cols;
  int64_t row_stride;
  int64_t col_stride;
  const void* __restrict__ labels;
  bool labels_int32;
  int64_t label_stride;
  const acc_t* __restrict__ quality;  // QualityFocal: [rows]
  int64_t quality_stride;
  const acc_t* __restrict__ targets;  // DenseFocal: [rows, cols]
  int64_t targets_row_stride;
  int64_t targets_col_stride;
  const acc_t* __restrict__ normalizer;  // nullptr: 1
  acc_t divisor;
  int64_t out_row_stride;  // of the [rows, cols] outputs
  int64_t out_col_stride;
  Geometry geometry;
};

// ---- Row policies: what a row reads besides its logits, and the element's terms of one of its logits.

// Integer labels (SigmoidFocalElement, QualityFocalElement): positive = (column == label).
template <class Element>
struct LabelRow {
  using acc_type = typename Element::V;
  int64_t label;
  acc_type quality;  // QualityFocalElement, on rows with a class label; else 0

  template <typename scalar_t, typename acc_t>
  static __device__ __forceinline__ LabelRow read(const KernelArgs<scalar_t, acc_t>& a, int64_t row) {
    LabelRow r;
    r.label = a.labels_int32 ? static_cast<int64_t>(static_cast<const int32_t*>(a.labels)[row * a.label_stride])
                             : static_cast<const int64_t*>(a.labels)[row * a.label_stride];
    CUDA_KERNEL_ASSERT_MSG(
        label_is_valid(r.label, a.cols),
        "retinanet_plugin focal loss op: a label is outside [-1, K] (0..K-1 positive class, K background, -1 "
        "ignored)");
    r.quality = 0;
    if constexpr (Element::kReadsQuality) {
      if (label_is_class(r.label, a.cols)) {  // background and ignored rows have no target
        r.quality = a.quality[row * a.quality_stride];
        CUDA_KERNEL_ASSERT_MSG(
            target_is_valid(r.quality),
            "retinanet_plugin quality_focal_loss: a quality target on a labelled row is outside [0, 1] (or NaN)");
      }
    }
    return r;
  }

  __device__ __forceinline__ bool ignored() const { return label < 0; }

  // Targets of one unit: nothing beyond the label.
  template <int V>
  struct UnitTargets {};
  template <int V, typename scalar_t, typename acc_t>
  __device__ __forceinline__ void load(const KernelArgs<scalar_t, acc_t>&, int64_t, int64_t, UnitTargets<V>&) const {}

  template <bool kLoss, bool kGrad, int V, typename scalar_t, typename acc_t>
  __device__ __forceinline__ void terms(const Element& e, const KernelArgs<scalar_t, acc_t>&, int64_t, int64_t col,
      int, acc_t x, const UnitTargets<V>&, acc_t& loss, acc_t& dloss_dx) const {
    const bool positive = col == label;
    e.template terms<kLoss, kGrad>(x, positive, positive, quality, loss, dloss_dx);
  }
};

// Float targets [rows, cols] (DenseFocalElement): no row is ignored.
template <class Element>
struct DenseRow {
  template <typename scalar_t, typename acc_t>
  static __device__ __forceinline__ DenseRow read(const KernelArgs<scalar_t, acc_t>&, int64_t) {
    return DenseRow{};
  }

  __device__ __forceinline__ bool ignored() const { return false; }

  template <int V>
  struct UnitTargets {
    Pack<typename Element::V, V> t;
  };
  template <int V, typename scalar_t, typename acc_t>
  __device__ __forceinline__ void load(
      const KernelArgs<scalar_t, acc_t>& a, int64_t row, int64_t unit, UnitTargets<V>& targets) const {
    const int64_t col = unit * V;
    targets.t = load_pack<acc_t, V>(a.targets + row * a.targets_row_stride + col * a.targets_col_stride);
  }

  template <bool kLoss, bool kGrad, int V, typename scalar_t, typename acc_t>
  __device__ __forceinline__ void terms(const Element& e, const KernelArgs<scalar_t, acc_t>&, int64_t, int64_t,
      int lane, acc_t x, const UnitTargets<V>& targets, acc_t& loss, acc_t& dloss_dx) const {
    const acc_t t = targets.t.v[lane];
    CUDA_KERNEL_ASSERT_MSG(
        target_is_valid(t), "retinanet_plugin sigmoid_focal_loss_dense: a target is outside [0, 1] (or NaN)");
    e.template terms<kLoss, kGrad>(x, t, loss, dloss_dx);
  }
};

// The logits of unit `unit` of `row`, widened to acc_t.
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_logits(
    const KernelArgs<scalar_t, acc_t>& a, int64_t row, int64_t unit, acc_t (&x)[V]) {
  const Pack<scalar_t, V> pack = load_pack<scalar_t, V>(a.logits + row * a.row_stride + unit * V * a.col_stride);
#pragma unroll
  for (int v = 0; v < V; ++v) {
    x[v] = to_acc(pack.v[v]);
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;
}

// The result in thread 0. `shared` holds kWarps values; it must not be reused by a later block_sum without a
// __syncthreads in between (warp 0 reads it after the barrier while other warps may already have moved on).
template <typename T>
__device__ __forceinline__ T block_sum(T value, T* shared) {
  value = warp_sum(value);
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (lane == 0) {
    shared[warp] = value;
  }
  __syncthreads();
  value = threadIdx.x < kWarps ? shared[threadIdx.x] : T(0);
  if (warp == 0) {
    value = warp_sum(value);
  }
  return value;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t inverse_denominator(const KernelArgs<scalar_t, acc_t>& a) {
  return acc_t(1) / (a.divisor * (a.normalizer != nullptr ? *a.normalizer : acc_t(1)));
}

// Calls fn(row, unit, lane_value) for every unit of every non-ignored row of this thread, and on_row(row, r) once per
// row (ignored rows included) before its units. lane_value(v) computes the loss (kGrad false) or dloss/dx (kGrad true)
// of column unit * V + v; fn calls it once per lane, and uses each value as it comes (the kernels' code and register
// use stay those of a loop written in each). kUnroll units are loaded at a time, before any is computed.
template <bool kGrad, class Row, int V, typename scalar_t, typename acc_t, class Element, typename OnRow, typename Fn>
__device__ __forceinline__ void for_each_unit(
    const KernelArgs<scalar_t, acc_t>& a, const Element& e, OnRow&& on_row, Fn&& fn) {
  const Geometry& g = a.geometry;
  const int64_t first_unit = g.first_unit(threadIdx.x);
  const int64_t unit_step = g.threads_per_row;
  for (int64_t row = g.first_row(blockIdx.x, threadIdx.x); row < g.rows; row += g.row_step(gridDim.x)) {
    const Row r = Row::read(a, row);
    if (!on_row(row, r)) {
      continue;
    }
    for (int64_t u0 = first_unit; u0 < g.units; u0 += kUnroll * unit_step) {
      acc_t x[kUnroll][V];
      typename Row::template UnitTargets<V> t[kUnroll];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        const int64_t unit = u0 + k * unit_step;
        if (unit < g.units) {
          load_logits<V>(a, row, unit, x[k]);
          r.template load<V>(a, row, unit, t[k]);
        }
      }
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        const int64_t unit = u0 + k * unit_step;
        if (unit < g.units) {
          fn(row, unit, [&](int v) {
            const int64_t col = unit * V + v;
            RP_EMULATION_VISIT(row, col);
            acc_t loss = 0;
            acc_t dloss_dx = 0;
            r.template terms<!kGrad, kGrad, V>(e, a, row, col, v, x[k][v], t[k], loss, dloss_dx);
            return kGrad ? dloss_dx : loss;
          });
        }
      }
    }
  }
}

// Stores lane(v) of the V columns of unit `unit` of row `row` to an [N, K] output, as one pack.
template <int V, typename scalar_t, typename acc_t, typename T, typename Lane>
__device__ __forceinline__ void store_unit(
    const KernelArgs<scalar_t, acc_t>& a, int64_t row, int64_t unit, T* out, Lane&& lane) {
  Pack<T, V> pack;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    pack.v[v] = lane(v);
  }
  store_pack<T, V>(out + row * a.out_row_stride + unit * V * a.out_col_stride, pack);
}

// Zeros this thread's share of row `row` of an [N, K] output (an ignored row), one column at a time.
template <typename scalar_t, typename acc_t, typename T>
__device__ __forceinline__ void zero_row_share(const KernelArgs<scalar_t, acc_t>& a, int64_t row, T* out) {
  for (int64_t col = a.geometry.first_unit(threadIdx.x); col < a.cols; col += a.geometry.threads_per_row) {
    RP_EMULATION_VISIT(row, col);
    out[row * a.out_row_stride + col * a.out_col_stride] = from_acc<T>(acc_t(0));
  }
}

template <class Row, class Element, int V, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerMultiprocessor)
    forward_elementwise_kernel(KernelArgs<scalar_t, acc_t> a, Element e, acc_t* __restrict__ loss) {
  const acc_t scale = inverse_denominator(a);
  auto on_row = [&](int64_t row, const Row& r) {
    return !r.ignored() || (zero_row_share(a, row, loss), false);  // ignored: no loss
  };
  for_each_unit<false, Row, V>(a, e, on_row, [&](int64_t row, int64_t unit, const auto& lane_value) {
    store_unit<V>(a, row, unit, loss, [&](int v) { return lane_value(v) * scale; });
  });
}

template <class Row, class Element, int V, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerMultiprocessor) forward_reduce_kernel(
    KernelArgs<scalar_t, acc_t> a, Element e, acc_t* __restrict__ partial_sums, long long* __restrict__ partial_counts) {
  __shared__ acc_t shared_sums[kWarps];
  __shared__ long long shared_counts[kWarps];
  acc_t sum = 0;
  long long valid_rows = 0;
  const bool counts_rows = a.geometry.first_unit(threadIdx.x) == 0;  // one thread per row counts it
  auto on_row = [&](int64_t, const Row& r) {
    if (r.ignored()) {
      return false;
    }
    valid_rows += counts_rows;
    return true;
  };
  for_each_unit<false, Row, V>(a, e, on_row, [&](int64_t, int64_t, const auto& lane_value) {
#pragma unroll
    for (int v = 0; v < V; ++v) {
      sum += lane_value(v);
    }
  });
  sum = block_sum(sum, shared_sums);
  valid_rows = block_sum(valid_rows, shared_counts);
  if (threadIdx.x == 0) {
    partial_sums[blockIdx.x] = sum;
    partial_counts[blockIdx.x] = valid_rows;
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerMultiprocessor) finalize_kernel(
    const acc_t* __restrict__ partial_sums,
    const long long* __restrict__ partial_counts,
    int num_partials,
    int64_t cols,
    bool mean,
    const acc_t* __restrict__ normalizer,
    acc_t divisor,
    acc_t* __restrict__ loss) {
  __shared__ acc_t shared_sums[kWarps];
  __shared__ long long shared_counts[kWarps];
  acc_t sum = 0;
  long long valid_rows = 0;
  for (int i = threadIdx.x; i < num_partials; i += kThreads) {
    sum += partial_sums[i];
    valid_rows += partial_counts[i];
  }
  sum = block_sum(sum, shared_sums);
  valid_rows = block_sum(valid_rows, shared_counts);
  if (threadIdx.x == 0) {
    if (mean) {
      sum /= static_cast<acc_t>(valid_rows * cols > 1 ? valid_rows * cols : 1);
    }
    *loss = sum / (divisor * (normalizer != nullptr ? *normalizer : acc_t(1)));
  }
}

template <class Row, class Element, int V, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerMultiprocessor) backward_kernel(
    KernelArgs<scalar_t, acc_t> a,
    Element e,
    const acc_t* __restrict__ grad,
    bool grad_elementwise,
    int64_t grad_row_stride,
    int64_t grad_col_stride,
    const long long* __restrict__ valid_rows,
    scalar_t* __restrict__ grad_logits) {
  acc_t scale = inverse_denominator(a);
  if (valid_rows != nullptr) {
    const long long elements = *valid_rows * a.cols;
    scale /= static_cast<acc_t>(elements > 1 ? elements : 1);
  }
  if (!grad_elementwise) {
    scale *= *grad;
  }
  auto on_row = [&](int64_t row, const Row& r) {
    return !r.ignored() || (zero_row_share(a, row, grad_logits), false);  // ignored: zero gradient
  };
  for_each_unit<true, Row, V>(a, e, on_row, [&](int64_t row, int64_t unit, const auto& lane_value) {
    store_unit<V>(a, row, unit, grad_logits, [&](int v) {
      const int64_t col = unit * V + v;
      return from_acc<scalar_t>(
          lane_value(v) * (grad_elementwise ? grad[row * grad_row_stride + col * grad_col_stride] * scale : scale));
    });
  });
}

}  // namespace kernels
}  // namespace cuda
}  // namespace retinanet_plugin
