// The per-class losses the kernels compute from logits [N, K] and integer labels [N] (or float
// targets [N, K]). Plain C++, so that both the ATen side (loss_driver.h) and the CUDA kernels
// (cuda/focal_loss_cuda.h) can name them.
#pragma once

namespace retinanet_plugin {

enum class LossKind {
  SigmoidFocal,  // sigmoid_focal_loss.h
  QualityFocal,  // quality_focal_loss.h: soft per-row target `quality` on the labelled class
  // sigmoid_focal_loss_dense.h: float targets [N, K] instead of labels (fvcore's / torchvision's)
  DenseFocal,
};

}  // namespace retinanet_plugin
