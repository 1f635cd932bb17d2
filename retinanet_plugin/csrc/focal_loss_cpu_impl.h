// The vectorised CPU kernels of the focal loss. Not a normal header: focal_loss_cpu_{default,avx2,avx512}.cpp each
// include it once, after defining CPU_CAPABILITY (DEFAULT, AVX2, AVX512) and switching the instruction set on, so
// every function here is compiled once per instruction set into its own namespace (as ATen does for its kernels).
//
// Work split: rows are cut into fixed blocks of rows_per_block(K) rows; at::parallel_for hands blocks to
// threads. In a block each row is read once: its label first (one read, checked), then its K logits in
// SIMD vectors of Vectorized<acc_t> (fp32 math for fp16/bf16/fp32, fp64 for fp64; fp16/bf16 rows are widened
// 256 columns at a time into a stack buffer). The one positive column of a row, if any, is handled in the
// vector that holds it by flipping the sign of that lane (see focal_loss.h). A reduced loss is summed per
// block in a SIMD accumulator, then the block sums are added in block order (focal_loss_cpu.cpp), so the
// result is the same for any number of threads.

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace retinanet_plugin {
namespace cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

enum class Mode {
  LossElementwise,    // out[n, k] = loss * scale
  LossSum,            // block sum of the loss
  Grad,               // out[n, k] = dloss/dx * scale
  GradTimesUpstream,  // out[n, k] = dloss/dx * scale * upstream[n, k]
};

template <typename acc_t>
struct VecConstants {
  using Vec = Vectorized<acc_t>;
  Vec zero, one, gamma, weight_positive, weight_negative, lane_index, scale;
  VecConstants(const FocalLossParams& params, double scale_)
      : zero(acc_t(0)),
        one(acc_t(1)),
        gamma(static_cast<acc_t>(params.gamma)),
        weight_positive(static_cast<acc_t>(params.weight_positive)),
        weight_negative(static_cast<acc_t>(params.weight_negative)),
        lane_index(Vec::arange(acc_t(0), acc_t(1))),
        scale(static_cast<acc_t>(scale_)) {}
};

// Loss and/or dloss/dz of signed logits z with weights w (derivation in focal_loss.h).
template <typename acc_t, bool kGammaTwo, bool kLoss, bool kGrad>
inline void focal_terms(
    const Vectorized<acc_t>& z,
    const Vectorized<acc_t>& w,
    const VecConstants<acc_t>& c,
    Vectorized<acc_t>& loss,
    Vectorized<acc_t>& dloss_dz) {
  using Vec = Vectorized<acc_t>;
  const Vec e = z.abs().neg().exp();  // exp(-|z|) in (0, 1]: never overflows
  const Vec l = e.log1p();
  const Vec softplus_z = at::vec::maximum(z, c.zero) + l;  // -log(1 - q)
  const Vec r = (c.one + e).reciprocal();
  const Vec er = e * r;
  const Vec z_nonneg = z >= c.zero;
  const Vec q = Vec::blendv(er, r, z_nonneg);  // sigmoid(z)
  Vec modulating;                              // q^gamma
  if constexpr (kGammaTwo) {
    modulating = q * q;
  } else {
    modulating = (c.gamma * (at::vec::maximum(z.neg(), c.zero) + l)).neg().exp();  // exp(-gamma * softplus(-z))
  }
  const Vec weighted = w * modulating;
  if constexpr (kLoss) {
    loss = weighted * softplus_z;
  }
  if constexpr (kGrad) {
    const Vec one_minus_q = Vec::blendv(r, er, z_nonneg);
    dloss_dz = weighted * at::vec::fmadd(c.gamma * one_minus_q, softplus_z, q);
  }
}

// n consecutive logits x[0, n) of one non-ignored row; `positive` is the positive column relative to x (outside
// [0, n) when none of these columns is the row's class).
template <typename acc_t, bool kGammaTwo, Mode kMode>
inline void process_row(
    const acc_t* x,
    int64_t n,
    int64_t positive,
    const VecConstants<acc_t>& c,
    Vectorized<acc_t>& sum,
    acc_t* out,
    const acc_t* upstream) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  constexpr bool kLoss = kMode == Mode::LossElementwise || kMode == Mode::LossSum;
  for (int64_t i = 0; i < n; i += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, n - i);
    const bool full = count == kLanes;
    const Vec xv = full ? Vec::loadu(x + i) : Vec::loadu(x + i, count);
    const bool has_positive = static_cast<uint64_t>(positive - i) < static_cast<uint64_t>(count);
    Vec z = xv;
    Vec w = c.weight_negative;
    Vec positive_lane;
    if (has_positive) {  // once per row: flip the sign of the positive lane, use the positive weight there
      positive_lane = c.lane_index == Vec(static_cast<acc_t>(positive - i));
      z = Vec::blendv(xv, xv.neg(), positive_lane);
      w = Vec::blendv(c.weight_negative, c.weight_positive, positive_lane);
    }
    Vec loss, dloss_dz;
    focal_terms<acc_t, kGammaTwo, kLoss, !kLoss>(z, w, c, loss, dloss_dz);
    if constexpr (kMode == Mode::LossSum) {
      sum = sum + (full ? loss : Vec::set(c.zero, loss, count));
    } else if constexpr (kMode == Mode::LossElementwise) {
      const Vec value = loss * c.scale;
      full ? value.store(out + i) : value.store(out + i, count);
    } else {
      Vec grad = has_positive ? Vec::blendv(dloss_dz, dloss_dz.neg(), positive_lane) : dloss_dz;  // dloss/dx
      grad = grad * c.scale;
      if constexpr (kMode == Mode::GradTimesUpstream) {
        grad = grad * (full ? Vec::loadu(upstream + i) : Vec::loadu(upstream + i, count));
      }
      full ? grad.store(out + i) : grad.store(out + i, count);
    }
  }
}

