// The focal loss CPU kernels compiled for AVX2 + FMA (x86-64 with GCC; elsewhere this variant is absent).
#include "focal_loss_cpu_impl_deps.h"

#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define RETINANET_PLUGIN_ISA_TARGET "avx2,fma,f16c"
#include "focal_loss_cpu_isa.h"
