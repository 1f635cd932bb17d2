// Registration of the focal loss ops in the `retinanet_plugin` torch.library namespace (schemas and the CPU and
// CUDA kernels; the fake kernels and the autograd formula are registered from Python, in
// retinanet_plugin/layers/sigmoid_focal_loss.py), and the Python module `retinanet_plugin._C` whose import loads
// them.
#include "focal_loss.h"

#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(retinanet_plugin, m) {
  m.set_python_module("retinanet_plugin.layers.sigmoid_focal_loss");
  // Sigmoid focal loss of logits [N, K] against integer labels [N] (0..K-1 positive class, K background,
  // -1 ignored), divided by divisor * normalizer. Returns [N, K] for reduction "none", else a 0-dim tensor;
  // fp32 (fp64 for fp64 logits) in both cases.
  m.def(
      "sigmoid_focal_loss(Tensor logits, Tensor labels, Tensor? normalizer, float gamma, float alpha, "
      "str reduction, float divisor) -> Tensor");
  // Gradient w.r.t. logits (logits dtype, contiguous) given the upstream gradient of the forward's output.
  m.def(
      "sigmoid_focal_loss_backward(Tensor grad, Tensor logits, Tensor labels, Tensor? normalizer, float gamma, "
      "float alpha, str reduction, float divisor) -> Tensor");
}

TORCH_LIBRARY_IMPL(retinanet_plugin, CPU, m) {
  m.impl("sigmoid_focal_loss", &retinanet_plugin::sigmoid_focal_loss_cpu);
  m.impl("sigmoid_focal_loss_backward", &retinanet_plugin::sigmoid_focal_loss_backward_cpu);
}

// In a build without CUDA these raise an error that says how to rebuild.
TORCH_LIBRARY_IMPL(retinanet_plugin, CUDA, m) {
  m.impl("sigmoid_focal_loss", &retinanet_plugin::sigmoid_focal_loss_cuda);
  m.impl("sigmoid_focal_loss_backward", &retinanet_plugin::sigmoid_focal_loss_backward_cuda);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "retinanet_plugin compiled ops; importing this module registers torch.ops.retinanet_plugin.*";
  m.attr("WITH_CUDA") = retinanet_plugin::built_with_cuda();
  m.def(
      "cpu_kernel_capability", &retinanet_plugin::cpu_kernel_capability,
      "The CPU kernel variant in use on this machine: 'AVX512', 'AVX2' or 'DEFAULT'.");
}
