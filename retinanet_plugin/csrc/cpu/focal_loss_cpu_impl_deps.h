// Everything focal_loss_cpu_impl.h needs apart from ATen's SIMD headers. focal_loss_cpu_{avx2,avx512}.cpp include
// this *before* they switch the instruction set on, so that the shared inline functions (c10, ATen, the standard
// library) are compiled for the baseline CPU in every translation unit, as in the rest of the extension; only the
// kernels and at::vec's per-capability namespace are compiled for AVX2/AVX-512.
//
// retinanet_plugin_isa_prelude.h is written by setup.py at build time: it includes every header that ATen's SIMD
// headers include from outside ATen/cpu/vec/, as the torch being built against lays them out, so nothing of theirs
// is first compiled inside the AVX region whatever the torch version.
#pragma once

#include "focal_loss_cpu_kernels.h"
#include "preprocessor.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <retinanet_plugin_isa_prelude.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
