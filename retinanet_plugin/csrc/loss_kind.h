// The per-class losses the kernels compute from logits [N, K] and integer labels [N]. Plain C++, so that both the
// ATen side (focal_loss.h) and the CUDA kernels (focal_loss_cuda.h) can name them.
#pragma once

namespace retinanet_plugin {

enum class LossKind {
  SigmoidFocal,  // focal_loss.h
  QualityFocal,  // quality_focal_loss.h: soft per-row target `quality` on the labelled class
};

}  // namespace retinanet_plugin
