"""The trainer's checkpointer: atomic writes (:class:`.writing.AtomicDetectionCheckpointer`), plus
loading that names the problem.

====================================== ============================================================
Checkpoint problem                     What happens
====================================== ============================================================
MODEL.WEIGHTS truncated, corrupt, not  ``CheckpointReadError`` naming the file (no pickle or zip
a checkpoint                           traceback)
a ``.pkl`` that asks for any global    ``CheckpointReadError`` naming the file and the global
but numpy arrays/dtypes, plain         ("posix.system"); nothing in the file is run (restricted
containers, numbers, str, bytes        unpickler, :mod:`.safe_pickle`)
a ``.pth`` holding more than tensors   ``CheckpointReadError`` naming the file and the global
and plain containers                   ``torch.load(weights_only=True)`` refused
weights that are not numeric tensors   ``CheckpointReadError`` naming the file and the entry (when
or arrays, or hold NaN or infinity     resuming too: such a checkpoint counts as unreadable)
MODEL.WEIGHTS file missing             ``CheckpointNotFoundError`` (a ``FileNotFoundError``)
                                       naming the file
``path?matching_heuristics=True``      loaded by Detectron2's name-matching heuristics, as
                                       ``DetectionCheckpointer`` does (:mod:`.checkpoint_path`);
                                       another option or value: ``CheckpointPathError`` naming
                                       the path
MODEL.WEIGHTS with another number of   ``head.cls_score`` keeps its fresh initialisation, with a
classes                                WARNING giving both class counts; every other weight loads
--resume: the last checkpoint is       WARNING naming it and why; training resumes from the newest
unreadable, or ``last_checkpoint``     readable checkpoint in OUTPUT_DIR (:mod:`.resume`);
names a missing file                   ``CheckpointReadError`` listing every file if none reads
--resume: the temporary file of a      removed, with a log line (it was never tagged)
killed save
--resume with another number of        ``CheckpointMismatchError`` naming the file, the weights and
classes, or any other shape difference their shapes: a resumed run must be the same model
--resume (or MODEL.WEIGHTS) that fails ``CheckpointFailedOnWorkerError`` on every worker, naming
on one worker of several, or workers   each failed rank and its error, before the load's
that would load different checkpoints  collective (``resume_or_load``: :mod:`.resume`)
====================================== ============================================================
"""

import functools
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from .checkpoint_path import parse_checkpoint_path
from .errors import CheckpointMismatchError
from .reading import CAFFE2_AUTHOR, read_checkpoint_file, require_file
from .resume import (
    CheckpointFailedOnWorkerError,
    agree_on_every_worker,
    newest_readable_checkpoint,
    read_training_checkpoint,
    remove_temporary_files,
    resume_disagreement,
)
from .retinanet_layout import class_count
from .weight_entries import strip_ddp_prefix, to_cpu_tensor
from .writing import AtomicDetectionCheckpointer

__all__ = ["CheckedDetectionCheckpointer"]

logger = logging.getLogger(__name__)

Mismatch = Tuple[str, Tuple[int, ...], Tuple[int, ...]]  # name, checkpoint shape, model shape


def shape_mismatches(weights: Mapping[str, Any], own: Mapping[str, Any]) -> List[Mismatch]:
    """The weights that the model has under the same name with another shape."""
    return [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in weights.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]


