// The CPU driver of the focal losses: output allocation, the deterministic final sum, and the choice of the kernel
// variant (AVX-512, AVX2 or generic) from the capability ATen reports for this CPU.
#include "loss_driver.h"
#include "focal_loss_cpu_kernels.h"
#include "loss_elements.h"

#include <ATen/Version.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace retinanet_plugin {
namespace {

// ATen's own choice (honours ATEN_CPU_CAPABILITY), falling back to the best variant compiled here.
std::pair<const cpu::Kernels*, std::string> select_cpu_kernels() {
  const std::string capability = at::get_cpu_capability();
  if (capability == "AVX512" && cpu::kernels_AVX512() != nullptr) {
    return {cpu::kernels_AVX512(), "AVX512"};
  }
  if ((capability == "AVX512" || capability == "AVX2") && cpu::kernels_AVX2() != nullptr) {
    return {cpu::kernels_AVX2(), "AVX2"};
  }
  return {cpu::kernels_DEFAULT(), "DEFAULT"};
}

const std::pair<const cpu::Kernels*, std::string>& cpu_kernels() {
  static const auto selected = select_cpu_kernels();
  return selected;
}

// divisor * normalizer, read on the host (the normaliser is on the CPU here).
double host_denominator(const std::optional<at::Tensor>& normalizer, double divisor) {
  return normalizer.has_value() ? divisor * normalizer->item<double>() : divisor;
}

// The rows of a mean: those not ignored (every row for float targets).
int64_t count_valid_rows(const LossSpec& spec, const at::Tensor& labels, int64_t num_rows, int64_t num_classes) {
  if (spec.kind == LossKind::DenseFocal) {
    return num_rows;
  }
  const char* op_name = spec.op_name;
  const int64_t n = labels.size(0);
  const int64_t stride = labels.stride(0);
  int64_t valid = 0;
  auto count = [&](const auto* data) {
    for (int64_t row = 0; row < n; ++row) {
      const int64_t label = data[row * stride];
      if (!label_is_valid(label, num_classes)) {
        throw_bad_label(op_name, row, label, num_classes);
      }
      valid += label >= 0;
    }
  };
  if (labels.scalar_type() == at::kInt) {
    count(labels.const_data_ptr<int32_t>());
  } else {
    count(labels.const_data_ptr<int64_t>());
  }
  return valid;
}

// The spec as the kernels read it: float targets with unit column stride, like the logits.
LossSpec with_unit_column_stride_targets(const LossSpec& spec) {
  LossSpec local = spec;
  if (local.kind == LossKind::DenseFocal) {
    local.targets = with_unit_column_stride(local.targets);
  }
  return local;
}

}  // namespace

std::string cpu_kernel_capability() {
  return cpu_kernels().second;
}

at::Tensor loss_forward_cpu(const LossSpec& given_spec, const at::Tensor& logits, const at::Tensor& labels,
    const std::optional<at::Tensor>& normalizer, Reduction reduction, double divisor) {
  const LossSpec spec = with_unit_column_stride_targets(given_spec);
  const at::Tensor x = with_unit_column_stride(logits);
  const at::ScalarType acc_type = focal_loss_accumulate_type(x.scalar_type());
  const int64_t num_rows = x.size(0);
  const int64_t num_classes = x.size(1);
  const double denominator = host_denominator(normalizer, divisor);
  const cpu::Kernels& kernels = *cpu_kernels().first;

  if (reduction == Reduction::None) {
    at::Tensor loss = at::empty({num_rows, num_classes}, x.options().dtype(acc_type));
    kernels.forward_elementwise(x, labels, spec, 1.0 / denominator, loss);
    return loss;
  }
  const int64_t block_rows = cpu::rows_per_block(num_classes);
  const int64_t num_blocks = (num_rows + block_rows - 1) / block_rows;
  std::vector<double> partial_sums(num_blocks, 0.0);
  std::vector<int64_t> partial_valid_rows(num_blocks, 0);
  kernels.forward_partial_sums(x, labels, spec, partial_sums.data(), partial_valid_rows.data());
  double total = 0.0;  // block order: the same result for any number of threads
  int64_t valid_rows = 0;
  for (int64_t b = 0; b < num_blocks; ++b) {
    total += partial_sums[b];
    valid_rows += partial_valid_rows[b];
  }
  if (reduction == Reduction::Mean) {
    total /= static_cast<double>(std::max<int64_t>(valid_rows * num_classes, 1));
  }
  return at::scalar_tensor(total / denominator, x.options().dtype(acc_type));
}

at::Tensor loss_backward_cpu(const LossSpec& given_spec, const at::Tensor& grad, const at::Tensor& logits,
    const at::Tensor& labels, const std::optional<at::Tensor>& normalizer, Reduction reduction, double divisor) {
  const LossSpec spec = with_unit_column_stride_targets(given_spec);
  const at::Tensor x = with_unit_column_stride(logits);
  const at::ScalarType acc_type = focal_loss_accumulate_type(x.scalar_type());
  const int64_t num_rows = x.size(0);
  const int64_t num_classes = x.size(1);

  double scale = 1.0 / host_denominator(normalizer, divisor);
  at::Tensor upstream;  // the [N, K] upstream gradient of reduction "none"
  if (reduction == Reduction::None) {
    upstream = with_unit_column_stride(grad.to(acc_type));
  } else {
    scale *= grad.item<double>();
    if (reduction == Reduction::Mean) {
      const int64_t valid_rows = count_valid_rows(spec, labels, num_rows, num_classes);
      scale /= static_cast<double>(std::max<int64_t>(valid_rows * num_classes, 1));
    }
  }
  at::Tensor grad_logits = at::empty({num_rows, num_classes}, x.options());
  cpu_kernels().first->backward(x, labels, spec, scale, upstream, grad_logits);
  return grad_logits;
}

}  // namespace retinanet_plugin
