// The CUDA driver of the focal losses, ATen side: allocation on the caching allocator, the normaliser kept on the
// device (no host synchronisation anywhere, so the ops can be captured in a CUDA graph), kernel launches. In a build
// without CUDA the driver raises an error that says how to rebuild.
#include "loss_driver.h"

#include <c10/util/Exception.h>

#ifdef WITH_CUDA
#include "cuda/focal_loss_cuda.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#endif

namespace retinanet_plugin {

#ifdef WITH_CUDA
namespace {

cuda::LogitsType logits_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return cuda::LogitsType::Float32;
    case at::kDouble:
      return cuda::LogitsType::Float64;
    case at::kHalf:
      return cuda::LogitsType::Float16;
    case at::kBFloat16:
      return cuda::LogitsType::BFloat16;
    default:
      TORCH_CHECK(false, "retinanet_plugin focal loss op: unsupported logits dtype ", dtype);
  }
}

int multiprocessors(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// The problem description; `normalizer_on_device` and `spec` (its quality) must outlive the launches.
cuda::Problem make_problem(
    const LossSpec& spec,
    const at::Tensor& logits,
    const at::Tensor& labels,
    const std::optional<at::Tensor>& normalizer,
    double divisor,
    at::Tensor& normalizer_on_device) {
  cuda::Problem p;
  p.logits = logits.const_data_ptr();
  p.type = logits_type(logits.scalar_type());
  p.rows = logits.size(0);
  p.cols = logits.size(1);
  p.row_stride = logits.stride(0);
  p.col_stride = logits.stride(1);
  if (spec.kind != LossKind::DenseFocal) {
    p.labels = labels.const_data_ptr();
    p.labels_int32 = labels.scalar_type() == at::kInt;
    p.label_stride = labels.stride(0);
  } else {
    p.targets = spec.targets.const_data_ptr();
    p.targets_row_stride = spec.targets.stride(0);
    p.targets_col_stride = spec.targets.stride(1);
  }
  p.kind = spec.kind;
  p.gamma = spec.focal.gamma;
  p.weight_positive = spec.focal.weight_positive;
  p.weight_negative = spec.focal.weight_negative;
  p.gamma_is_two = spec.focal.gamma_is_two;
  p.beta = spec.beta;
  if (spec.kind == LossKind::QualityFocal) {
    p.quality = spec.quality.const_data_ptr();
    p.quality_stride = spec.quality.stride(0);
  }
  p.divisor = divisor;
  if (normalizer.has_value()) {
    if (normalizer->device().is_cpu()) {
      // A host value: reading it does not wait for the GPU. It becomes a constant of the launch, so a CUDA graph
      // captured with it keeps this value; pass the normaliser on the device to have replays read it anew.
      p.divisor *= normalizer->item<double>();
    } else {
      normalizer_on_device = normalizer->reshape({}).to(focal_loss_accumulate_type(logits.scalar_type())).contiguous();
      p.normalizer = normalizer_on_device.const_data_ptr();
    }
  }
  p.multiprocessors = multiprocessors(logits.get_device());
  p.stream = c10::cuda::getCurrentCUDAStream(logits.get_device()).stream();
  return p;
}

}  // namespace

at::Tensor loss_forward_cuda(const LossSpec& spec, const at::Tensor& logits, const at::Tensor& labels,
    const std::optional<at::Tensor>& normalizer, Reduction reduction, double divisor) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto acc_options = logits.options().dtype(focal_loss_accumulate_type(logits.scalar_type()));
  at::Tensor normalizer_on_device;
  const cuda::Problem p = make_problem(spec, logits, labels, normalizer, divisor, normalizer_on_device);
  if (reduction == Reduction::None) {
    at::Tensor loss = at::empty_strided({p.rows, p.cols}, output_strides(logits), acc_options);
    C10_CUDA_CHECK(cuda::launch_forward_elementwise(p, loss.data_ptr()));
    return loss;
  }
  const int blocks = cuda::reduce_grid_size(p);
  at::Tensor partial_sums = at::empty({blocks}, acc_options);
  at::Tensor partial_counts = at::empty({blocks}, logits.options().dtype(at::kLong));
  at::Tensor loss = at::empty({}, acc_options);
  C10_CUDA_CHECK(cuda::launch_forward_reduce(
      p, reduction == Reduction::Mean, partial_sums.data_ptr(), partial_counts.data_ptr<int64_t>(), blocks,
      loss.data_ptr()));
  return loss;
}

at::Tensor loss_backward_cuda(const LossSpec& spec, const at::Tensor& grad, const at::Tensor& logits,
    const at::Tensor& labels, const std::optional<at::Tensor>& normalizer, Reduction reduction, double divisor) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::ScalarType acc_type = focal_loss_accumulate_type(logits.scalar_type());
  at::Tensor normalizer_on_device;
  const cuda::Problem p = make_problem(spec, logits, labels, normalizer, divisor, normalizer_on_device);
  const bool elementwise = reduction == Reduction::None;
  const at::Tensor upstream = elementwise ? grad.to(acc_type) : grad.reshape({}).to(acc_type).contiguous();
  at::Tensor valid_rows;  // on the device: mean divides by (non-ignored rows) * K without a host read
  cuda::Problem q = p;
  if (reduction == Reduction::Mean) {
    if (spec.kind == LossKind::DenseFocal) {  // every element counts: a constant
      q.divisor *= static_cast<double>(std::max<int64_t>(p.rows * p.cols, 1));
    } else {
      valid_rows = labels.ge(0).sum().to(at::kLong);
    }
  }
  at::Tensor grad_logits = at::empty_strided({p.rows, p.cols}, output_strides(logits), logits.options());
  C10_CUDA_CHECK(cuda::launch_backward(
      q, upstream.const_data_ptr(), elementwise, elementwise ? upstream.stride(0) : 0, elementwise ? upstream.stride(1) : 0,
      valid_rows.defined() ? valid_rows.const_data_ptr<int64_t>() : nullptr, grad_logits.data_ptr()));
  return grad_logits;
}

#else  // built without CUDA

static const char* kBuiltWithoutCuda =
    ": retinanet_plugin._C was built without CUDA kernels, so this op cannot run on a CUDA tensor. "
    "Rebuild it with a CUDA toolkit: `FORCE_CUDA=1 CUDA_HOME=/usr/local/cuda pip install --no-build-isolation -e .` "
    "in the retinanet_plugin folder (TORCH_CUDA_ARCH_LIST selects the GPU architectures), or move the tensors to "
    "the CPU, or set MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL to 'reference'";

at::Tensor loss_forward_cuda(const LossSpec& spec, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, Reduction, double) {
  TORCH_CHECK(false, spec.op_name, kBuiltWithoutCuda);
}

at::Tensor loss_backward_cuda(const LossSpec& spec, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, Reduction, double) {
  TORCH_CHECK(false, spec.op_name, kBuiltWithoutCuda);
}

#endif  // WITH_CUDA

}  // namespace retinanet_plugin
