"""The one door to the compiled library ``retinanet_plugin._C`` and what the ops' Python faces
share.

``_C`` is imported once, here; its import registers the ``torch.ops.retinanet_plugin`` ops. Each
loss module (``sigmoid_focal_loss``, ``quality_focal_loss``, ``sigmoid_focal_loss_dense``) keeps
only its own signature and docstring, its fake kernel's shape checks and its autograd formula, and
takes from here:

- ``require_op(logits, reduction)``: the checks every call makes before it reaches the op (library
  loaded, a known reduction, CUDA kernels built for CUDA logits), with errors that say how to fix
  them;
- ``split_normalizer``: a float normaliser becomes the op's ``divisor``, a tensor stays on the
  device;
- ``fake_loss`` / ``fake_grad``: the outputs' dtype, shape and layout, the same rule as the kernels'
  (``output_strides`` in ``csrc/loss_driver.h``), for ``torch.compile`` and ``torch.export``.
"""

import re
from typing import Optional, Tuple, Union

import torch

from .reduction import check_reduction

REBUILD_HINT = "run `pip install --no-build-isolation -e .` in the retinanet_plugin folder"


def load_library():
    """``(_C, None)``, or ``(None, the reason)`` when it is not built or was built against another
    torch than this one (its C++ ABI is that torch's: ``_C.TORCH_VERSION``, from its headers)."""
    try:
        from .. import _C  # the import registers the torch.ops.retinanet_plugin ops
    except (ImportError, OSError) as e:
        return None, e
    # "2.14.1" of "2.14.1+cu130", "2.15.0" of "2.15.0.dev20260101+cpu": the header has the release
    running = re.match(r"\d+\.\d+\.\d+", torch.__version__).group()
    built = getattr(_C, "TORCH_VERSION", "unknown (an older build)")
    if built != running:
        return None, ImportError(
            f"{_C.__file__} was built against torch {built}, this is {running}"
        )
    return _C, None


_C, LOAD_ERROR = load_library()


def op_available() -> bool:
    """Whether the compiled ops (``retinanet_plugin._C``) could be loaded."""
    return _C is not None


def built_with_cuda() -> bool:
    """Whether the compiled ops include the CUDA kernels."""
    return bool(_C is not None and _C.WITH_CUDA)


def not_loaded_message() -> str:
    """Why the compiled library is missing, and how to build it."""
    return f"retinanet_plugin._C could not be loaded ({LOAD_ERROR}); {REBUILD_HINT}"


def _require_library() -> None:
    if _C is None:
        raise RuntimeError(not_loaded_message())


def library_path() -> str:
    """The file of the loaded compiled library (raises when it could not be loaded)."""
    _require_library()
    return _C.__file__


def cpu_kernel_capability() -> str:
    """The CPU kernel variant in use on this machine: "AVX512", "AVX2" or "DEFAULT"."""
    _require_library()
    return _C.cpu_kernel_capability()


def require_op(logits: torch.Tensor, reduction: str) -> None:
    """Raises a clear error when a loss op cannot run on ``logits`` with ``reduction``."""
    _require_library()
    check_reduction(reduction)
    if logits.is_cuda and not built_with_cuda():
        raise RuntimeError(
            "retinanet_plugin._C was built without CUDA kernels and got CUDA logits: rebuild with "
            "a CUDA toolkit "
            "(`FORCE_CUDA=1 pip install --no-build-isolation -e .`, TORCH_CUDA_ARCH_LIST picks the "
            "GPUs)"
        )


def split_normalizer(
    normalizer: Optional[Union[torch.Tensor, float]],
) -> Tuple[Optional[torch.Tensor], float]:
    """(tensor normaliser or None, divisor): the op divides by ``divisor * normalizer`` inside the
    kernel."""
    if normalizer is not None and not isinstance(normalizer, torch.Tensor):
        return None, float(normalizer)
    return normalizer, 1.0


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 logits, fp32 otherwise: the dtype of the loss and of the accumulation."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def output_strides(logits: torch.Tensor) -> Tuple[int, int]:
    """Strides of an [N, K] result (loss for reduction "none", gradient) of the kernels: contiguous,
    except on CUDA for column-major logits, whose layout the CUDA kernels keep so that they read and
    write coalesced."""
    rows, cols = logits.shape
    if logits.device.type == "cuda" and rows > 1 and cols > 1 and logits.stride(0) == 1:
        return (1, rows)
    return (cols, 1)


def fake_loss(logits: torch.Tensor, reduction: str) -> torch.Tensor:
    """The forward's output, without computing it."""
    torch._check(logits.dim() == 2, lambda: f"logits must be 2-D [N, K], got {logits.dim()}-D")
    dtype = accumulate_dtype(logits.dtype)
    if reduction == "none":
        return logits.new_empty_strided(logits.shape, output_strides(logits), dtype=dtype)
    return logits.new_empty((), dtype=dtype)


def fake_grad(logits: torch.Tensor) -> torch.Tensor:
    """The backward's output (the gradient w.r.t. logits), without computing it."""
    return logits.new_empty_strided(logits.shape, output_strides(logits))


def check_labels_shape(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """The fake kernels' check of integer labels [N] (the op's own checks run in C++)."""
    torch._check(labels.dim() == 1, lambda: f"labels must be 1-D [N], got {labels.dim()}-D")
    torch._check(
        labels.shape[0] == logits.shape[0], lambda: "labels must have one entry per row of logits"
    )
