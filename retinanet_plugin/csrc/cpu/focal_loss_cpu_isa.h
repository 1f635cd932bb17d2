// The body of the x86-64 instruction-set variants of the CPU kernels (focal_loss_cpu_{avx2,avx512}.cpp). Not a
// normal header: each of those translation units includes focal_loss_cpu_impl_deps.h, defines CPU_CAPABILITY (AVX2,
// AVX512), its CPU_CAPABILITY_<name> macro and RETINANET_PLUGIN_ISA_TARGET (the instruction sets, as
// `#pragma GCC target` spells them), then includes this once. They stay separate translation units because ATen's
// SIMD headers and focal_loss_cpu_impl.h can be compiled only once per unit, for one instruction set.
//
// With GCC on x86-64 the kernels are compiled for that instruction set (switched on here, for the rest of the unit
// only: setup.py compiles every file with the same flags); elsewhere the variant is absent and kernels_<name>()
// returns nullptr.

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#ifdef CPU_CAPABILITY_AVX512
// GCC 12 reports the self-initialised `__Y` of _mm512_undefined_ps() (inlined from ATen's maximum) as maybe
// uninitialised: a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define RETINANET_PLUGIN_PRAGMA_(text) _Pragma(#text)
#define RETINANET_PLUGIN_PRAGMA(text) RETINANET_PLUGIN_PRAGMA_(text)
#pragma GCC push_options
RETINANET_PLUGIN_PRAGMA(GCC target(RETINANET_PLUGIN_ISA_TARGET))
// GCC does not define the ISA macros for `#pragma GCC target` in C++, and sleef.h (ATen's SIMD math) declares its
// vector functions only under them: define them for that one header.
#ifndef __AVX__
#define __AVX__ 1
#define RETINANET_PLUGIN_UNDEF__AVX__
#endif
#if defined(CPU_CAPABILITY_AVX512) && !defined(__AVX512F__)
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
const Kernels* RETINANET_PLUGIN_CONCAT(kernels_, CPU_CAPABILITY)() {
  return nullptr;
}
}  // namespace retinanet_plugin::cpu
#endif
