"""The entries of a checkpoint's ``"model"`` dict, whatever the model: names are strings (a
DistributedDataParallel ``module.`` prefix is removed as fvcore removes it), values are numeric
tensors or numpy arrays that torch can take, and every value is finite.

The ``*_problem`` functions return the end of a sentence (``"holds 'w' as a str, ..."``) or None,
so that each caller starts it with what it read (``"checkpoint file x.pth "``)."""

from collections import OrderedDict
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np
import torch

from .errors import CheckpointEntryError

__all__ = [
    "DDP_PREFIX",
    "is_finite",
    "list_names",
    "name_problem",
    "non_finite_problem",
    "strip_ddp_prefix",
    "to_cpu_tensor",
    "value_problem",
    "weights_problem",
]

DDP_PREFIX = "module."  # what DistributedDataParallel puts before every name


def strip_ddp_prefix(weights: Mapping[str, Any]) -> Tuple[Dict[str, Any], Optional[str]]:
    """``(weights renamed, "module.")`` when every non-empty name starts with ``module.`` (fvcore's
    rule when it loads), else ``(weights as a dict, None)``. The order of the entries is kept."""
    names = [k for k in weights if k]
    if names and all(isinstance(k, str) and k.startswith(DDP_PREFIX) for k in names):
        stripped = OrderedDict((k[len(DDP_PREFIX) :], v) for k, v in weights.items())
        return stripped, DDP_PREFIX
    return OrderedDict(weights), None


def list_names(names: Iterable[str], limit: int = 5) -> str:
    """``"a, b, c, d, e, ... (3 more)"``: the first ``limit`` names, and how many are left out."""
    names = list(names)
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def name_problem(weights: Mapping[Any, Any]) -> Optional[str]:
    """Why the names of ``weights`` are not a state dict's (a name that is no string), or None."""
    for key in weights:
        if not isinstance(key, str):
            return f"names a weight by the {type(key).__name__} {key!r}, not by a string"
    return None


def value_problem(value: Any) -> Optional[str]:
    """What ``value`` is when it is not a tensor or a numpy array torch can take (``"a str, not a
    tensor or numpy array"``), or None."""
    if isinstance(value, torch.Tensor):
        return None
    if not isinstance(value, np.ndarray):
        return f"a {type(value).__name__}, not a tensor or numpy array"
    try:  # object, str, float128 and non-native byte order arrays are refused by torch
        torch.from_numpy(np.empty(0, dtype=value.dtype))
    except (TypeError, ValueError, RuntimeError):
        return f"a numpy array of dtype {value.dtype.str}, which torch cannot take"
    return None


def is_finite(value: Any) -> bool:
    """Whether a tensor or numpy array holds no NaN or infinite value (integers always do)."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind not in "fc" or bool(np.isfinite(value).all())
    if value.is_floating_point() or value.is_complex():
        return bool(torch.isfinite(value).all())
    return True


def non_finite_problem(weights: Mapping[str, Any]) -> Optional[str]:
    """``"holds NaN or infinite values in N weights (names): it is damaged"``, or None."""
    bad = [k for k, v in weights.items() if not is_finite(v)]
    if not bad:
        return None
    return f"holds NaN or infinite values in {len(bad)} weights ({list_names(bad)}): it is damaged"


def weights_problem(weights: Mapping[Any, Any]) -> Optional[str]:
    """Why ``weights`` (a checkpoint's ``"model"`` entry) cannot be loaded into a model: a name that
    is not a string, a value that is not numbers, a NaN or infinite value. None if it can."""
    problem = name_problem(weights)
    if problem:
        return problem
    for key, value in weights.items():
        kind = value_problem(value)
        if kind:
            return f"holds {key!r} as {kind}"
    return non_finite_problem(weights)


def to_cpu_tensor(key: str, value: Any) -> torch.Tensor:
    """``value`` (tensor or numpy array) as a detached CPU tensor. Raises
    :class:`CheckpointEntryError` naming ``key`` when it is neither, or an array torch refuses."""
    kind = value_problem(value)
    if kind:
        raise CheckpointEntryError(f"checkpoint entry {key!r} is {kind}")
    if isinstance(value, np.ndarray):
        try:
            value = torch.from_numpy(np.ascontiguousarray(value))
        except (TypeError, ValueError, RuntimeError) as e:
            raise CheckpointEntryError(
                f"checkpoint entry {key!r} is a numpy array of dtype {value.dtype.str} that torch "
                f"cannot take ({e})"
            ) from e
    return value.detach().cpu()
