"""Checkpoint conversion: Detectron2 RetinaNet weights into the plugin's model; restricted reading of ``.pkl``
checkpoints (:mod:`.safe_pickle`)."""
from .detectron2_conversion import (
    CheckpointEntryError,
    convert_detectron2_retinanet_state_dict,
    load_detectron2_checkpoint,
    save_plugin_checkpoint,
)
from .safe_pickle import ForbiddenPickleGlobalError, UnreadablePickleError, load_pickle_checkpoint

__all__ = [
    "CheckpointEntryError",
    "ForbiddenPickleGlobalError",
    "UnreadablePickleError",
    "convert_detectron2_retinanet_state_dict",
    "load_detectron2_checkpoint",
    "load_pickle_checkpoint",
    "save_plugin_checkpoint",
]
