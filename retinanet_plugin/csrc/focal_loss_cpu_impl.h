// The vectorised CPU kernels of the focal losses. Not a normal header: focal_loss_cpu_{default,avx2,avx512}.cpp each
// include it once, after defining CPU_CAPABILITY (DEFAULT, AVX2, AVX512) and switching the instruction set on, so
// every function here is compiled once per instruction set into its own namespace (as ATen does for its kernels).
//
// Work split: rows are cut into fixed blocks of rows_per_block(K) rows; at::parallel_for hands blocks to
// threads. In a block each row is read once: its label first (one read, checked), its quality target for the
// quality focal loss (checked), then its K logits in SIMD vectors of Vectorized<acc_t> (fp32 math for
// fp16/bf16/fp32, fp64 for fp64; fp16/bf16 rows are widened 256 columns at a time into a stack buffer). The loss
// itself is an "element" (SigmoidFocalElement, QualityFocalElement) applied to each vector; the one positive
// column of a row, if any, is a lane mask in the vector that holds it. A reduced loss is summed per block in a
// SIMD accumulator, then the block sums are added in block order (focal_loss_cpu.cpp), so the result is the same
// for any number of threads.

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
  Vec zero, lane_index, scale;
  explicit VecConstants(double scale_)
      : zero(acc_t(0)), lane_index(Vec::arange(acc_t(0), acc_t(1))), scale(static_cast<acc_t>(scale_)) {}
};

// The per-element losses. Each maps a vector of logits x of one row to the loss and/or dloss/dx; when
// `has_positive`, `positive_lane` is all ones in the lane of the row's class and `quality` is that row's target.

// Sigmoid focal loss (derivation in focal_loss.h), in the signed logit z: -x in the positive lane, x elsewhere.
template <typename acc_t, bool kGammaTwo>
struct SigmoidFocalElement {
  using Vec = Vectorized<acc_t>;
  static constexpr bool kReadsQuality = false;
  Vec zero, one, gamma, weight_positive, weight_negative;
  explicit SigmoidFocalElement(const LossSpec& spec)
      : zero(acc_t(0)),
        one(acc_t(1)),
        gamma(static_cast<acc_t>(spec.focal.gamma)),
        weight_positive(static_cast<acc_t>(spec.focal.weight_positive)),
        weight_negative(static_cast<acc_t>(spec.focal.weight_negative)) {}

  template <bool kLoss, bool kGrad>
  void operator()(const Vec& x, bool has_positive, const Vec& positive_lane, acc_t /*quality*/, Vec& loss,
      Vec& dloss_dx) const {
    Vec z = x;
    Vec w = weight_negative;
    if (has_positive) {  // once per row: flip the sign of the positive lane, use the positive weight there
      z = Vec::blendv(x, x.neg(), positive_lane);
      w = Vec::blendv(weight_negative, weight_positive, positive_lane);
    }
    const Vec e = z.abs().neg().exp();  // exp(-|z|) in (0, 1]: never overflows
    const Vec l = e.log1p();
    const Vec softplus_z = at::vec::maximum(z, zero) + l;  // -log(1 - q)
    const Vec r = (one + e).reciprocal();
    const Vec er = e * r;
    const Vec z_nonneg = z >= zero;
    const Vec q = Vec::blendv(er, r, z_nonneg);  // sigmoid(z)
    Vec modulating;                              // q^gamma
    if constexpr (kGammaTwo) {
      modulating = q * q;
    } else {
      modulating = (gamma * (at::vec::maximum(z.neg(), zero) + l)).neg().exp();  // exp(-gamma * softplus(-z))
    }
    const Vec weighted = w * modulating;
    if constexpr (kLoss) {
      loss = weighted * softplus_z;
    }
    if constexpr (kGrad) {
      const Vec one_minus_q = Vec::blendv(r, er, z_nonneg);
      const Vec dloss_dz = weighted * at::vec::fmadd(gamma * one_minus_q, softplus_z, q);
      dloss_dx = has_positive ? Vec::blendv(dloss_dz, dloss_dz.neg(), positive_lane) : dloss_dz;
    }
  }
};

// Quality focal loss (derivation in quality_focal_loss.h): target y = quality in the positive lane, 0 elsewhere.
template <typename acc_t, bool kBetaTwo>
struct QualityFocalElement {
  using Vec = Vectorized<acc_t>;
  static constexpr bool kReadsQuality = true;
  Vec zero, one, beta;
  bool beta_is_zero;  // plain BCE: dloss/dx = d (the b |d|^b / d term is 0, but |d|^0 / d may overflow)
  explicit QualityFocalElement(const LossSpec& spec)
      : zero(acc_t(0)), one(acc_t(1)), beta(static_cast<acc_t>(spec.beta)), beta_is_zero(spec.beta == 0.0) {}

