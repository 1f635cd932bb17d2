// CUDA kernels of the focal losses: the sigmoid focal loss (math and gradient in focal_loss.h) and the quality
// focal loss (quality_focal_loss.h). The loss is an "element" type (SigmoidFocalElement, QualityFocalElement)
// the kernels are templated on; everything else is shared.
//
// Mapping: a block has kThreads threads; a row of K logits is handled by `threads_per_row` adjacent threads
// (a power of two <= 32 chosen from K so few lanes idle: 16 for K = 80), which stride over its columns, so
// the loads of a warp are contiguous and the row's label is read once per thread and row. Blocks stride over
// the rows (grid capped at the resident-block count). No [N, K] intermediate is written: the forward reads
// x once, the backward reads x again and writes the gradient once.
//
// Reduced forward without host synchronisation: each block writes its partial sum and its count of
// non-ignored rows; one single-block kernel adds the partials in a fixed order (deterministic for a given
// grid) and divides by the normaliser, read from device memory. Labels outside [-1, K] and quality targets outside
// [0, 1] (on labelled rows) trip a device-side assertion.
#include "focal_loss_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <c10/macros/Macros.h>

#include <algorithm>
#include <type_traits>

namespace retinanet_plugin {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

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

__device__ __forceinline__ void store_acc(float* p, float v) {
  *p = v;
}
__device__ __forceinline__ void store_acc(double* p, double v) {
  *p = v;
}
__device__ __forceinline__ void store_acc(__half* p, float v) {
  *p = __float2half_rn(v);
}
__device__ __forceinline__ void store_acc(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

__device__ __forceinline__ float exp_acc(float v) {
  return expf(v);
}
__device__ __forceinline__ double exp_acc(double v) {
  return exp(v);
}
__device__ __forceinline__ float log1p_acc(float v) {
  return log1pf(v);
}
__device__ __forceinline__ double log1p_acc(double v) {
  return log1p(v);
}
__device__ __forceinline__ float pow_acc(float base, float exponent) {
  return powf(base, exponent);
}
__device__ __forceinline__ double pow_acc(double base, double exponent) {
  return pow(base, exponent);
}

template <typename scalar_t, typename acc_t>
struct KernelArgs {
  const scalar_t* logits;
  int64_t rows;
  int64_t cols;
  int64_t row_stride;
  int64_t col_stride;
  const void* labels;
  bool labels_int32;
  int64_t label_stride;
  acc_t gamma;  // SigmoidFocal
  acc_t weight_positive;
  acc_t weight_negative;
  acc_t beta;              // QualityFocal
  const acc_t* quality;    // QualityFocal: [rows]
  int64_t quality_stride;
  const acc_t* normalizer;  // nullptr: 1
  acc_t divisor;
  int threads_per_row;  // power of two
  int log2_threads_per_row;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ int64_t checked_label(const KernelArgs<scalar_t, acc_t>& a, int64_t row) {
  const int64_t label = a.labels_int32 ? static_cast<int64_t>(static_cast<const int32_t*>(a.labels)[row * a.label_stride])
                                       : static_cast<const int64_t*>(a.labels)[row * a.label_stride];
  CUDA_KERNEL_ASSERT_MSG(
      label >= -1 && label <= a.cols,
      "retinanet_plugin focal loss op: a label is outside [-1, K] (0..K-1 positive class, K background, -1 ignored)");
  return label;
}

// The per-element losses: terms<kLoss, kGrad>(x, positive, quality, a, loss, dloss_dx) sets the loss and/or
// dloss/dx of one logit x; `positive`: x is the logit of the row's class, whose target is `quality`.

// Sigmoid focal loss (focal_loss.h), in the signed logit z = -x for the positive, x otherwise.
template <bool kGammaTwo>
struct SigmoidFocalElement {
  static constexpr bool kReadsQuality = false;

  template <bool kLoss, bool kGrad, typename scalar_t, typename acc_t>
  static __device__ __forceinline__ void terms(
      acc_t x, bool positive, acc_t /*quality*/, const KernelArgs<scalar_t, acc_t>& a, acc_t& loss, acc_t& dloss_dx) {
    const acc_t zero = 0;
    const acc_t one = 1;
    const acc_t z = positive ? -x : x;
    const acc_t w = positive ? a.weight_positive : a.weight_negative;
    const acc_t e = exp_acc(-fabs(z));  // in (0, 1]
    const acc_t l = log1p_acc(e);
    const acc_t softplus_z = fmax(z, zero) + l;
    const acc_t r = one / (one + e);
    const bool z_nonneg = z >= zero;
    const acc_t q = z_nonneg ? r : e * r;  // sigmoid(z)
    const acc_t modulating = kGammaTwo ? q * q : exp_acc(-a.gamma * (fmax(-z, zero) + l));
    const acc_t weighted = w * modulating;
    if (kLoss) {
      loss = weighted * softplus_z;
    }
    if (kGrad) {
      const acc_t one_minus_q = z_nonneg ? e * r : r;
      const acc_t dloss_dz = weighted * (q + a.gamma * one_minus_q * softplus_z);
      dloss_dx = positive ? -dloss_dz : dloss_dz;
    }
  }
};

// Quality focal loss (quality_focal_loss.h): target y = quality for the positive, 0 otherwise.
template <bool kBetaTwo>
struct QualityFocalElement {
  static constexpr bool kReadsQuality = true;

  template <bool kLoss, bool kGrad, typename scalar_t, typename acc_t>
  static __device__ __forceinline__ void terms(
      acc_t x, bool positive, acc_t quality, const KernelArgs<scalar_t, acc_t>& a, acc_t& loss, acc_t& dloss_dx) {
    const acc_t zero = 0;
    const acc_t one = 1;
    const acc_t y = positive ? quality : zero;
    const acc_t e = exp_acc(-fabs(x));  // in (0, 1]
    const acc_t l = log1p_acc(e);
    const acc_t softplus_x = fmax(x, zero) + l;         // -log(1 - s)
    const acc_t softplus_minus_x = fmax(-x, zero) + l;  // -log(s)
    const acc_t r = one / (one + e);
    const bool x_nonneg = x >= zero;
    const acc_t s = x_nonneg ? r : e * r;  // sigmoid(x)
    const acc_t one_minus_s = x_nonneg ? e * r : r;
    const acc_t d = x_nonneg ? (one - y) - one_minus_s : s - y;  // s - y, precise near s = 1
    const acc_t bce = y * softplus_minus_x + (one - y) * softplus_x;
    // |d|^beta, with 0^0 = 1 and 0^b = 0 set explicitly rather than left to powf under --use_fast_math.
    const acc_t modulating = kBetaTwo ? d * d : (d == zero ? (a.beta == zero ? one : zero) : pow_acc(fabs(d), a.beta));
    if (kLoss) {
      loss = modulating * bce;
    }
    if (kGrad) {
      const acc_t curvature_bce = s * one_minus_s * bce;  // s (1 - s) BCE
      if (kBetaTwo) {
        dloss_dx = d * (d * d + a.beta * curvature_bce);
      } else if (a.beta == zero) {  // plain BCE (the b |d|^b / d term is 0, but |d|^0 / d may overflow)
        dloss_dx = d;
      } else {
        const acc_t ratio = d == zero ? zero : modulating / d;  // |d|^beta / d, 0 at d = 0
        dloss_dx = modulating * d + a.beta * ratio * curvature_bce;
      }
    }
  }
};

// The row's quality target when the element reads one and the row has a class label, else 0.
template <class Element, typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t row_quality(const KernelArgs<scalar_t, acc_t>& a, int64_t row, int64_t label) {
  if constexpr (Element::kReadsQuality) {
    if (label >= 0 && label < a.cols) {
      const acc_t quality = a.quality[row * a.quality_stride];
      CUDA_KERNEL_ASSERT_MSG(
          quality >= acc_t(0) && quality <= acc_t(1),
          "retinanet_plugin quality_focal_loss: a quality target on a labelled row is outside [0, 1] (or NaN)");
      return quality;
    }
  }
  return acc_t(0);
}

template <typename T>
__device__ __forceinline__ T block_sum(T value, T* shared) {  // result in thread 0
  for (int offset = 16; offset > 0; offset >>= 1) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) {
    shared[warp] = value;
  }
  __syncthreads();
  value = threadIdx.x < kWarps ? shared[threadIdx.x] : T(0);
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset >>= 1) {
      value += __shfl_down_sync(0xffffffffu, value, offset);
    }
  }
  return value;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t load_logit(const KernelArgs<scalar_t, acc_t>& a, int64_t row, int64_t col) {
  return to_acc(a.logits[row * a.row_stride + col * a.col_stride]);
}

// The loss (kGrad false) or dloss/dx (kGrad true) of logit (row, col) of a non-ignored row.
template <class Element, bool kGrad, typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t element_term(
    const KernelArgs<scalar_t, acc_t>& a, int64_t row, int64_t col, int64_t label, acc_t quality) {
  acc_t loss = 0;
  acc_t dloss_dx = 0;
  Element::template terms<!kGrad, kGrad>(load_logit(a, row, col), col == label, quality, a, loss, dloss_dx);
  return kGrad ? dloss_dx : loss;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t inverse_denominator(const KernelArgs<scalar_t, acc_t>& a) {
  return acc_t(1) / (a.divisor * (a.normalizer != nullptr ? *a.normalizer : acc_t(1)));
}

// The rows of this thread, and its first column in them.
#define FOR_EACH_ROW_OF_THREAD(a, row, first_col)                                                       \
  const int64_t rows_per_block = kThreads >> (a).log2_threads_per_row;                                  \
  const int64_t first_col = threadIdx.x & ((a).threads_per_row - 1);                                     \
  for (int64_t row = blockIdx.x * rows_per_block + (threadIdx.x >> (a).log2_threads_per_row); row < (a).rows; \
       row += static_cast<int64_t>(gridDim.x) * rows_per_block)

template <typename scalar_t, typename acc_t, class Element>
__global__ void __launch_bounds__(kThreads) forward_elementwise_kernel(KernelArgs<scalar_t, acc_t> a, acc_t* loss) {
  const acc_t scale = inverse_denominator(a);
  FOR_EACH_ROW_OF_THREAD(a, row, first_col) {
    const int64_t label = checked_label(a, row);
    const acc_t quality = row_quality<Element>(a, row, label);
    for (int64_t col = first_col; col < a.cols; col += a.threads_per_row) {
      loss[row * a.cols + col] = label >= 0 ? element_term<Element, false>(a, row, col, label, quality) * scale : 0;
    }
  }
}

template <typename scalar_t, typename acc_t, class Element>
__global__ void __launch_bounds__(kThreads)
    forward_reduce_kernel(KernelArgs<scalar_t, acc_t> a, acc_t* partial_sums, long long* partial_counts) {
  __shared__ acc_t shared_sums[kWarps];
  __shared__ long long shared_counts[kWarps];
  acc_t sum = 0;
  long long valid_rows = 0;
  FOR_EACH_ROW_OF_THREAD(a, row, first_col) {
    const int64_t label = checked_label(a, row);
    if (label < 0) {
      continue;
    }
    valid_rows += first_col == 0;
    const acc_t quality = row_quality<Element>(a, row, label);
    for (int64_t col = first_col; col < a.cols; col += a.threads_per_row) {
      sum += element_term<Element, false>(a, row, col, label, quality);
    }
  }
  sum = block_sum(sum, shared_sums);
  valid_rows = block_sum(valid_rows, shared_counts);
  if (threadIdx.x == 0) {
    partial_sums[blockIdx.x] = sum;
    partial_counts[blockIdx.x] = valid_rows;
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) finalize_kernel(
    const acc_t* partial_sums,
    const long long* partial_counts,
    int num_partials,
    int64_t cols,
    bool mean,
    const acc_t* normalizer,
    acc_t divisor,
    acc_t* loss) {
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

template <typename scalar_t, typename acc_t, class Element>
__global__ void __launch_bounds__(kThreads) backward_kernel(
    KernelArgs<scalar_t, acc_t> a,
    const acc_t* grad,
    bool grad_elementwise,
    int64_t grad_row_stride,
    int64_t grad_col_stride,
    const long long* valid_rows,
    scalar_t* grad_logits) {
  acc_t scale = inverse_denominator(a);
  if (valid_rows != nullptr) {
    const long long elements = *valid_rows * a.cols;
    scale /= static_cast<acc_t>(elements > 1 ? elements : 1);
  }
  if (!grad_elementwise) {
    scale *= *grad;
  }
  FOR_EACH_ROW_OF_THREAD(a, row, first_col) {
    const int64_t label = checked_label(a, row);
    const acc_t quality = row_quality<Element>(a, row, label);
    for (int64_t col = first_col; col < a.cols; col += a.threads_per_row) {
      acc_t value = 0;
      if (label >= 0) {
        value = element_term<Element, true>(a, row, col, label, quality);
        value *= grad_elementwise ? grad[row * grad_row_stride + col * grad_col_stride] * scale : scale;
      }
      store_acc(grad_logits + row * a.cols + col, value);
    }
  }
}

// ------------------------------------------------------------------------------------------------ host side

// The power of two <= 32 that leaves the fewest idle lanes on a row of `cols` (the larger one on ties).
int threads_per_row_for(int64_t cols) {
  int best = 32;
  double best_use = -1.0;
  for (int t = 32; t >= 1; t /= 2) {
    const int64_t steps = (cols + t - 1) / t;
    const double use = cols == 0 ? 1.0 : static_cast<double>(cols) / static_cast<double>(steps * t);
    if (use > best_use + 1e-12) {
      best = t;
      best_use = use;
    }
  }
  return best;
}

int log2_of(int power_of_two) {
  int log = 0;
  while ((1 << log) < power_of_two) {
    ++log;
  }
  return log;
}

int grid_size(const Problem& p) {
  const int64_t rows_per_block = kThreads / threads_per_row_for(p.cols);
  const int64_t blocks = (p.rows + rows_per_block - 1) / rows_per_block;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, std::max(p.max_blocks, 1))));
}

template <typename scalar_t, typename acc_t>
KernelArgs<scalar_t, acc_t> make_args(const Problem& p) {
  KernelArgs<scalar_t, acc_t> a;
  a.logits = static_cast<const scalar_t*>(p.logits);
  a.rows = p.rows;
  a.cols = p.cols;
  a.row_stride = p.row_stride;
  a.col_stride = p.col_stride;
  a.labels = p.labels;
  a.labels_int32 = p.labels_int32;
  a.label_stride = p.label_stride;
  a.gamma = static_cast<acc_t>(p.gamma);
  a.weight_positive = static_cast<acc_t>(p.weight_positive);
  a.weight_negative = static_cast<acc_t>(p.weight_negative);
  a.beta = static_cast<acc_t>(p.beta);
  a.quality = static_cast<const acc_t*>(p.quality);
  a.quality_stride = p.quality_stride;
  a.normalizer = static_cast<const acc_t*>(p.normalizer);
  a.divisor = static_cast<acc_t>(p.divisor);
  a.threads_per_row = threads_per_row_for(p.cols);
  a.log2_threads_per_row = log2_of(a.threads_per_row);
  return a;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<scalar_t>, TypeTag<acc_t>, TypeTag<Element>), the element's exponent 2 (the common case) as a
// compile-time flag.
template <typename Fn>
void dispatch(const Problem& p, Fn&& fn) {
  auto with_element = [&](auto scalar_tag, auto acc_tag) {
    switch (p.kind) {
      case LossKind::SigmoidFocal:
        if (p.gamma_is_two) {
          fn(scalar_tag, acc_tag, TypeTag<SigmoidFocalElement<true>>{});
        } else {
          fn(scalar_tag, acc_tag, TypeTag<SigmoidFocalElement<false>>{});
        }
        break;
      case LossKind::QualityFocal:
        if (p.beta == 2.0) {
          fn(scalar_tag, acc_tag, TypeTag<QualityFocalElement<true>>{});
        } else {
          fn(scalar_tag, acc_tag, TypeTag<QualityFocalElement<false>>{});
        }
        break;
    }
  };
  switch (p.type) {
    case LogitsType::Float32:
      with_element(TypeTag<float>{}, TypeTag<float>{});
      break;
    case LogitsType::Float64:
      with_element(TypeTag<double>{}, TypeTag<double>{});
      break;
    case LogitsType::Float16:
      with_element(TypeTag<__half>{}, TypeTag<float>{});
      break;
    case LogitsType::BFloat16:
      with_element(TypeTag<__nv_bfloat16>{}, TypeTag<float>{});
      break;
  }
}

}  // namespace

