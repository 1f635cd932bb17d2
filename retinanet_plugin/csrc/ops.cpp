// Registration of the loss ops in the `retinanet_plugin` torch.library namespace: the schemas and
// the CPU and CUDA kernels, which are the ops' fronts (sigmoid_focal_loss.h, quality_focal_loss.h,
// sigmoid_focal_loss_dense.h) on each device's driver (loss_driver.h). The fake kernels and the
// autograd formulas are registered from Python, in retinanet_plugin/layers/sigmoid_focal_loss.py,
// quality_focal_loss.py and sigmoid_focal_loss_dense.py. Also the Python module
// `retinanet_plugin._C` whose import loads them, written against CPython's stable ABI (setup.py builds
// with py_limited_api, which defines Py_LIMITED_API): nothing here depends on one Python version, so
// one build, `_C.abi3.so`, serves every Python from 3.10 that has the same torch.
#include "preprocessor.h"
#include "quality_focal_loss.h"
#include "sigmoid_focal_loss.h"
#include "sigmoid_focal_loss_dense.h"

#include <Python.h>
#include <torch/library.h>
#include <torch/version.h>

#include <exception>
#include <type_traits>

TORCH_LIBRARY(retinanet_plugin, m) {
  m.set_python_module("retinanet_plugin.layers.sigmoid_focal_loss");
  // Sigmoid focal loss of logits [N, K] against integer labels [N] (0..K-1 positive class, K
  // background, -1 ignored), divided by divisor * normalizer. Returns [N, K] for reduction "none",
  // else a 0-dim tensor; fp32 (fp64 for fp64 logits) in both cases.
  m.def(
      "sigmoid_focal_loss(Tensor logits, Tensor labels, Tensor? normalizer, float gamma, "
      "float alpha, str reduction, float divisor) -> Tensor");
  // Gradient w.r.t. logits (logits dtype; layout: output_strides() in loss_driver.h) given the
  // upstream gradient of the forward's output.
  m.def(
      "sigmoid_focal_loss_backward(Tensor grad, Tensor logits, Tensor labels, Tensor? normalizer, "
      "float gamma, float alpha, str reduction, float divisor) -> Tensor");

  m.set_python_module("retinanet_plugin.layers.quality_focal_loss");
  // Quality focal loss (Generalized Focal Loss) of logits [N, K] against integer labels [N] (as
  // above) and a soft target quality [N] in [0, 1] for each labelled row's class (read on rows
  // labelled 0..K-1 only; no gradient), with exponent beta, divided by divisor * normalizer. Output
  // as for sigmoid_focal_loss.
  m.def(
      "quality_focal_loss(Tensor logits, Tensor labels, Tensor quality, Tensor? normalizer, "
      "float beta, str reduction, float divisor) -> Tensor");
  // Gradient w.r.t. logits (logits dtype; layout: output_strides() in loss_driver.h) given the
  // upstream gradient of the forward's output.
  m.def(
      "quality_focal_loss_backward(Tensor grad, Tensor logits, Tensor labels, Tensor quality, "
      "Tensor? normalizer, float beta, str reduction, float divisor) -> Tensor");

  m.set_python_module("retinanet_plugin.layers.sigmoid_focal_loss_dense");
  // Sigmoid focal loss of logits [N, K] against float targets [N, K] in [0, 1] (one-hot,
  // multi-label or soft; no gradient), as fvcore's and torchvision's sigmoid_focal_loss; "mean"
  // averages over all N * K elements. Output as for sigmoid_focal_loss.
  m.def(
      "sigmoid_focal_loss_dense(Tensor logits, Tensor targets, Tensor? normalizer, float gamma, "
      "float alpha, str reduction, float divisor) -> Tensor");
  m.def(
      "sigmoid_focal_loss_dense_backward(Tensor grad, Tensor logits, Tensor targets, "
      "Tensor? normalizer, float gamma, float alpha, str reduction, float divisor) -> Tensor");
}

namespace retinanet_plugin {
namespace {

// The kernel of an op's front kFront (e.g. sigmoid_focal_loss_with) on one device's driver
// kDriver: the front's signature without its first parameter, the driver, which is bound at compile
// time, so that one front serves every device.
template <auto& kFront, auto& kDriver, typename Front = std::remove_reference_t<decltype(kFront)>>
struct OnDriver;

template <auto& kFront, auto& kDriver, typename Driver, typename... Args>
struct OnDriver<kFront, kDriver, at::Tensor(Driver&, Args...)> {
  static at::Tensor kernel(Args... args) { return kFront(kDriver, args...); }
};

// Every op's kernel for one device: the same fronts on that device's drivers.
template <LossForward& kForward, LossBackward& kBackward>
void register_kernels(torch::Library& m) {
  m.impl("sigmoid_focal_loss", &OnDriver<sigmoid_focal_loss_with, kForward>::kernel);
  m.impl("sigmoid_focal_loss_backward",
      &OnDriver<sigmoid_focal_loss_backward_with, kBackward>::kernel);
  m.impl("quality_focal_loss", &OnDriver<quality_focal_loss_with, kForward>::kernel);
  m.impl("quality_focal_loss_backward",
      &OnDriver<quality_focal_loss_backward_with, kBackward>::kernel);
  m.impl("sigmoid_focal_loss_dense", &OnDriver<sigmoid_focal_loss_dense_with, kForward>::kernel);
  m.impl("sigmoid_focal_loss_dense_backward",
      &OnDriver<sigmoid_focal_loss_dense_backward_with, kBackward>::kernel);
}

}  // namespace
}  // namespace retinanet_plugin

TORCH_LIBRARY_IMPL(retinanet_plugin, CPU, m) {
  using namespace retinanet_plugin;
  register_kernels<loss_forward_cpu, loss_backward_cpu>(m);
}

// In a build without CUDA these raise an error that says how to rebuild.
TORCH_LIBRARY_IMPL(retinanet_plugin, CUDA, m) {
  using namespace retinanet_plugin;
  register_kernels<loss_forward_cuda, loss_backward_cuda>(m);
}

namespace {

PyObject* cpu_kernel_capability_py(PyObject* /*module*/, PyObject* /*unused*/) {
  try {
    return PyUnicode_FromString(retinanet_plugin::cpu_kernel_capability().c_str());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

PyMethodDef module_methods[] = {
    {"cpu_kernel_capability", cpu_kernel_capability_py, METH_NOARGS,
        "The CPU kernel variant in use on this machine: 'AVX512', 'AVX2' or 'DEFAULT'."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, RETINANET_PLUGIN_STRINGIFY(TORCH_EXTENSION_NAME),
    "retinanet_plugin compiled ops; importing this module registers torch.ops.retinanet_plugin.*", -1,
    module_methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

// PyInit_<name>, the name being the extension's (TORCH_EXTENSION_NAME, from setup.py's
// "retinanet_plugin._C"). The ops above are registered when the library is loaded, before this runs.
PyMODINIT_FUNC RETINANET_PLUGIN_CONCAT(PyInit_, TORCH_EXTENSION_NAME)() {
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) {
    return nullptr;
  }
  PyObject* with_cuda = PyBool_FromLong(retinanet_plugin::built_with_cuda() ? 1 : 0);
  const int added = PyModule_AddObjectRef(module, "WITH_CUDA", with_cuda);
  Py_DECREF(with_cuda);
  // The torch whose headers this was compiled with ("2.14.1"): the library links against that
  // torch's C++ ABI, whatever the Python (retinanet_plugin/layers/compiled_ops.py compares it).
  if (added < 0 || PyModule_AddStringConstant(module, "TORCH_VERSION", TORCH_VERSION) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