  template <bool kLoss, bool kGrad>
  void operator()(const Vec& x, bool has_positive, const Vec& positive_lane, acc_t quality, Vec& loss,
      Vec& dloss_dx) const {
    const Vec y = has_positive ? Vec::blendv(zero, Vec(quality), positive_lane) : zero;
    const Vec e = x.abs().neg().exp();  // exp(-|x|) in (0, 1]: never overflows
    const Vec l = e.log1p();
    const Vec softplus_x = at::vec::maximum(x, zero) + l;            // -log(1 - s)
    const Vec softplus_minus_x = at::vec::maximum(x.neg(), zero) + l;  // -log(s)
    const Vec r = (one + e).reciprocal();
    const Vec er = e * r;
    const Vec x_nonneg = x >= zero;
    const Vec s = Vec::blendv(er, r, x_nonneg);  // sigmoid(x)
    const Vec one_minus_s = Vec::blendv(r, er, x_nonneg);
    const Vec one_minus_y = one - y;
    const Vec d = Vec::blendv(s - y, one_minus_y - one_minus_s, x_nonneg);  // s - y
    const Vec bce = at::vec::fmadd(y, softplus_minus_x, one_minus_y * softplus_x);
    Vec modulating;  // |d|^beta
    if constexpr (kBetaTwo) {
      modulating = d * d;
    } else {
      modulating = d.abs().pow(beta);
    }
    if constexpr (kLoss) {
      loss = modulating * bce;
    }
    if constexpr (kGrad) {
      const Vec curvature_bce = s * one_minus_s * bce;  // s (1 - s) BCE
      if constexpr (kBetaTwo) {
        dloss_dx = d * at::vec::fmadd(beta, curvature_bce, modulating);  // d (d^2 + 2 s (1 - s) BCE)
      } else if (beta_is_zero) {
        dloss_dx = d;
      } else {
        const Vec ratio = Vec::blendv(modulating / d, zero, d == zero);  // |d|^beta / d, 0 at d = 0
        dloss_dx = at::vec::fmadd(modulating, d, beta * ratio * curvature_bce);
      }
    }
  }
};

