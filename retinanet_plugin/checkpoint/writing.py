"""Writing checkpoints so that none is ever half-written: each file goes to a temporary file beside
it and is renamed over it (:func:`retinanet_plugin.utils.atomic_write`), so a reader sees the
previous file or the complete new one, and a run killed while saving leaves both intact."""

import os
from collections import OrderedDict
from typing import Any, Dict, Mapping

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils import TEMPORARY_PREFIX, atomic_write

__all__ = [
    "TEMPORARY_PREFIX",
    "AtomicDetectionCheckpointer",
    "save_plugin_checkpoint",
    "write_checkpoint_file",
]


def write_checkpoint_file(data: Dict[str, Any], path: str) -> None:
    """``torch.save(data)`` to ``path``, atomically."""
    atomic_write(path, lambda f: torch.save(data, f))


def save_plugin_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str, **extra) -> None:
    """Write ``{"model": state_dict, **extra}`` to ``path``, atomically."""
    write_checkpoint_file({"model": OrderedDict(state_dict), **extra}, path)


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` that saves ``<name>.pth`` and the ``last_checkpoint`` tag
    atomically: a run killed while saving keeps the previous checkpoint and tag. Loading is
    Detectron2's."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        write_checkpoint_file(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self.save_to_disk:
            return
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))
