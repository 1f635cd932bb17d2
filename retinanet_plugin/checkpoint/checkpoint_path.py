"""Checkpoint paths with load options, Detectron2's syntax: ``model.pth?matching_heuristics=True``.

``matching_heuristics=True`` loads the weights by Detectron2's name-matching heuristics
(``align_and_update_state_dicts``: a checkpoint name is matched to the model names it is the
dotted suffix of), for checkpoints whose names have other prefixes than the model's.
``matching_heuristics=False`` leaves it to the file (Caffe2 and pycls files always need them).
As in Detectron2, everything after the first ``?`` is the query, in URLs too.
"""

from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .errors import CheckpointPathError

__all__ = ["LOAD_OPTIONS", "CheckpointPath", "parse_checkpoint_path"]

_BOOLEANS = {"True": True, "False": False}  # the spellings Detectron2 documents
LOAD_OPTIONS = {"matching_heuristics": _BOOLEANS}  # query key -> accepted value -> meaning


class CheckpointPath(NamedTuple):
    """A checkpoint path split into the file (path or URL without its query) and load options."""

    file: str
    matching_heuristics: bool = False


def parse_checkpoint_path(path: str) -> CheckpointPath:
    """Split ``path`` (``"x.pth"``, ``"x.pth?matching_heuristics=True"``, a URL) into the file and
    its options. A path without ``?`` is the file as it is.

    Raises:
        CheckpointPathError: an unknown option, an option given twice, or a value other than
            ``True``/``False``; the message names the path.
    """
    if "?" not in path:
        return CheckpointPath(path)
    parts = urlsplit(path)
    file = urlunsplit(parts._replace(query=""))
    options = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in LOAD_OPTIONS:
            raise CheckpointPathError(
                f"checkpoint path {path}: unknown option {key!r} after '?' (known: "
                f"{', '.join(LOAD_OPTIONS)}); the file is {file}"
            )
        if key in options:
            raise CheckpointPathError(f"checkpoint path {path}: option {key!r} is given twice")
        accepted = LOAD_OPTIONS[key]
        if value not in accepted:
            raise CheckpointPathError(
                f"checkpoint path {path}: {key}={value!r}, expected {' or '.join(accepted)}"
            )
        options[key] = accepted[value]
    return CheckpointPath(file, **options)
