// The vectorised CPU kernels of the focal losses. Not a normal header: focal_loss_cpu_{default,avx2,avx512}.cpp each
// include it once (the x86 variants through focal_loss_cpu_isa.h), after defining CPU_CAPABILITY (DEFAULT, AVX2,
// AVX512) and switching the instruction set on, so every function here is compiled once per instruction set into its
// own namespace (as ATen does for its kernels).
//
// Work split: rows are cut into fixed blocks of rows_per_block(K) rows; at::parallel_for hands blocks to
// threads. In a block each row is read once: its label first (one read, checked), its quality target for the
// quality focal loss (checked), then its K logits in SIMD vectors of Vectorized<acc_t> (fp32 math for
// fp16/bf16/fp32, fp64 for fp64; fp16/bf16 rows are widened 256 columns at a time into a stack buffer). The loss
// itself is one of the shared elements of loss_elements.h (sigmoid focal, quality focal, dense focal), compiled here
// on SIMD vectors through the VecMath policy; the one positive column of a row, if any, is a lane mask in the
// vector that holds it, and the dense element reads a vector of float targets beside the logits. A reduced loss is summed per block in a
// SIMD accumulator, then the block sums are added in block order (focal_loss_cpu.cpp), so the result is the same
// for any number of threads.

#include "loss_elements.h"

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

// The SIMD math policy of the shared elements (loss_elements.h): one Vectorized<acc_t> of lanes at a time.
template <typename acc_t>
struct VecMath {
  using V = Vectorized<acc_t>;
  using Mask = Vectorized<acc_t>;  // all ones in the selected lanes
  static V splat(acc_t v) { return V(v); }
  static V abs(const V& v) { return v.abs(); }
  static V neg(const V& v) { return v.neg(); }
  static V max(const V& a, const V& b) { return at::vec::maximum(a, b); }
  static V exp(const V& v) { return v.exp(); }
  static V log1p(const V& v) { return v.log1p(); }
  static V reciprocal(const V& v) { return v.reciprocal(); }
  static V fmadd(const V& a, const V& b, const V& c) { return at::vec::fmadd(a, b, c); }
  static V pow(const V& base, const V& e) { return base.pow(e); }  // Sleef: 0^0 = 1, 0^e = 0
  static Mask ge(const V& a, const V& b) { return a >= b; }
  static Mask gt(const V& a, const V& b) { return a > b; }
  static Mask eq(const V& a, const V& b) { return a == b; }
  static V select(const Mask& m, const V& if_true, const V& if_false) { return V::blendv(if_false, if_true, m); }
};

// The targets of one row, seen from the start of the logits that process_row gets.
template <typename acc_t>
struct LabelTargets {  // label elements: the positive column (outside [0, n) when none is there) and its quality
  int64_t positive;
  acc_t quality;
  LabelTargets shifted(int64_t j) const { return {positive - j, quality}; }
};
template <typename acc_t>
struct DenseTargets {  // dense element: one target in [0, 1] per logit, unit column stride
  const acc_t* t;
  int64_t row;     // for the error message
  int64_t column;  // the column of t[0]
  const char* op_name;
  DenseTargets shifted(int64_t j) const { return {t + j, row, column + j, op_name}; }
};

// loss and/or dloss/dx of the lanes [i, i + count) of one row.
template <bool kLoss, typename acc_t, class Element>
inline void element_terms(const Element& element, const Vectorized<acc_t>& x, int64_t i, int64_t count,
    const LabelTargets<acc_t>& targets, const VecConstants<acc_t>& c, Vectorized<acc_t>& loss,
    Vectorized<acc_t>& grad) {
  using Vec = Vectorized<acc_t>;
  const bool has_positive = static_cast<uint64_t>(targets.positive - i) < static_cast<uint64_t>(count);
  Vec positive_lane;
  if (has_positive) {
    positive_lane = c.lane_index == Vec(static_cast<acc_t>(targets.positive - i));
  }
  element.template terms<kLoss, !kLoss>(x, has_positive, positive_lane, targets.quality, loss, grad);
}

template <bool kLoss, typename acc_t, class Element>
inline void element_terms(const Element& element, const Vectorized<acc_t>& x, int64_t i, int64_t count,
    const DenseTargets<acc_t>& targets, const VecConstants<acc_t>& c, Vectorized<acc_t>& loss,
    Vectorized<acc_t>& grad) {
  using Vec = Vectorized<acc_t>;
  const Vec t = count == Vec::size() ? Vec::loadu(targets.t + i) : Vec::loadu(targets.t + i, count);
  const Vec valid = (t >= c.zero) & (t <= Vec(acc_t(1)));  // NaN fails; the padding lanes are 0
  if (valid.zero_mask() != 0) {
    for (int64_t k = i; k < i + count; ++k) {
      if (!target_is_valid(targets.t[k])) {
        throw_bad_target(targets.op_name, targets.row, targets.column + k, static_cast<double>(targets.t[k]));
      }
    }
  }
  element.template terms<kLoss, !kLoss>(x, t, loss, grad);
}

