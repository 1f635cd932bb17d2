// Everything focal_loss_cpu_impl.h needs apart from ATen's SIMD headers. focal_loss_cpu_{avx2,avx512}.cpp include
// this *before* they switch the instruction set on, so these shared inline functions (c10, ATen, the standard
// library) are compiled for the baseline CPU in every translation unit, as in the rest of the extension; only the
// kernels and at::vec's per-capability namespace are compiled for AVX2/AVX-512.
#pragma once

#include "focal_loss_cpu_kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/native/Math.h>
#include <ATen/native/cpu/zmath.h>
#include <ATen/native/quantized/AffineQuantizerBase.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/Load.h>
#include <c10/util/MathConstants.h>
#include <c10/util/TypeCast.h>
#include <c10/util/complex.h>
#include <c10/util/copysign.h>
#include <c10/util/irange.h>
#include <c10/util/qint32.h>
#include <c10/util/qint8.h>
#include <c10/util/quint8.h>

#include <algorithm>
#include <array>
#include <bitset>
#include <cassert>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <ostream>
#include <tuple>
#include <type_traits>
#include <utility>