struct LabelReader {
  const void* data;
  int64_t stride;
  bool is_int32;
  int64_t operator()(int64_t row) const {
    return is_int32 ? static_cast<int64_t>(static_cast<const int32_t*>(data)[row * stride])
                    : static_cast<const int64_t*>(data)[row * stride];
  }
};

// Rows [row_begin, row_end). out: acc_t [N, K] for the loss modes, scalar_t [N, K] for the gradient modes.
template <typename scalar_t, typename acc_t, bool kGammaTwo, Mode kMode>
void process_rows(
    const scalar_t* logits,
    int64_t row_stride,
    int64_t num_classes,
    const LabelReader& labels,
    int64_t row_begin,
    int64_t row_end,
    const VecConstants<acc_t>& c,
    void* out,
    const acc_t* upstream,
    int64_t upstream_row_stride,
    double* block_sum,
    int64_t* block_valid_rows) {
  constexpr bool kSameType = std::is_same_v<scalar_t, acc_t>;
  constexpr bool kGradMode = kMode == Mode::Grad || kMode == Mode::GradTimesUpstream;
  constexpr int64_t kChunk = 256;  // columns widened at a time for fp16/bf16
  acc_t x_buffer[kSameType ? 1 : kChunk];
  acc_t grad_buffer[kSameType ? 1 : kChunk];
  Vectorized<acc_t> sum(acc_t(0));
  int64_t valid_rows = 0;
  const int64_t K = num_classes;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t label = labels(row);
    if (label < -1 || label > K) {
      throw_bad_label(row, label, K);
    }
    if (label < 0) {  // ignored anchor: no loss, zero gradient
      if constexpr (kMode == Mode::LossElementwise) {
        std::fill_n(static_cast<acc_t*>(out) + row * K, K, acc_t(0));
      } else if constexpr (kGradMode) {
        std::fill_n(static_cast<scalar_t*>(out) + row * K, K, scalar_t(0));
      }
      continue;
    }
    ++valid_rows;
    const scalar_t* x_row = logits + row * row_stride;
    for (int64_t j = 0; j < K; j += kChunk) {
      const int64_t n = std::min(kChunk, K - j);
      const acc_t* x;
      if constexpr (kSameType) {
        x = x_row + j;
      } else {
        at::vec::convert(x_row + j, x_buffer, n);
        x = x_buffer;
      }
      acc_t* o = nullptr;
      if constexpr (kMode == Mode::LossElementwise) {
        o = static_cast<acc_t*>(out) + row * K + j;
      } else if constexpr (kGradMode) {
        if constexpr (kSameType) {
          o = static_cast<scalar_t*>(out) + row * K + j;
        } else {
          o = grad_buffer;
        }
      }
      const acc_t* up = kMode == Mode::GradTimesUpstream ? upstream + row * upstream_row_stride + j : nullptr;
      process_row<acc_t, kGammaTwo, kMode>(x, n, label - j, c, sum, o, up);
      if constexpr (kGradMode && !kSameType) {
        at::vec::convert(grad_buffer, static_cast<scalar_t*>(out) + row * K + j, n);
      }
    }
  }
  if constexpr (kMode == Mode::LossSum) {
    *block_sum = static_cast<double>(at::vec::vec_reduce_all<acc_t>(
        [](Vectorized<acc_t>& a, Vectorized<acc_t>& b) { return a + b; }, sum));
    *block_valid_rows = valid_rows;
  }
}

