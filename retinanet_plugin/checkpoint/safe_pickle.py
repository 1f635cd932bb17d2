"""Reading ``.pkl`` checkpoints without running code from them.

``pickle.load`` calls whatever the file names (``os.system``, ``builtins.eval``, ...), so a crafted
checkpoint runs code as soon as it is read. :func:`load_pickle_checkpoint` uses an unpickler that
admits only the globals a Detectron2 model-zoo or Caffe2/Detectron1 ``.pkl`` needs, and refuses
every other one by name, before anything is called:

- numpy arrays, dtypes and scalars: ``numpy.core.multiarray._reconstruct`` / ``scalar``,
  ``numpy.core.numeric._frombuffer`` (and their ``numpy._core`` spellings of numpy 2),
  ``numpy.ndarray``, ``numpy.dtype``;
- plain containers: ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``,
  ``collections.OrderedDict``;
- numbers, strings and bytes: ``int``, ``float``, ``complex``, ``bool``, ``str``, ``bytes``,
  ``bytearray``, and ``_codecs.encode`` with the latin-1 codec (how protocols 0-2 store bytes).

Python 2 pickles name the builtins ``__builtin__.*``; those are admitted as the same objects.

The admitted callables are also kept from allocating more than the file holds: ``numpy.ndarray``
can only be the type argument of ``_reconstruct`` (which numpy always calls with an empty
placeholder shape), ``bytes`` and ``bytearray`` refuse an integer size, and ``_codecs.encode`` only
takes latin-1.
"""

import codecs
import collections
import importlib
import io
import os
import pickle
from typing import Any, Callable, Dict, Tuple

import numpy as np

from .errors import CheckpointNotFoundError

__all__ = [
    "ADMITTED_GLOBALS",
    "ForbiddenPickleGlobalError",
    "UnreadablePickleError",
    "load_pickle_checkpoint",
    "restricted_pickle_load",
]

_ADMITTED_DESCRIPTION = (
    "a checkpoint .pkl may hold only numpy arrays, dtypes and scalars, "
    "dict/list/tuple/set/OrderedDict, numbers, str and bytes"
)


class UnreadablePickleError(pickle.UnpicklingError, ValueError):
    """A ``.pkl`` file that cannot be read: truncated, corrupt, or not a pickle. The message names
    the file."""


class ForbiddenPickleGlobalError(UnreadablePickleError):
    """A ``.pkl`` file that asks for a global outside :data:`ADMITTED_GLOBALS`; nothing it names
    was called."""

    def __init__(self, message: str, path: str, global_name: str):
        super().__init__(message)
        self.path = path
        self.global_name = global_name


def _numpy_core(submodule: str):
    """``numpy._core.<submodule>`` (numpy 2) or ``numpy.core.<submodule>`` (numpy 1), whichever is
    the real one."""
    name = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
    return importlib.import_module(f"{name}.{submodule}")


class _NdarrayType:
    """What ``numpy.ndarray`` unpickles to: the type argument of ``_reconstruct``, and nothing that
    can be called (``ndarray(shape)`` would allocate an array of any size the file asks for)."""

    def __repr__(self) -> str:
        return "numpy.ndarray (as the type argument of numpy's _reconstruct only)"


