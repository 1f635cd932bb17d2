// The host side of the focal loss CUDA kernels (focal_loss_kernels.cuh): the vector width a problem allows, the
// kernels' arguments, the dispatch on logits type, loss and vector width, the grids, and the launches. Compiled by
// nvcc into focal_loss_cuda.cu and by the host emulation in tests/cuda_emulation/, each with its Runtime policy:
//   Runtime::launch(kernel, grid, stream, args...)  <<<grid, kThreads, 0, stream>>> on CUDA, every thread emulated
//   Runtime::blocks_per_multiprocessor(kernel)      the occupancy of kernel at kThreads threads per block
//   Runtime::last_error()                           the launches' error, if any
#pragma once

#include "cuda/focal_loss_kernels.cuh"

namespace retinanet_plugin {
namespace cuda {
namespace kernels {

template <typename T>
struct TypeTag {
  using type = T;
};

inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// The vector width of this problem's launch: 16 bytes of logits per unit where every row of logits (and of float
// targets) starts on a 16-byte boundary and holds whole units with adjacent columns; else 1.
template <typename scalar_t, typename acc_t>
int vector_width(const Problem& p) {
  constexpr int kVector = 16 / sizeof(scalar_t);
  if (column_major(p) || p.cols % kVector != 0 || (p.cols > 1 && p.col_stride != 1)) {
    return 1;
  }
  if (!aligned16(p.logits) || (p.rows > 1 && p.row_stride % kVector != 0)) {
    return 1;
  }
  if (p.kind == LossKind::DenseFocal) {
    const bool targets_rows_aligned = p.rows <= 1 || (p.targets_row_stride * sizeof(acc_t)) % 16 == 0;
    if (!aligned16(p.targets) || !targets_rows_aligned || (p.cols > 1 && p.targets_col_stride != 1)) {
      return 1;
    }
  }
  return kVector;
}

template <typename scalar_t, typename acc_t>
KernelArgs<scalar_t, acc_t> make_args(const Problem& p, int vector_width) {
  KernelArgs<scalar_t, acc_t> a;
  a.logits = static_cast<const scalar_t*>(p.logits);
  a.cols = p.cols;
  a.row_stride = p.row_stride;
  a.col_stride = p.col_stride;
  a.labels = p.labels;
  a.labels_int32 = p.labels_int32;
  a.label_stride = p.label_stride;
  a.quality = static_cast<const acc_t*>(p.quality);
  a.quality_stride = p.quality_stride;
  a.targets = static_cast<const acc_t*>(p.targets);
  a.targets_row_stride = p.targets_row_stride;
  a.targets_col_stride = p.targets_col_stride;
  a.normalizer = static_cast<const acc_t*>(p.normalizer);
  a.divisor = static_cast<acc_t>(p.divisor);
  const bool by_columns = column_major(p);
  a.out_row_stride = by_columns ? 1 : p.cols;
  a.out_col_stride = by_columns ? p.rows : 1;
  a.geometry = make_geometry(p.rows, p.cols, vector_width, by_columns);
  return a;
}

// One instantiation of the kernels: the types a problem dispatches to, its kernels and their arguments.
template <class Row_, class Element_, int V, typename scalar_t_, typename acc_t_>
struct Instance {
  using Row = Row_;
  using Element = Element_;
  using scalar_t = scalar_t_;
  using acc_t = acc_t_;
  static constexpr int kVectorWidth = V;
  static auto forward_elementwise() { return &forward_elementwise_kernel<Row, Element, V, scalar_t, acc_t>; }
  static auto forward_reduce() { return &forward_reduce_kernel<Row, Element, V, scalar_t, acc_t>; }
  static auto backward() { return &backward_kernel<Row, Element, V, scalar_t, acc_t>; }
  static KernelArgs<scalar_t, acc_t> args(const Problem& p) { return make_args<scalar_t, acc_t>(p, V); }
};

// Calls fn(TypeTag<Instance<...>>, element) for the problem: its logits and accumulation types, its loss (the
// element's exponent 2, the common case, as a compile-time flag) and its vector width.
template <typename Fn>
void dispatch(const Problem& p, Fn&& fn) {
  auto with_width = [&](auto scalar_tag, auto acc_tag, auto row_tag, const auto& element) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using acc_t = typename decltype(acc_tag)::type;
    using Row = typename decltype(row_tag)::type;
    using Element = std::decay_t<decltype(element)>;
    constexpr int kVector = 16 / sizeof(scalar_t);
    if (vector_width<scalar_t, acc_t>(p) == kVector) {
      fn(TypeTag<Instance<Row, Element, kVector, scalar_t, acc_t>>{}, element);
    } else {
      fn(TypeTag<Instance<Row, Element, 1, scalar_t, acc_t>>{}, element);
    }
  };
  auto with_element = [&](auto scalar_tag, auto acc_tag) {
    using acc_t = typename decltype(acc_tag)::type;
    using M = ScalarMath<acc_t>;
    const acc_t gamma = static_cast<acc_t>(p.gamma);
    const acc_t w_pos = static_cast<acc_t>(p.weight_positive);
    const acc_t w_neg = static_cast<acc_t>(p.weight_negative);
    switch (p.kind) {
      case LossKind::SigmoidFocal:
        with_flag(p.gamma_is_two, [&](auto gamma_is_two) {
          using E = SigmoidFocalElement<M, decltype(gamma_is_two)::value>;
          with_width(scalar_tag, acc_tag, TypeTag<LabelRow<E>>{}, E(gamma, w_pos, w_neg));
        });
        break;
      case LossKind::QualityFocal:
        with_flag(p.beta == 2.0, [&](auto beta_is_two) {
          using E = QualityFocalElement<M, decltype(beta_is_two)::value>;
          with_width(scalar_tag, acc_tag, TypeTag<LabelRow<E>>{}, E(static_cast<acc_t>(p.beta)));
        });
        break;
      case LossKind::DenseFocal:
        with_flag(p.gamma_is_two, [&](auto gamma_is_two) {
          using E = DenseFocalElement<M, decltype(gamma_is_two)::value>;
          with_width(scalar_tag, acc_tag, TypeTag<DenseRow<E>>{}, E(gamma, w_pos, w_neg));
        });
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

// The grid of `kernel` on this problem: every row covered, at most the blocks resident on the device at once.
template <class Runtime, typename Kernel>
int grid_for(const Problem& p, const Geometry& g, Kernel kernel) {
  return grid_size(g, static_cast<int64_t>(Runtime::blocks_per_multiprocessor(kernel)) * p.multiprocessors);
}

template <class Runtime>
int reduce_grid_size(const Problem& p) {
  int blocks = 1;
  dispatch(p, [&](auto instance, const auto&) {
    using I = typename decltype(instance)::type;
    blocks = grid_for<Runtime>(p, I::args(p).geometry, I::forward_reduce());
  });
  return blocks;
}

template <class Runtime>
cudaError_t launch_forward_elementwise(const Problem& p, void* loss) {
  if (p.rows == 0) {
    return cudaSuccess;
  }
  dispatch(p, [&](auto instance, const auto& element) {
    using I = typename decltype(instance)::type;
    const auto args = I::args(p);
    Runtime::launch(I::forward_elementwise(), grid_for<Runtime>(p, args.geometry, I::forward_elementwise()),
        p.stream, args, element, static_cast<typename I::acc_t*>(loss));
  });
  return Runtime::last_error();
}

template <class Runtime>
cudaError_t launch_forward_reduce(
    const Problem& p, bool mean, void* partial_sums, int64_t* partial_counts, int partial_capacity, void* loss) {
  auto* counts = reinterpret_cast<long long*>(partial_counts);
  dispatch(p, [&](auto instance, const auto& element) {
    using I = typename decltype(instance)::type;
    using acc_t = typename I::acc_t;
    const auto args = I::args(p);
    // == reduce_grid_size(p), which sized the buffers; the cap keeps a differing occupancy answer inside them
    const int grid = grid_for<Runtime>(p, args.geometry, I::forward_reduce());
    const int blocks = grid < partial_capacity ? grid : (partial_capacity > 0 ? partial_capacity : 1);
    Runtime::launch(I::forward_reduce(), blocks, p.stream, args, element, static_cast<acc_t*>(partial_sums), counts);
    Runtime::launch(&finalize_kernel<acc_t>, 1, p.stream, static_cast<const acc_t*>(partial_sums),
        static_cast<const long long*>(counts), blocks, p.cols, mean, args.normalizer, args.divisor,
        static_cast<acc_t*>(loss));
  });
  return Runtime::last_error();
}

template <class Runtime>
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
  dispatch(p, [&](auto instance, const auto& element) {
    using I = typename decltype(instance)::type;
    const auto args = I::args(p);
    Runtime::launch(I::backward(), grid_for<Runtime>(p, args.geometry, I::backward()), p.stream, args, element,
        static_cast<const typename I::acc_t*>(grad), grad_elementwise, grad_row_stride, grad_col_stride,
        reinterpret_cast<const long long*>(valid_rows), static_cast<typename I::scalar_t*>(grad_logits));
  });
  return Runtime::last_error();
}

}  // namespace kernels
}  // namespace cuda
}  // namespace retinanet_plugin
