"""Reading checkpoint files as Detectron2 lays them out, without running code from them.

=========== ======================================================================================
File        How it is read (every failure names the file)
=========== ======================================================================================
``.pkl``    restricted unpickler (:mod:`.safe_pickle`): a Detectron2 model-zoo file
            (``{"model": {name: ndarray}, "__author__": ...}``) as it is; anything else as a
            Caffe2/Detectron1 file (weights under ``"blobs"`` or at the top, momentum blobs
            dropped), loaded by Detectron2's name-matching heuristics
``.pyth``   pycls: ``torch.load(weights_only=True)``, its ``"model_state"`` by the heuristics
other       ``torch.load(weights_only=True)``; a bare state dict becomes ``{"model": state_dict}``
=========== ======================================================================================
"""

import logging
import os
import pickle
import re
import zipfile
from typing import Any, Dict, Mapping, Optional

import torch

from .errors import CheckpointNotFoundError, CheckpointReadError
from .safe_pickle import UnreadablePickleError, load_pickle_checkpoint
from .weight_entries import weights_problem

__all__ = [
    "CAFFE2_AUTHOR",
    "has_model_weights",
    "load_detectron2_checkpoint",
    "read_checkpoint_file",
    "read_detectron2_pkl",
    "read_pycls_file",
    "read_torch_file",
    "require_file",
    "torch_refused_global",
]

logger = logging.getLogger(__name__)

CAFFE2_AUTHOR = "Caffe2"  # the "__author__" Detectron2 gives a Caffe2/Detectron1 file it read
# What torch.load raises on a truncated or corrupt file (besides pickle.UnpicklingError).
_READ_FAILURES = (
    EOFError,
    RuntimeError,
    OSError,
    ValueError,
    zipfile.BadZipFile,
    KeyError,
    AttributeError,
    TypeError,
    IndexError,
    MemoryError,
)
_TORCH_REFUSAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def require_file(path: str) -> None:
    """Raise :class:`CheckpointNotFoundError` (a ``FileNotFoundError``) when ``path`` is no file."""
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint file {path} does not exist")


def has_model_weights(data: Any) -> bool:
    """Whether ``data`` is a checkpoint dict with a ``"model"`` mapping (name -> weight)."""
    return isinstance(data, Mapping) and isinstance(data.get("model"), Mapping)


def torch_refused_global(error: BaseException) -> Optional[str]:
    """The global that ``torch.load(weights_only=True)`` refused, from its error message (None if
    none is named)."""
    match = _TORCH_REFUSAL.search(str(error))
    return match.group(1) if match else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


def _unreadable(path: str, error: BaseException) -> CheckpointReadError:
    """The error for a file ``torch.load`` fails on: refused globals by name, else corruption."""
    message = str(error)
    if isinstance(error, pickle.UnpicklingError) and (
        "weights_only" in message or "Weights only" in message
    ):
        refused = torch_refused_global(error)
        asks = ""
        if refused:
            asks = f" (it asks for the global '{refused}'; nothing in the file was run)"
        return CheckpointReadError(
            f"checkpoint file {path} holds objects that torch.load(weights_only=True) refuses to "
            f"load{asks}; if you trust the file, re-save its 'model' entry alone. "
            f"({message.splitlines()[0]})"
        )
    return CheckpointReadError(
        f"checkpoint file {path} cannot be read: it is truncated or corrupt ({_first_line(error)})"
    )


def _torch_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError,) + _READ_FAILURES as e:
        raise _unreadable(path, e) from e


def read_torch_file(path: str) -> Dict[str, Any]:
    """A ``.pth`` as a dict; without a ``"model"`` entry, the whole content is the model's."""
    data = _torch_load(path)
    if isinstance(data, Mapping) and "model" in data:
        return dict(data)
    return {"model": data}


def read_pycls_file(path: str) -> Dict[str, Any]:
    """A pycls ``.pyth``: its ``"model_state"`` (``num_batches_tracked`` dropped), by heuristics."""
    data = _torch_load(path)
    if not (isinstance(data, Mapping) and isinstance(data.get("model_state"), Mapping)):
        raise CheckpointReadError(
            f"checkpoint file {path} holds no 'model_state' dict, where pycls keeps its weights"
        )
    weights = {
        k: v
        for k, v in data["model_state"].items()
        if not (isinstance(k, str) and k.endswith("num_batches_tracked"))
    }
    return {"model": weights, "__author__": "pycls", "matching_heuristics": True}


