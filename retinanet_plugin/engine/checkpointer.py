"""A DetectionCheckpointer whose files are never half-written."""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils import atomic_write


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """Saves ``<name>.pth`` and the ``last_checkpoint`` tag through a temporary file and a rename, so a run
    killed while saving leaves the previous checkpoint and tag intact. Loading is Detectron2's."""

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
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self.save_to_disk:
            return
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))
