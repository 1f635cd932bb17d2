"""Choosing the checkpoint that ``--resume`` continues from.

The tagged checkpoint (``last_checkpoint``) when it reads; else, with a warning, the newest
readable ``*.pth`` in the folder (by modification time). Checkpoints are written atomically, so an
unreadable last checkpoint means damage from outside (disk, copy): an older one continues the run
at the cost of one checkpoint period, where failing would stop a multi-day run that can go on.
The damaged file is named and left in place.

With several workers (every launch mode: ``--num-gpus``, ``--num-machines``, torchrun),
:meth:`.checked_checkpointer.CheckedDetectionCheckpointer.resume_or_load` first has every worker
choose on its own, without any collective, then compares the choices (:func:`agree_on_every_worker`,
:func:`resume_disagreement`): a worker that cannot resume (no readable checkpoint, no
``last_checkpoint`` where the others have one, another choice) stops every worker with one error
naming it, where the others would wait for it in Detectron2's collective load until the process
group's timeout (30 minutes) or fail with a connection error that names nothing. With one worker
there is nothing to agree on: no collective, and each error is raised as it is.
"""

import glob
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from detectron2.utils import comm

from .errors import CheckpointReadError
from .reading import read_checkpoint_file
from .writing import TEMPORARY_PREFIX

__all__ = [
    "CheckpointFailedOnWorkerError",
    "agree_on_every_worker",
    "newest_readable_checkpoint",
    "read_training_checkpoint",
    "remove_temporary_files",
    "resume_disagreement",
]

logger = logging.getLogger(__name__)

Reader = Callable[[str], Dict[str, Any]]


def read_training_checkpoint(path: str, read: Reader = read_checkpoint_file) -> Dict[str, Any]:
    """``read(path)`` (:func:`.reading.read_checkpoint_file`), which must hold an iteration."""
    data = read(path)
    if "iteration" not in data:
        raise CheckpointReadError(
            f"checkpoint file {path} holds weights only (no iteration): not a training "
            "checkpoint to resume from"
        )
    return data


def remove_temporary_files(save_dir: str) -> None:
    """Remove the temporary files of saves that did not finish (never tagged, never loaded)."""
    for path in glob.glob(os.path.join(glob.escape(save_dir), TEMPORARY_PREFIX + "*")):
        if os.path.isfile(path):
            logger.info(
                f"Removing {path}, left by a save that did not finish (the run was killed while "
                "saving)"
            )
            os.remove(path)


def _older_checkpoints(save_dir: str, tagged: str) -> List[str]:
    """The other ``*.pth`` files of ``save_dir``, newest first."""
    others = [
        p
        for p in glob.glob(os.path.join(glob.escape(save_dir), "*.pth"))
        if os.path.abspath(p) != os.path.abspath(tagged)
        and not os.path.basename(p).startswith(TEMPORARY_PREFIX)
    ]
    return sorted(others, key=os.path.getmtime, reverse=True)


def newest_readable_checkpoint(
    save_dir: str, tagged: str, read: Reader = read_training_checkpoint
) -> Tuple[str, Dict[str, Any]]:
    """``(path, checkpoint dict)`` of ``tagged`` if ``read`` reads it, else of the newest
    readable checkpoint in ``save_dir`` (with a warning naming why ``tagged`` was not used).
    Raises :class:`CheckpointReadError` listing every file when none reads."""
    try:
        return tagged, read(tagged)
    except CheckpointReadError as e:
        failures = [str(e)]
    for candidate in _older_checkpoints(save_dir, tagged):
        try:
            data = read(candidate)
        except CheckpointReadError as e:
            failures.append(str(e))
            continue
        also = f" Also unreadable: {failures[1:]}." if len(failures) > 1 else ""
        logger.warning(
            f"Cannot resume from the last checkpoint: {failures[0]}. Resuming from {candidate} "
            f"instead, the newest readable checkpoint in {save_dir} (iteration "
            f"{data.get('iteration')}); the iterations after it are trained again.{also}"
        )
        return candidate, data
    raise CheckpointReadError(
        f"--resume: no readable checkpoint in {save_dir}:\n  "
        + "\n  ".join(failures)
        + "\nRemove last_checkpoint (or the folder) to start afresh."
    )


class CheckpointFailedOnWorkerError(CheckpointReadError):
    """Resuming (or loading ``MODEL.WEIGHTS``) failed on some of the workers: raised on every
    worker, naming each failed rank and its error, so that the whole job stops."""


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def agree_on_every_worker(
    error: Optional[BaseException], what: str, payload: Any = None
) -> List[Any]:
    """A collective: every worker sends whether ``what`` failed on it (``error``), and
    ``payload``. If it failed on any, raise :class:`CheckpointFailedOnWorkerError` on all of them
    (from its own error on a worker where it failed); else return the payloads by rank. With one
    worker, no collective: ``error`` itself is raised, else ``[payload]`` returned."""
    if comm.get_world_size() == 1:
        if error is not None:
            raise error
        return [payload]
    gathered = comm.all_gather((None if error is None else _describe(error), payload))
    failed = [(rank, text) for rank, (text, _) in enumerate(gathered) if text is not None]
    if failed:
        listed = "\n  ".join(f"rank {rank}: {text}" for rank, text in failed)
        raise CheckpointFailedOnWorkerError(
            f"{what} failed on {len(failed)} of {len(gathered)} workers, so every worker stops "
            f"(rank {comm.get_rank()} here):\n  {listed}"
        ) from error
    return [sent for _, sent in gathered]


def resume_disagreement(choices: List[Optional[str]], save_dir: str) -> Optional[str]:
    """What is wrong when the workers (``choices``: the file each resumes from, None for a fresh
    start) would not all do the same; None when they would."""
    resuming = [rank for rank, name in enumerate(choices) if name is not None]
    if resuming and len(resuming) < len(choices):
        missing = [rank for rank, name in enumerate(choices) if name is None]
        return (
            f"--resume: ranks {missing} find no last_checkpoint in {save_dir} where ranks "
            f"{resuming} resume from one: every machine must see the same OUTPUT_DIR (a shared "
            "file system, or a copy of it on each machine)"
        )
    if len(set(choices)) > 1:
        return f"the workers chose different checkpoints to resume from: {choices}"
    return None
