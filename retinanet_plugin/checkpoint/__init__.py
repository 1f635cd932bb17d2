"""Checkpoints: everything the plugin knows about them, in one package.

==========================  ======================================================================
Module                      Holds
==========================  ======================================================================
``retinanet_layout``        a RetinaNet's weight names, and what their shapes say (class count)
``weight_entries``          what a loadable state dict is: string names (``module.`` stripped),
                            numeric tensors or arrays, finite values
``safe_pickle``             the restricted unpickler for ``.pkl`` files (no code runs)
``reading``                 reading ``.pkl``, ``.pyth``, ``.pth`` files as Detectron2 lays them out
``checkpoint_path``         ``path?matching_heuristics=True``, Detectron2's load options
``writing``                 atomic writes: no checkpoint is ever half-written
``resume``                  which checkpoint ``--resume`` continues from; the workers' agreement
                            on what they load
``checked_checkpointer``    the trainer's checkpointer (:class:`CheckedDetectionCheckpointer`)
``detectron2_conversion``   Detectron2 RetinaNet weights -> plugin weights, validated
``errors``                  the errors, each naming the file and the problem
==========================  ======================================================================
"""

from .checked_checkpointer import CheckedDetectionCheckpointer
from .checkpoint_path import CheckpointPath, parse_checkpoint_path
from .detectron2_conversion import convert_detectron2_retinanet_state_dict
from .errors import (
    CheckpointEntryError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointPathError,
    CheckpointReadError,
)
from .reading import load_detectron2_checkpoint, read_checkpoint_file
from .resume import CheckpointFailedOnWorkerError
from .safe_pickle import ForbiddenPickleGlobalError, UnreadablePickleError, load_pickle_checkpoint
from .writing import AtomicDetectionCheckpointer, save_plugin_checkpoint

__all__ = [
    "AtomicDetectionCheckpointer",
    "CheckedDetectionCheckpointer",
    "CheckpointEntryError",
    "CheckpointFailedOnWorkerError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointPath",
    "CheckpointPathError",
    "CheckpointReadError",
    "ForbiddenPickleGlobalError",
    "UnreadablePickleError",
    "convert_detectron2_retinanet_state_dict",
    "load_detectron2_checkpoint",
    "load_pickle_checkpoint",
    "parse_checkpoint_path",
    "read_checkpoint_file",
    "save_plugin_checkpoint",
]
