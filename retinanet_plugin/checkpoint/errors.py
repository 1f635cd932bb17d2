"""What can be wrong with a checkpoint. Every message names the file (or the entry) and the
problem. The restricted unpickler's own errors are in :mod:`.safe_pickle`."""

__all__ = [
    "CheckpointEntryError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointPathError",
    "CheckpointReadError",
]


class CheckpointReadError(ValueError):
    """A checkpoint file that cannot be read, or holds no loadable weights."""


class CheckpointNotFoundError(CheckpointReadError, FileNotFoundError):
    """A checkpoint file that does not exist (also a ``FileNotFoundError``)."""


class CheckpointPathError(CheckpointReadError):
    """A checkpoint path whose query (``path?matching_heuristics=True``) cannot be understood."""


class CheckpointMismatchError(ValueError):
    """A checkpoint to resume from whose weights do not have the model's shapes."""


class CheckpointEntryError(TypeError, ValueError):
    """A checkpoint entry that is not a numeric tensor or numpy array (a ``TypeError``, and a
    ``ValueError`` like the other problems of a checkpoint's content)."""
