"""Layers of the plugin: the sigmoid focal loss op and its reference expression."""
from .focal_loss_reference import sigmoid_focal_loss_reference
from .sigmoid_focal_loss import focal_loss_op_available, sigmoid_focal_loss

__all__ = ["sigmoid_focal_loss", "sigmoid_focal_loss_reference", "focal_loss_op_available"]
