"""Layers of the plugin: the sigmoid and quality focal loss ops, the dense-target focal loss op
(fvcore's and torchvision's drop-in), and their reference expressions."""

from .focal_loss_reference import sigmoid_focal_loss_reference
from .quality_focal_loss import quality_focal_loss
from .quality_focal_loss_reference import quality_focal_loss_reference
from .sigmoid_focal_loss import focal_loss_op_available, sigmoid_focal_loss
from .sigmoid_focal_loss_dense import sigmoid_focal_loss_dense

__all__ = [
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_dense",
    "sigmoid_focal_loss_reference",
    "focal_loss_op_available",
    "quality_focal_loss",
    "quality_focal_loss_reference",
]
