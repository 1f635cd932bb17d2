"""Checkpoint conversion: Detectron2 RetinaNet weights into the plugin's model."""
from .detectron2_conversion import (
    convert_detectron2_retinanet_state_dict,
    load_detectron2_checkpoint,
    save_plugin_checkpoint,
)

__all__ = ["convert_detectron2_retinanet_state_dict", "load_detectron2_checkpoint", "save_plugin_checkpoint"]