// n consecutive logits x[0, n) of one non-ignored row and their targets.
template <typename acc_t, class Element, Mode kMode, class Targets>
inline void process_row(
    const acc_t* x,
    int64_t n,
    const Targets& targets,
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
    Vec loss, grad;
    element_terms<kLoss>(element, xv, i, count, targets, c, loss, grad);
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

// What every row of a call reads, besides its logits.
template <typename acc_t>
struct RowInputs {
  int64_t row_stride;
  int64_t num_classes;
  LabelReader labels;    // label elements
  const acc_t* quality;  // [N] (quality focal loss), else nullptr
  int64_t quality_stride;
  const acc_t* targets;  // [N, K] with unit column stride (dense element), else nullptr
  int64_t targets_row_stride;
  const acc_t* upstream;  // [N, K] with unit column stride (Mode::GradTimesUpstream), else nullptr
  int64_t upstream_row_stride;
  const char* op_name;
};

// The targets of `row` for the label elements; false for an ignored row. Raises for a bad label or quality.
template <class Element, typename acc_t>
inline bool row_targets(const RowInputs<acc_t>& in, int64_t row, LabelTargets<acc_t>& targets) {
  const int64_t label = in.labels(row);
  if (!label_is_valid(label, in.num_classes)) {
    throw_bad_label(in.op_name, row, label, in.num_classes);
  }
  targets = {label, acc_t(0)};
  if constexpr (Element::kReadsQuality) {
    if (label_is_class(label, in.num_classes)) {  // read on labelled rows only: background rows have no target
      targets.quality = in.quality[row * in.quality_stride];
      if (!target_is_valid(targets.quality)) {
        throw_bad_quality(in.op_name, row, static_cast<double>(targets.quality));
      }
    }
  }
  return label >= 0;
}

template <class Element, typename acc_t>
inline bool row_targets(const RowInputs<acc_t>& in, int64_t row, DenseTargets<acc_t>& targets) {
  targets = {in.targets + row * in.targets_row_stride, row, 0, in.op_name};
  return true;
}

// Rows [row_begin, row_end). out: acc_t [N, K] for the loss modes, scalar_t [N, K] for the gradient modes.
template <typename scalar_t, typename acc_t, class Element, class Targets, Mode kMode>
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
    Targets targets;
    if (!row_targets<Element>(in, row, targets)) {  // ignored anchor: no loss, zero gradient
      if constexpr (kMode == Mode::LossElementwise) {
        std::fill_n(static_cast<acc_t*>(out) + row * K, K, acc_t(0));
      } else if constexpr (kGradMode) {
        std::fill_n(static_cast<scalar_t*>(out) + row * K, K, scalar_t(0));
      }
      continue;
    }
    ++valid_rows;
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
      process_row<acc_t, Element, kMode>(x, n, targets.shifted(j), element, c, sum, o, up);
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

// Calls fn(element, targets_tag) with the element of `spec` (its exponent 2, the common case, as a compile-time
// flag) and a value of the type of targets it reads.
template <typename acc_t, typename Fn>
void with_element(const LossSpec& spec, Fn&& fn) {
  using M = VecMath<acc_t>;
  const FocalLossParams& f = spec.focal;
  switch (spec.kind) {
    case LossKind::SigmoidFocal:
      with_flag(f.gamma_is_two, [&](auto gamma_is_two) {
        using E = SigmoidFocalElement<M, decltype(gamma_is_two)::value>;
        fn(E(f.gamma, f.weight_positive, f.weight_negative), LabelTargets<acc_t>{});
      });
      break;
    case LossKind::QualityFocal:
      with_flag(spec.beta == 2.0, [&](auto beta_is_two) {
        using E = QualityFocalElement<M, decltype(beta_is_two)::value>;
        fn(E(spec.beta), LabelTargets<acc_t>{});
      });
      break;
    case LossKind::DenseFocal:
      with_flag(f.gamma_is_two, [&](auto gamma_is_two) {
        using E = DenseFocalElement<M, decltype(gamma_is_two)::value>;
        fn(E(f.gamma, f.weight_positive, f.weight_negative), DenseTargets<acc_t>{});
      });
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
    if (spec.kind == LossKind::DenseFocal) {
      in.targets = spec.targets.const_data_ptr<acc_t>();
      in.targets_row_stride = spec.targets.stride(0);
    } else {
      in.labels = LabelReader{labels.const_data_ptr(), labels.stride(0), labels.scalar_type() == at::kInt};
    }
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
    with_element<acc_t>(spec, [&](const auto& element, auto targets_tag) {
      using Element = std::decay_t<decltype(element)>;
      using Targets = decltype(targets_tag);
      at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
        for (int64_t b = block_begin; b < block_end; ++b) {
          const int64_t row_begin = b * block_rows;
          const int64_t row_end = std::min(N, row_begin + block_rows);
          double* sum_slot = kMode == Mode::LossSum ? partial_sums + b : nullptr;
          int64_t* valid_slot = kMode == Mode::LossSum ? partial_valid_rows + b : nullptr;
          process_rows<scalar_t, acc_t, Element, Targets, kMode>(
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

const Kernels* RETINANET_PLUGIN_CONCAT(kernels_, CPU_CAPABILITY)() {
  static const Kernels kernels{
      &CPU_CAPABILITY::forward_elementwise, &CPU_CAPABILITY::forward_partial_sums, &CPU_CAPABILITY::backward};
  return &kernels;
}

}  // namespace cpu
}  // namespace retinanet_plugin
