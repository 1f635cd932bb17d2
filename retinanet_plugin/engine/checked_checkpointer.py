"""The trainer's checkpointer: atomic writes (:class:`AtomicDetectionCheckpointer`), plus loading that names the
problem.

=================================================== ==================================================================
Checkpoint problem                                  What happens
=================================================== ==================================================================
MODEL.WEIGHTS truncated, corrupt, not a checkpoint  ``CheckpointReadError`` naming the file (no pickle or zip
                                                    traceback)
a ``.pkl`` that asks for any global other than      ``CheckpointReadError`` naming the file and the global
numpy arrays/dtypes, plain containers, numbers,     ("posix.system"); nothing in the file is run (restricted
str, bytes (``os.system``, ``eval``...)             unpickler, ``retinanet_plugin.checkpoint.safe_pickle``)
a ``.pth`` holding more than tensors and plain      ``CheckpointReadError`` naming the file and the global
containers                                          ``torch.load(weights_only=True)`` refused
weights that are not numeric tensors or arrays, or  ``CheckpointReadError`` naming the file and the entry (also
hold NaN or infinite values                         when resuming: such a checkpoint counts as unreadable)
MODEL.WEIGHTS file missing                          ``FileNotFoundError`` naming the file
MODEL.WEIGHTS with another number of classes        ``head.cls_score`` keeps its fresh initialisation, with a
                                                    WARNING giving both class counts; every other weight is loaded
--resume: the last checkpoint is unreadable, or     WARNING naming it and why; training resumes from the newest
``last_checkpoint`` names a missing file            readable checkpoint in OUTPUT_DIR (by modification time),
                                                    repeating the iterations after it; ``CheckpointReadError``
                                                    listing every file if none can be read
--resume: the temporary file of a killed save       removed, with a log line (it was never tagged)
--resume with another number of classes, or any     ``CheckpointMismatchError`` naming the file, the weights and
other shape difference                              their shapes: a resumed run must be the same model
=================================================== ==================================================================

Why fall back rather than fail: checkpoints are written atomically, so an unreadable last checkpoint means damage
from outside (disk, copy); an older checkpoint continues the run at the cost of one checkpoint period, where failing
would stop a multi-day run that can go on. The warning names the damaged file, which is left in place.
"""
import glob
import logging
import os
import pickle
import zipfile
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlparse

import numpy as np
import torch
from detectron2.utils import comm

from ..checkpoint.safe_pickle import UnreadablePickleError, load_pickle_checkpoint, torch_refused_global
from .checkpointer import AtomicDetectionCheckpointer

__all__ = ["CheckedDetectionCheckpointer", "CheckpointMismatchError", "CheckpointReadError"]

logger = logging.getLogger(__name__)

CLS_SCORE_WEIGHT = "head.cls_score.weight"
BBOX_PRED_WEIGHT = "head.bbox_pred.weight"
TEMPORARY_PREFIX = ".tmp-"  # AtomicDetectionCheckpointer's temporary files: ".tmp-<name>.pth<random>"


class CheckpointReadError(ValueError):
    """A checkpoint file that cannot be read."""


class CheckpointMismatchError(ValueError):
    """A checkpoint to resume from whose weights do not have the model's shapes."""