class CheckedDetectionCheckpointer(AtomicDetectionCheckpointer):
    """See the module docstring. Saving is :class:`.writing.AtomicDetectionCheckpointer`'s.

    Args:
        model: the model whose weights are loaded and saved.
        save_dir: the folder of the training checkpoints and ``last_checkpoint``.
        save_to_disk: whether ``save`` writes (default: on the main process only).
        checkpointables: other objects with ``state_dict``, saved and restored on resume
            (``optimizer=...``, ``trainer=...``).
    """

    def __init__(
        self, model, save_dir: str = "", *, save_to_disk: Optional[bool] = None, **checkpointables
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self._read_ahead: Optional[Tuple[str, Dict[str, Any]]] = None  # read while choosing
        self._resuming = False
        self._source = ""
        self._matching_heuristics = False

    # ------------------------------------------------------------------------------- reading
    def _read(self, filename: str) -> Dict[str, Any]:
        """The checkpoint dict of ``filename``; any failure is a :class:`CheckpointReadError`."""
        return read_checkpoint_file(filename)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if self._read_ahead is not None and self._read_ahead[0] == filename:
            data, self._read_ahead = self._read_ahead[1], None
        else:
            data = self._read(filename)
        if self._matching_heuristics:
            data["matching_heuristics"] = True
        return data

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """Detectron2's ``load``: ``path`` may end in ``?matching_heuristics=True``.
        ``checkpointables`` None restores everything (optimizer, scheduler, iteration): a resume,
        which needs the same model."""
        source = parse_checkpoint_path(os.fspath(path) if path else "")
        if source.file and "://" not in source.file:
            require_file(source.file)
        self._resuming = checkpointables is None and bool(self.checkpointables)
        self._source, self._matching_heuristics = source.file, source.matching_heuristics
        try:
            return super().load(source.file, checkpointables=checkpointables)
        finally:
            self._resuming = self._matching_heuristics = False

    # ------------------------------------------------------------------------------- loading
    def _load_model(self, checkpoint: Dict[str, Any]):
        heuristics = checkpoint.get("matching_heuristics", False)
        if heuristics:  # matched now, so that the checks below see the names that load
            checkpoint["model"] = self._matched_names(checkpoint)
            checkpoint["matching_heuristics"] = False
        try:
            return self._checked_load_model(checkpoint)
        finally:
            if heuristics:
                checkpoint["matching_heuristics"] = heuristics

    def _matched_names(self, checkpoint: Dict[str, Any]) -> Dict[str, Any]:
        """The weights renamed by Detectron2's name-matching heuristics (tensors)."""
        weights = {k: to_cpu_tensor(k, v) for k, v in checkpoint["model"].items()}
        caffe2 = checkpoint.get("__author__") == CAFFE2_AUTHOR
        try:
            return align_and_update_state_dicts(
                self.model.state_dict(), weights, c2_conversion=caffe2
            )
        except ValueError as e:  # a checkpoint name that matches several of the model's
            raise CheckpointMismatchError(
                f"cannot match the weight names of {self._source} to the model's by "
                f"matching_heuristics: {e}"
            ) from e

    def _checked_load_model(self, checkpoint: Dict[str, Any]):
        weights, _ = strip_ddp_prefix(checkpoint["model"])  # as fvcore does, before comparing
        own = self.model.state_dict()
        mismatched = shape_mismatches(weights, own)
        ours, theirs = class_count(own), class_count(weights)
        classes_differ = ours is not None and theirs is not None and ours != theirs
        if mismatched and self._resuming:
            raise self._mismatch_error(mismatched, ours, theirs, classes_differ)
        incompatible = super()._load_model(checkpoint)
        if classes_differ:
            logger.warning(
                f"{self._source} has {theirs} classes but MODEL.RETINANET.NUM_CLASSES is {ours}: "
                "head.cls_score (weight and bias) is not loaded and keeps its fresh "
                "initialisation; every other weight is loaded."
            )
        return incompatible

    def _mismatch_error(self, mismatched: List[Mismatch], ours, theirs, classes_differ: bool):
        detail = "; ".join(
            f"{k}: {a} in the checkpoint, {b} in the model" for k, a, b in mismatched[:5]
        )
        hint = (
            f" The checkpoint has {theirs} classes and MODEL.RETINANET.NUM_CLASSES is {ours}: to "
            "fine-tune on another class count, start a new OUTPUT_DIR with MODEL.WEIGHTS pointing "
            "at the checkpoint."
            if classes_differ
            else ""
        )
        return CheckpointMismatchError(
            f"cannot resume from {self._source}: {len(mismatched)} weights have other shapes than "
            f"the model's ({detail}).{hint}"
        )

    # ------------------------------------------------------------------------------ resuming
    def resume_choice(self, resume: bool = True) -> Optional[Tuple[str, Dict[str, Any]]]:
        """``(path, checkpoint dict)`` of the checkpoint that :meth:`resume_or_load` resumes from:
        the newest readable checkpoint of ``save_dir`` (:func:`.resume.newest_readable_checkpoint`),
        read; None when it would not resume (``resume`` False, or no ``last_checkpoint``). Raises
        :class:`.errors.CheckpointReadError` when none reads. No collective."""
        if not (resume and self.has_checkpoint()):
            return None
        read = functools.partial(read_training_checkpoint, read=self._read)
        return newest_readable_checkpoint(self.save_dir, self.get_checkpoint_file(), read=read)

    def resume_from(self, path: str, checkpoint: Dict[str, Any]) -> Dict[str, Any]:
        """``load(path)``, everything restored (a resume), from ``checkpoint``: the dict already
        read from ``path`` (:meth:`resume_choice`'s), which is not read again."""
        self._read_ahead = (path, checkpoint)
        try:
            return self.load(path)
        finally:
            self._read_ahead = None

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resume from the newest readable checkpoint of ``save_dir`` (see :mod:`.resume`) when
        ``resume`` and there is one; else load the weights of ``path``.

        With several workers, each first finds what it would load without any collective (the
        checkpoint it resumes from, read; or that ``path`` exists); one collective compares the
        outcomes, and a failure or a difference on any worker raises
        :class:`.resume.CheckpointFailedOnWorkerError` on every worker, naming the ranks and their
        errors. Then each loads the agreed checkpoint (Detectron2's load, whose one collective
        comes first), and a failure while loading stops every worker the same way. With one
        worker, the same steps without a collective: each error is raised as it is."""
        error, choice = None, None
        try:
            if resume and self.has_checkpoint() and self.save_to_disk and comm.is_main_process():
                remove_temporary_files(self.save_dir)
            choice = self.resume_choice(resume)
            if choice is None:
                self._require_weights(path)
        except Exception as e:  # any failure is told to the other workers
            error = e
        name = None if choice is None else os.path.basename(choice[0])
        what = "--resume" if resume else f"loading MODEL.WEIGHTS {path}"
        problem = resume_disagreement(agree_on_every_worker(error, what, name), self.save_dir)
        if problem:
            raise CheckpointFailedOnWorkerError(problem)
        error, loaded = None, None
        try:
            if choice is None:
                what = f"loading MODEL.WEIGHTS {path}"
                loaded = self.load(path, checkpointables=[])
            else:
                what = f"loading {choice[0]}"
                loaded = self.resume_from(*choice)
        except Exception as e:  # Detectron2's load has no collective after its first one
            error = e
        agree_on_every_worker(error, what)
        return loaded

    @staticmethod
    def _require_weights(path: str) -> None:
        """Raise what :meth:`load` would raise if the file of ``path`` (``MODEL.WEIGHTS``) is
        missing, before any collective; a URL is downloaded now (the load then finds it in the
        cache)."""
        weights = parse_checkpoint_path(os.fspath(path) if path else "").file
        if weights:
            require_file(PathManager.get_local_path(weights) if "://" in weights else weights)