// n consecutive logits x[0, n) of one non-ignored row; `positive` is the positive column relative to x (outside
// [0, n) when none of these columns is the row's class), `quality` the row's target.
template <typename acc_t, class Element, Mode kMode>
inline void process_row(
    const acc_t* x,
    int64_t n,
    int64_t positive,
    acc_t quality,
    const Element& element,
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
    Vec positive_lane;
    if (has_positive) {
      positive_lane = c.lane_index == Vec(static_cast<acc_t>(positive - i));
    }
    Vec loss, grad;
    element.template operator()<kLoss, !kLoss>(xv, has_positive, positive_lane, quality, loss, grad);
    if constexpr (kMode == Mode::LossSum) {
      sum = sum + (full ? loss : Vec::set(c.zero, loss, count));
    } else if constexpr (kMode == Mode::LossElementwise) {
      const Vec value = loss * c.scale;
      full ? value.store(out + i) : value.store(out + i, count);
    } else {
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

// What every row of a call reads, besides its logits' dtype.
template <typename acc_t>
struct RowInputs {
  int64_t row_stride;
  int64_t num_classes;
  LabelReader labels;
  const acc_t* quality;  // [N] (quality focal loss), else nullptr
  int64_t quality_stride;
  const acc_t* upstream;  // [N, K] with unit column stride (Mode::GradTimesUpstream), else nullptr
  int64_t upstream_row_stride;
  const char* op_name;
};

// Rows [row_begin, row_end). out: acc_t [N, K] for the loss modes, scalar_t [N, K] for the gradient modes.
template <typename scalar_t, typename acc_t, class Element, Mode kMode>
void process_rows(
    const scalar_t* logits,
    const RowInputs<acc_t>& in,
    const Element& element,
    const VecConstants<acc_t>& c,
    int64_t row_begin,
    int64_t row_end,
    void* out,
    double* block_sum,
    int64_t* block_valid_rows) {
  constexpr bool kSameType = std::is_same_v<scalar_t, acc_t>;
  constexpr bool kGradMode = kMode == Mode::Grad || kMode == Mode::GradTimesUpstream;
  constexpr int64_t kChunk = 256;  // columns widened at a time for fp16/bf16
  acc_t x_buffer[kSameType ? 1 : kChunk];
  acc_t grad_buffer[kSameType ? 1 : kChunk];
  Vectorized<acc_t> sum(acc_t(0));
  int64_t valid_rows = 0;
  const int64_t K = in.num_classes;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t label = in.labels(row);
    if (label < -1 || label > K) {
      throw_bad_label(in.op_name, row, label, K);
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
    acc_t quality = 0;
    if constexpr (Element::kReadsQuality) {
      if (label < K) {  // read on labelled rows only: background rows have no target
        quality = in.quality[row * in.quality_stride];
        if (!(quality >= acc_t(0) && quality <= acc_t(1))) {  // NaN fails too
          throw_bad_quality(in.op_name, row, static_cast<double>(quality));
        }
      }
    }
    const scalar_t* x_row = logits + row * in.row_stride;
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
      const acc_t* up = kMode == Mode::GradTimesUpstream ? in.upstream + row * in.upstream_row_stride + j : nullptr;
      process_row<acc_t, Element, kMode>(x, n, label - j, quality, element, c, sum, o, up);
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

// Calls fn(element) with the element of `spec`, its constant exponent 2 (the common case) as a compile-time flag.
template <typename acc_t, typename Fn>
void with_element(const LossSpec& spec, Fn&& fn) {
  switch (spec.kind) {
    case LossKind::SigmoidFocal:
      if (spec.focal.gamma_is_two) {
        fn(SigmoidFocalElement<acc_t, true>(spec));
      } else {
        fn(SigmoidFocalElement<acc_t, false>(spec));
      }
      break;
    case LossKind::QualityFocal:
      if (spec.beta == 2.0) {
        fn(QualityFocalElement<acc_t, true>(spec));
      } else {
        fn(QualityFocalElement<acc_t, false>(spec));
      }
      break;
  }
}

template <Mode kMode>
void run(
    const at::Tensor& logits,
    const at::Tensor& labels,
    const LossSpec& spec,
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "focal_loss_cpu_kernels", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    RowInputs<acc_t> in{};
    in.row_stride = logits.stride(0);
    in.num_classes = K;
    in.labels = LabelReader{labels.const_data_ptr(), labels.stride(0), labels.scalar_type() == at::kInt};
    if (spec.kind == LossKind::QualityFocal) {
      in.quality = spec.quality.const_data_ptr<acc_t>();
      in.quality_stride = spec.quality.stride(0);
    }
    if constexpr (kMode == Mode::GradTimesUpstream) {
      in.upstream = upstream.const_data_ptr<acc_t>();
      in.upstream_row_stride = upstream.stride(0);
    }
    in.op_name = spec.op_name;
    const VecConstants<acc_t> constants(scale);
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    with_element<acc_t>(spec, [&](const auto& element) {
      using Element = std::decay_t<decltype(element)>;
      at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
        for (int64_t b = block_begin; b < block_end; ++b) {
          const int64_t row_begin = b * block_rows;
          const int64_t row_end = std::min(N, row_begin + block_rows);
          double* sum_slot = kMode == Mode::LossSum ? partial_sums + b : nullptr;
          int64_t* valid_slot = kMode == Mode::LossSum ? partial_valid_rows + b : nullptr;
          process_rows<scalar_t, acc_t, Element, kMode>(
              x, in, element, constants, row_begin, row_end, out, sum_slot, valid_slot);
        }
      });
    });
  });
}

void forward_elementwise(
    const at::Tensor& logits, const at::Tensor& labels, const LossSpec& spec, double scale, at::Tensor& loss_out) {
  run<Mode::LossElementwise>(logits, labels, spec, scale, loss_out.data_ptr(), at::Tensor(), nullptr, nullptr);
}

void forward_partial_sums(
    const at::Tensor& logits, const at::Tensor& labels, const LossSpec& spec, double* partial_sums,
    int64_t* valid_rows) {
  run<Mode::LossSum>(logits, labels, spec, 1.0, nullptr, at::Tensor(), partial_sums, valid_rows);
}

void backward(
    const at::Tensor& logits,
    const at::Tensor& labels,
    const LossSpec& spec,
    double scale,
    const at::Tensor& grad_loss,
    at::Tensor& grad_logits) {
  if (grad_loss.defined()) {
    run<Mode::GradTimesUpstream>(logits, labels, spec, scale, grad_logits.data_ptr(), grad_loss, nullptr, nullptr);
  } else {
    run<Mode::Grad>(logits, labels, spec, scale, grad_logits.data_ptr(), at::Tensor(), nullptr, nullptr);
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