int reduce_grid_size(const Problem& problem) {
  return grid_size(problem);
}

cudaError_t launch_forward_elementwise(const Problem& p, void* loss) {
  if (p.rows == 0) {
    return cudaSuccess;
  }
  dispatch(p, [&](auto scalar_tag, auto acc_tag, auto element_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using acc_t = typename decltype(acc_tag)::type;
    using Element = typename decltype(element_tag)::type;
    forward_elementwise_kernel<scalar_t, acc_t, Element>
        <<<grid_size(p), kThreads, 0, p.stream>>>(make_args<scalar_t, acc_t>(p), static_cast<acc_t*>(loss));
  });
  return cudaGetLastError();
}

cudaError_t launch_forward_reduce(const Problem& p, bool mean, void* partial_sums, int64_t* partial_counts, void* loss) {
  const int blocks = grid_size(p);
  auto* counts = reinterpret_cast<long long*>(partial_counts);
  dispatch(p, [&](auto scalar_tag, auto acc_tag, auto element_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using acc_t = typename decltype(acc_tag)::type;
    using Element = typename decltype(element_tag)::type;
    const auto args = make_args<scalar_t, acc_t>(p);
    forward_reduce_kernel<scalar_t, acc_t, Element>
        <<<blocks, kThreads, 0, p.stream>>>(args, static_cast<acc_t*>(partial_sums), counts);
    finalize_kernel<acc_t><<<1, kThreads, 0, p.stream>>>(
        static_cast<const acc_t*>(partial_sums), counts, blocks, p.cols, mean, args.normalizer, args.divisor,
        static_cast<acc_t*>(loss));
  });
  return cudaGetLastError();
}

cudaError_t launch_backward(
    const Problem& p,
    const void* grad,
    bool grad_elementwise,
    int64_t grad_row_stride,
    int64_t grad_col_stride,
    const int64_t* valid_rows,
    void* grad_logits) {
  if (p.rows == 0) {
    return cudaSuccess;
  }
  dispatch(p, [&](auto scalar_tag, auto acc_tag, auto element_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using acc_t = typename decltype(acc_tag)::type;
    using Element = typename decltype(element_tag)::type;
    backward_kernel<scalar_t, acc_t, Element><<<grid_size(p), kThreads, 0, p.stream>>>(
        make_args<scalar_t, acc_t>(p), static_cast<const acc_t*>(grad), grad_elementwise, grad_row_stride,
        grad_col_stride, reinterpret_cast<const long long*>(valid_rows), static_cast<scalar_t*>(grad_logits));
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace retinanet_plugin
