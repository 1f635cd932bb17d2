// Token pasting and stringizing after macro expansion: the names built from CPU_CAPABILITY (the per-instruction-set
// kernel tables, cpu/) and from TORCH_EXTENSION_NAME (the Python module, ops.cpp).
#pragma once

#define RETINANET_PLUGIN_CONCAT_(a, b) a##b
#define RETINANET_PLUGIN_CONCAT(a, b) RETINANET_PLUGIN_CONCAT_(a, b)
#define RETINANET_PLUGIN_STRINGIFY_(x) #x
#define RETINANET_PLUGIN_STRINGIFY(x) RETINANET_PLUGIN_STRINGIFY_(x)
