// The focal loss CPU kernels compiled for AVX-512 (F, BW, VL, DQ) + FMA (x86-64 with GCC; elsewhere absent).
#include "focal_loss_cpu_impl_deps.h"

#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define RETINANET_PLUGIN_ISA_TARGET "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"
#include "focal_loss_cpu_isa.h"
