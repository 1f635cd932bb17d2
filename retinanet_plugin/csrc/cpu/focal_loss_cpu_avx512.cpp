// The focal loss CPU kernels compiled for AVX-512 (F, BW, VL, DQ) + FMA (x86-64 with GCC; elsewhere absent).
#include "focal_loss_cpu_impl_deps.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// GCC 12 reports the self-initialised `__Y` of _mm512_undefined_ps() (inlined from ATen's maximum) as maybe
// uninitialised: a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
// GCC does not define the ISA macros for `#pragma GCC target` in C++, and sleef.h (ATen's SIMD math)
// declares its vector functions only under them: define them for that one header.
#ifndef __AVX__
#define __AVX__ 1
#define RETINANET_PLUGIN_UNDEF__AVX__
#endif
#ifndef __AVX512F__
#define __AVX512F__ 1
#define RETINANET_PLUGIN_UNDEF__AVX512F__
#endif
#include <sleef.h>
#ifdef RETINANET_PLUGIN_UNDEF__AVX__
#undef __AVX__
#endif
#ifdef RETINANET_PLUGIN_UNDEF__AVX512F__
#undef __AVX512F__
#endif
#include "focal_loss_cpu_impl.h"
#pragma GCC pop_options
#else
namespace retinanet_plugin::cpu {
const Kernels* kernels_AVX512() {
  return nullptr;
}
}  // namespace retinanet_plugin::cpu
#endif