def read_detectron2_pkl(path: str) -> Dict[str, Any]:
    """A ``.pkl`` as Detectron2's ``DetectionCheckpointer`` interprets it (module docstring), but
    unpickled with the restricted unpickler. Raises ``UnreadablePickleError`` (its subclass
    ``ForbiddenPickleGlobalError`` naming the global) or :class:`CheckpointReadError`."""
    data = load_pickle_checkpoint(path)
    if not isinstance(data, dict):
        raise CheckpointReadError(
            f"checkpoint file {path} holds a {type(data).__name__}, not a dict of weights"
        )
    if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
        logger.info(f"Reading a file from '{data['__author__']}'")
        return data
    if has_model_weights(data):  # the same without "__author__" (Detectron2 would fail on it)
        return data
    blobs = data.get("blobs", data)  # Caffe2 detection models keep their weights under "blobs"
    if not isinstance(blobs, dict):
        raise CheckpointReadError(
            f"checkpoint file {path} has 'blobs' of type {type(blobs).__name__}, not a dict"
        )
    weights = {
        k: v for k, v in blobs.items() if not (isinstance(k, str) and k.endswith("_momentum"))
    }
    return {"model": weights, "__author__": CAFFE2_AUTHOR, "matching_heuristics": True}


def read_checkpoint_file(path: str) -> Dict[str, Any]:
    """Any checkpoint file the trainer loads (see the module docstring), with loadable weights.

    Returns the checkpoint dict, ``"model"`` being name -> tensor or numpy array. Raises
    :class:`CheckpointReadError` naming the file and the problem: missing (then a
    :class:`CheckpointNotFoundError`), unreadable, refused, no model weights, or weights that are
    not finite numbers (:func:`.weight_entries.weights_problem`).
    """
    require_file(path)
    if path.endswith(".pkl"):
        reader = read_detectron2_pkl
    else:
        reader = read_pycls_file if path.endswith(".pyth") else read_torch_file
    try:
        data = reader(path)
    except UnreadablePickleError as e:  # ForbiddenPickleGlobalError included: it names the global
        raise CheckpointReadError(str(e)) from e
    if not has_model_weights(data):
        raise CheckpointReadError(
            f"checkpoint file {path} holds no model weights (no 'model' dict)"
        )
    problem = weights_problem(data["model"])
    if problem:
        raise CheckpointReadError(f"checkpoint file {path} {problem}")
    return data


def load_detectron2_checkpoint(path: str) -> Dict[str, Any]:
    """Read a Detectron2 checkpoint file to convert: a model-zoo ``.pkl`` or a ``.pth`` written
    by ``DetectionCheckpointer`` (``{"model": state_dict, ...}``, or a bare state dict).

    Returns the checkpoint dict, always with a ``"model"`` mapping. Raises
    :class:`CheckpointReadError` (a ``ValueError``) naming the file when it is neither, for example
    a Caffe2/Detectron1 ``.pkl``, whose names Detectron2 converts only by heuristics (load those
    through the checkpointer instead); ``FileNotFoundError`` when it is missing; the restricted
    unpickler's ``UnreadablePickleError`` / ``ForbiddenPickleGlobalError`` (``ValueError`` too).
    """
    require_file(path)
    if not path.endswith(".pkl"):
        data = _torch_load(path)
        if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
            return dict(data)
        if (
            isinstance(data, Mapping)
            and data
            and all(isinstance(v, torch.Tensor) for v in data.values())
        ):
            return {"model": data}  # a bare state dict
        raise CheckpointReadError(
            f"checkpoint file {path}: expected a checkpoint dict with a 'model' entry or a bare "
            "state dict (tensors by name)"
        )
    data = load_pickle_checkpoint(path)  # numpy arrays, plain containers and numbers only
    if not has_model_weights(data):
        caffe2 = isinstance(data, dict) and "blobs" in data
        kind = "a Caffe2/Detectron1 file ('blobs')" if caffe2 else "not a Detectron2 model-zoo file"
        raise CheckpointReadError(
            f"checkpoint file {path}: expected a dict with a 'model' entry (Detectron2 model-zoo "
            f"format); it is {kind}"
        )
    return dict(data)
