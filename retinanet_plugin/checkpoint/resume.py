"""Choosing the checkpoint that ``--resume`` continues from.

The tagged checkpoint (``last_checkpoint``) when it reads; else, with a warning, the newest
readable ``*.pth`` in the folder (by modification time). Checkpoints are written atomically, so an
unreadable last checkpoint means damage from outside (disk, copy): an older one continues the run
at the cost of one checkpoint period, where failing would stop a multi-day run that can go on.
The damaged file is named and left in place.
"""

import glob
import logging
import os
from typing import Any, Callable, Dict, List, Tuple

from .errors import CheckpointReadError
from .reading import read_checkpoint_file
from .writing import TEMPORARY_PREFIX

__all__ = ["newest_readable_checkpoint", "read_training_checkpoint", "remove_temporary_files"]

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