template <Mode kMode>
void run(
    const at::Tensor& logits,
    const at::Tensor& labels,
    const FocalLossParams& params,
    double scale,
    void* out,
    const at::Tensor& upstream,
    double* partial_sums,
    int64_t* partial_valid_rows) {
  const int64_t N = logits.size(0);
  const int64_t K = logits.size(1);
  if (N == 0) {
    return;
  }
  const int64_t block_rows = rows_per_block(K);
  const int64_t num_blocks = (N + block_rows - 1) / block_rows;
  const LabelReader label_reader{labels.const_data_ptr(), labels.stride(0), labels.scalar_type() == at::kInt};
  const int64_t row_stride = logits.stride(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sigmoid_focal_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const VecConstants<acc_t> constants(params, scale);
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const acc_t* up = nullptr;
    int64_t up_row_stride = 0;
    if constexpr (kMode == Mode::GradTimesUpstream) {
      up = upstream.const_data_ptr<acc_t>();
      up_row_stride = upstream.stride(0);
    }
    auto launch = [&](auto gamma_is_two) {
      constexpr bool kGammaTwo = decltype(gamma_is_two)::value;
      at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
        for (int64_t b = block_begin; b < block_end; ++b) {
          const int64_t row_begin = b * block_rows;
          const int64_t row_end = std::min(N, row_begin + block_rows);
          double* sum_slot = kMode == Mode::LossSum ? partial_sums + b : nullptr;
          int64_t* valid_slot = kMode == Mode::LossSum ? partial_valid_rows + b : nullptr;
          process_rows<scalar_t, acc_t, kGammaTwo, kMode>(
              x, row_stride, K, label_reader, row_begin, row_end, constants, out, up, up_row_stride, sum_slot,
              valid_slot);
        }
      });
    };
    if (params.gamma_is_two) {
      launch(std::true_type{});
    } else {
      launch(std::false_type{});
    }
  });
}

void forward_elementwise(
    const at::Tensor& logits, const at::Tensor& labels, const FocalLossParams& params, double scale, at::Tensor& loss_out) {
  run<Mode::LossElementwise>(logits, labels, params, scale, loss_out.data_ptr(), at::Tensor(), nullptr, nullptr);
}

void forward_partial_sums(
    const at::Tensor& logits,
    const at::Tensor& labels,
    const FocalLossParams& params,
    double* partial_sums,
    int64_t* valid_rows) {
  run<Mode::LossSum>(logits, labels, params, 1.0, nullptr, at::Tensor(), partial_sums, valid_rows);
}

void backward(
    const at::Tensor& logits,
    const at::Tensor& labels,
    const FocalLossParams& params,
    double scale,
    const at::Tensor& grad_loss,
    at::Tensor& grad_logits) {
  if (grad_loss.defined()) {
    run<Mode::GradTimesUpstream>(logits, labels, params, scale, grad_logits.data_ptr(), grad_loss, nullptr, nullptr);
  } else {
    run<Mode::Grad>(logits, labels, params, scale, grad_logits.data_ptr(), at::Tensor(), nullptr, nullptr);
  }
}

}  // namespace CPU_CAPABILITY

#define RETINANET_PLUGIN_CONCAT_(a, b) a##b
#define RETINANET_PLUGIN_CONCAT(a, b) RETINANET_PLUGIN_CONCAT_(a, b)

const Kernels* RETINANET_PLUGIN_CONCAT(kernels_, CPU_CAPABILITY)() {
  static const Kernels kernels{
      &CPU_CAPABILITY::forward_elementwise, &CPU_CAPABILITY::forward_partial_sums, &CPU_CAPABILITY::backward};
  return &kernels;
}

}  // namespace cpu
}  // namespace retinanet_plugin