def _class_count(state_dict: Dict[str, Any]) -> Optional[int]:
    """Classes of a RetinaNet head's weights: cls_score outputs / anchors per location (bbox_pred outputs / 4)."""
    cls, box = state_dict.get(CLS_SCORE_WEIGHT), state_dict.get(BBOX_PRED_WEIGHT)
    if cls is None or box is None or cls.ndim == 0 or box.ndim == 0:
        return None
    if box.shape[0] % 4 or cls.shape[0] % (box.shape[0] // 4 or 1):
        return None
    return cls.shape[0] // (box.shape[0] // 4)


def _weights_problem(weights: Dict[Any, Any]) -> Optional[str]:
    """Why the ``"model"`` entry of a checkpoint cannot be loaded into a model (None if it can): every name a
    string, every value a tensor or a numpy array torch can take, no NaN or infinite value."""
    non_finite = []
    for key, value in weights.items():
        if not isinstance(key, str):
            return f"names a weight by the {type(key).__name__} {key!r}, not by a string"
        if isinstance(value, np.ndarray):
            try:
                torch.from_numpy(np.empty(0, dtype=value.dtype))
            except (TypeError, ValueError, RuntimeError):
                return f"holds {key!r} as a numpy array of dtype {value.dtype.str}, which torch cannot take"
            finite = value.dtype.kind not in "fc" or bool(np.isfinite(value).all())
        elif isinstance(value, torch.Tensor):
            finite = not (value.is_floating_point() or value.is_complex()) or bool(torch.isfinite(value).all())
        else:
            return f"holds {key!r} as a {type(value).__name__}, not a tensor or numpy array"
        if not finite:
            non_finite.append(key)
    if non_finite:
        shown = ", ".join(non_finite[:5]) + (f", ... ({len(non_finite) - 5} more)" if len(non_finite) > 5 else "")
        return f"holds NaN or infinite values in {len(non_finite)} weights ({shown}): it is damaged"
    return None


class CheckedDetectionCheckpointer(AtomicDetectionCheckpointer):
    """See the module docstring. Saving is :class:`AtomicDetectionCheckpointer`'s."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._read_ahead: Optional[Tuple[str, Dict[str, Any]]] = None  # (path, data) read while choosing a checkpoint
        self._resuming = False
        self._source = ""

    # ------------------------------------------------------------------------------------------ reading
    def _read(self, filename: str) -> Dict[str, Any]:
        """Detectron2's reading of ``filename``, with any failure turned into :class:`CheckpointReadError`."""
        if not os.path.isfile(filename):
            raise CheckpointReadError(f"checkpoint file {filename} does not exist")
        outside_load = self._parsed_url_during_load is None  # DetectionCheckpointer reads only inside load()
        if outside_load:
            self._parsed_url_during_load = urlparse(filename)
        try:
            data = self._read_pkl(filename) if filename.endswith(".pkl") else super()._load_file(filename)
        except CheckpointReadError:
            raise
        except pickle.UnpicklingError as e:
            if "weights_only" in str(e) or "Weights only" in str(e):
                refused = torch_refused_global(e)
                raise CheckpointReadError(
                    f"checkpoint file {filename} holds objects that torch.load(weights_only=True) refuses to load"
                    + (f" (it asks for the global '{refused}'; nothing in the file was run)" if refused else "")
                    + f"; if you trust the file, re-save its 'model' entry alone. ({str(e).splitlines()[0]})"
                ) from e
            raise CheckpointReadError(f"checkpoint file {filename} is corrupt or not a checkpoint ({e})") from e
        except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError, TypeError,
                IndexError, MemoryError) as e:
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointReadError(
                f"checkpoint file {filename} cannot be read: it is truncated or corrupt ({type(e).__name__}: "
                f"{first_line})"
            ) from e
        finally:
            if outside_load:
                self._parsed_url_during_load = None
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise CheckpointReadError(f"checkpoint file {filename} holds no model weights (no 'model' dict)")
        problem = _weights_problem(data["model"])
        if problem:
            raise CheckpointReadError(f"checkpoint file {filename} {problem}")
        return data

    def _read_pkl(self, filename: str) -> Dict[str, Any]:
        """A ``.pkl`` as Detectron2's ``DetectionCheckpointer`` interprets it (a model-zoo file, or a Caffe2/Detectron1
        one loaded by name-matching heuristics), but unpickled with the restricted unpickler: a file that asks for
        anything but numpy arrays, plain containers and numbers is refused, naming the file and the global."""
        try:
            data = load_pickle_checkpoint(filename)
        except UnreadablePickleError as e:  # ForbiddenPickleGlobalError included: its message names the global
            raise CheckpointReadError(str(e)) from e
        if not isinstance(data, dict):
            raise CheckpointReadError(f"checkpoint file {filename} holds a {type(data).__name__}, not a dict of weights")
        if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
            self.logger.info(f"Reading a file from '{data['__author__']}'")
            return data
        if isinstance(data.get("model"), dict):  # the same without "__author__", which Detectron2 would fail to load
            return data
        blobs = data.get("blobs", data)  # Caffe2/Detectron1: detection models keep their weights under "blobs"
        if not isinstance(blobs, dict):
            raise CheckpointReadError(f"checkpoint file {filename} has 'blobs' of type {type(blobs).__name__}, not a dict")
        weights = {k: v for k, v in blobs.items() if not (isinstance(k, str) and k.endswith("_momentum"))}
        return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if self._read_ahead is not None and self._read_ahead[0] == filename:
            data, self._read_ahead = self._read_ahead[1], None
            return data
        return self._read(filename)

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        # checkpointables None restores everything (optimizer, scheduler, iteration): a resume, which needs the
        # same model
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file {path} does not exist")
        self._resuming = checkpointables is None and bool(self.checkpointables)
        self._source = path
        try:
            return super().load(path, checkpointables=checkpointables)
        finally:
            self._resuming = False

    def _load_model(self, checkpoint: Dict[str, Any]):
        weights = checkpoint["model"]
        if any(k.startswith("module.") for k in weights):  # as fvcore does, before comparing shapes
            weights = {k[len("module."):] if k.startswith("module.") else k: v for k, v in weights.items()}
        own = self.model.state_dict()
        mismatched = [
            (k, tuple(v.shape), tuple(own[k].shape))
            for k, v in weights.items()
            if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
        ]
        ours, theirs = _class_count(own), _class_count(weights)
        classes_differ = ours is not None and theirs is not None and ours != theirs
        if mismatched and self._resuming:
            detail = "; ".join(f"{k}: {a} in the checkpoint, {b} in the model" for k, a, b in mismatched[:5])
            hint = (
                f" The checkpoint has {theirs} classes and MODEL.RETINANET.NUM_CLASSES is {ours}: to fine-tune on "
                "another class count, start a new OUTPUT_DIR with MODEL.WEIGHTS pointing at the checkpoint."
                if classes_differ else ""
            )
            raise CheckpointMismatchError(
                f"cannot resume from {self._source}: {len(mismatched)} weights have other shapes than the model's "
                f"({detail}).{hint}"
            )
        incompatible = super()._load_model(checkpoint)
        if classes_differ:
            logger.warning(
                f"{self._source} has {theirs} classes but MODEL.RETINANET.NUM_CLASSES is {ours}: head.cls_score "
                "(weight and bias) is not loaded and keeps its fresh initialisation; every other weight is loaded."
            )
        return incompatible

    # ----------------------------------------------------------------------------------------- resuming
    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        self._remove_temporary_files()
        chosen = self._newest_readable_checkpoint()
        if comm.get_world_size() > 1:
            chosen_by_rank = comm.all_gather(os.path.basename(chosen))
            if len(set(chosen_by_rank)) > 1:
                self._read_ahead = None
                raise CheckpointReadError(f"the workers chose different checkpoints to resume from: {chosen_by_rank}")
        return self.load(chosen)

    def _remove_temporary_files(self) -> None:
        if not (self.save_to_disk and comm.is_main_process()):
            return
        for path in glob.glob(os.path.join(glob.escape(self.save_dir), TEMPORARY_PREFIX + "*")):
            if os.path.isfile(path):
                logger.info(f"Removing {path}, left by a save that did not finish (the run was killed while saving)")
                os.remove(path)

    def _newest_readable_checkpoint(self) -> str:
        """The tagged checkpoint if it reads; else, with a warning, the newest readable one in ``save_dir``."""
        tagged = self.get_checkpoint_file()
        try:
            self._read_ahead = (tagged, self._read_checkpoint_for_resume(tagged))
            return tagged
        except CheckpointReadError as e:
            failures = [str(e)]
        others = [
            p for p in glob.glob(os.path.join(glob.escape(self.save_dir), "*.pth"))
            if os.path.abspath(p) != os.path.abspath(tagged) and not os.path.basename(p).startswith(TEMPORARY_PREFIX)
        ]
        for candidate in sorted(others, key=os.path.getmtime, reverse=True):
            try:
                data = self._read_checkpoint_for_resume(candidate)
            except CheckpointReadError as e:
                failures.append(str(e))
                continue
            logger.warning(
                f"Cannot resume from the last checkpoint: {failures[0]}. Resuming from {candidate} instead, the newest "
                f"readable checkpoint in {self.save_dir} (iteration {data.get('iteration')}); the iterations after it "
                "are trained again." + (f" Also unreadable: {failures[1:]}." if len(failures) > 1 else "")
            )
            self._read_ahead = (candidate, data)
            return candidate
        raise CheckpointReadError(
            f"--resume: no readable checkpoint in {self.save_dir}:\n  " + "\n  ".join(failures)
            + "\nRemove last_checkpoint (or the folder) to start afresh."
        )

    def _read_checkpoint_for_resume(self, filename: str) -> Dict[str, Any]:
        data = self._read(filename)
        if "iteration" not in data:
            raise CheckpointReadError(f"checkpoint file {filename} holds weights only (no iteration): not a training "
                                      "checkpoint to resume from")
        return data
