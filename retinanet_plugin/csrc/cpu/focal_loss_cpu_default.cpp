// The focal loss CPU kernels for any CPU (ATen's generic Vectorized<T>, no instruction set beyond the baseline).
#include "focal_loss_cpu_impl_deps.h"

#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#include "focal_loss_cpu_impl.h"