_NDARRAY = _NdarrayType()


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` for plain arrays with numpy's empty placeholder shape; the data
    comes with ``__setstate__``, which checks its size against the array's."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(
            f"numpy _reconstruct called with {subtype!r} instead of numpy.ndarray"
        )
    integers = isinstance(shape, tuple) and all(isinstance(n, int) for n in shape)
    if not integers or np.prod(shape, dtype=object) != 0:
        raise pickle.UnpicklingError(
            f"numpy _reconstruct called with shape {shape!r}; numpy pickles arrays with an empty "
            "placeholder shape such as (0,)"
        )
    return _numpy_core("multiarray")._reconstruct(np.ndarray, shape, dtype)


def _guarded_sized(kind: type) -> Callable[..., Any]:
    def build(*args):
        if args and isinstance(args[0], int):
            raise pickle.UnpicklingError(
                f"{kind.__name__}({args[0]!r}) from an integer size is not checkpoint data"
            )
        return kind(*args)

    build.__name__ = kind.__name__
    return build


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as pickle protocols 0-2 use it for bytes: ``encode(str, "latin1")``,
    nothing else."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise pickle.UnpicklingError(
            f"_codecs.encode with {encoding!r} is not how pickle stores bytes"
        )
    return codecs.encode(text, "latin1", errors)


def _admitted() -> Dict[Tuple[str, str], Any]:
    admitted: Dict[Tuple[str, str], Any] = {}
    for core in ("numpy.core", "numpy._core"):
        admitted[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        admitted[(f"{core}.multiarray", "scalar")] = _numpy_core("multiarray").scalar
        admitted[(f"{core}.numeric", "_frombuffer")] = _numpy_core("numeric")._frombuffer
    admitted[("numpy", "ndarray")] = _NDARRAY
    admitted[("numpy", "dtype")] = np.dtype
    plain = {
        "dict": dict,
        "list": list,
        "tuple": tuple,
        "set": set,
        "frozenset": frozenset,
        "int": int,
        "float": float,
        "complex": complex,
        "bool": bool,
        "str": str,
        "bytes": _guarded_sized(bytes),
        "bytearray": _guarded_sized(bytearray),
    }
    for module in ("builtins", "__builtin__"):
        for name, obj in plain.items():
            admitted[(module, name)] = obj
    admitted[("collections", "OrderedDict")] = collections.OrderedDict
    admitted[("_codecs", "encode")] = _latin1_encode
    return admitted


ADMITTED_GLOBALS: Dict[Tuple[str, str], Any] = _admitted()


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str, **kwargs):
        super().__init__(file, **kwargs)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ADMITTED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            pass
        global_name = f"{module}.{name}"
        raise ForbiddenPickleGlobalError(
            f"checkpoint file {self._path} is refused: it asks for the global '{global_name}', and "
            f"{_ADMITTED_DESCRIPTION}; nothing in it was run. If the file comes from a source you "
            "trust, convert it to a .pth of tensors (torch.save of its 'model' dict) where you "
            "trust it.",
            self._path,
            global_name,
        )

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(
            f"persistent id {str(pid)[:80]!r}: not part of a .pkl checkpoint"
        )


def restricted_pickle_load(data: bytes, path: str = "<bytes>") -> Any:
    """Unpickle ``data`` with the restricted unpickler (``encoding="latin1"``, as Detectron2 reads
    ``.pkl`` files).

    Raises:
        ForbiddenPickleGlobalError: the data names a global outside :data:`ADMITTED_GLOBALS`
            (message: the file and ``module.name``); nothing was called.
        UnreadablePickleError: any other failure (truncated, corrupt, not a pickle), naming the
            file.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), path, encoding="latin1").load()
    except ForbiddenPickleGlobalError:
        raise
    except Exception as e:  # corrupt data can make the unpickler raise anything (MemoryError too)
        detail = str(e).splitlines()[0] if str(e) else ""
        raise UnreadablePickleError(
            f"checkpoint file {path} cannot be read: it is truncated, corrupt or not a pickle "
            f"({type(e).__name__}{': ' + detail[:200] if detail else ''})"
        ) from e


def load_pickle_checkpoint(path: str) -> Any:
    """Read a ``.pkl`` checkpoint file with :func:`restricted_pickle_load`;
    :class:`.errors.CheckpointNotFoundError` (a ``FileNotFoundError``) if it is absent."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise CheckpointNotFoundError(f"checkpoint file {path} does not exist") from e
    except OSError as e:
        raise UnreadablePickleError(
            f"checkpoint file {path} cannot be read ({type(e).__name__}: {e})"
        ) from e
    return restricted_pickle_load(data, path)
