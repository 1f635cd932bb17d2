// The focal loss CPU kernels compiled for AVX2 + FMA (x86-64 with GCC; elsewhere this variant is absent).
#include "focal_loss_cpu_impl_deps.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
// GCC does not define the ISA macros for `#pragma GCC target` in C++, and sleef.h (ATen's SIMD math)
// declares its vector functions only under them: define them for that one header.
#ifndef __AVX__
#define __AVX__ 1
#define RETINANET_PLUGIN_UNDEF__AVX__
#endif
#include <sleef.h>
#ifdef RETINANET_PLUGIN_UNDEF__AVX__
#undef __AVX__
#endif
#include "focal_loss_cpu_impl.h"
#pragma GCC pop_options
#else
namespace retinanet_plugin::cpu {
const Kernels* kernels_AVX2() {
  return nullptr;
}
}  // namespace retinanet_plugin::cpu
#endif
