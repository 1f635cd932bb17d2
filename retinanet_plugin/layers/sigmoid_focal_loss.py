"""Front door of the compiled sigmoid focal loss op, ``torch.ops.retinanet_plugin.sigmoid_focal_loss``.

The C++/CUDA kernels (``retinanet_plugin/csrc``) take integer labels directly, so no one-hot target is built,
and keep no [N, K] intermediate for the backward pass (it recomputes from the logits). This module registers
the op's fake kernel (for ``torch.compile`` / ``torch.export``) and its autograd formula with ``torch.library``.
"""
from typing import Optional, Union

import torch

from .focal_loss_reference import REDUCTIONS

try:
    from .. import _C  # noqa: F401  (the import registers the torch.ops.retinanet_plugin ops)

    _LOAD_ERROR: Optional[BaseException] = None
except (ImportError, OSError) as e:  # not built, or built against another torch
    _C = None
    _LOAD_ERROR = e

_BUILT_WITH_CUDA = bool(_C is not None and _C.WITH_CUDA)
_REBUILD_HINT = "run `pip install --no-build-isolation -e .` in the retinanet_plugin folder"


def focal_loss_op_available() -> bool:
    """Whether the compiled op (``retinanet_plugin._C``) could be loaded."""
    return _C is not None


def sigmoid_focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float = 2.0,
    alpha: float = 0.25,
    reduction: str = "sum",
    normalizer: Optional[Union[torch.Tensor, float]] = None,
) -> torch.Tensor:
    """Sigmoid focal loss from integer labels, same semantics as :func:`sigmoid_focal_loss_reference`.

    Args:
        logits: [N, K] class logits, float32/float16/bfloat16 (or float64), any strides.
        labels: [N] int64 or int32: 0..K-1 the positive class, K background, -1 ignored (no loss, zero gradient).
            A label outside [-1, K] raises (on CUDA: a device-side assertion).
        gamma: focusing parameter, >= 0 (0 gives the binary cross-entropy).
        alpha: weight of the positives (negatives get 1 - alpha); alpha < 0 disables the weighting.
        reduction: "none", "sum", or "mean" (over the non-ignored elements: sum / (rows with label >= 0 * K)).
        normalizer: optional 0-dim tensor (stays on the device: no host synchronisation) or float; the result
            is divided by it inside the kernel. No gradient flows to it.
    Returns:
        "none": [N, K] float32 (float64 for float64 logits), zero on ignored rows; "sum"/"mean": a 0-dim tensor
        of that dtype. The gradient w.r.t. ``logits`` has the logits' dtype.
    """
    if _C is None:
        raise RuntimeError(f"retinanet_plugin._C could not be loaded ({_LOAD_ERROR}); {_REBUILD_HINT}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if logits.is_cuda and not _BUILT_WITH_CUDA:
        raise RuntimeError(
            "retinanet_plugin._C was built without CUDA kernels and got CUDA logits: rebuild with a CUDA toolkit "
            "(`FORCE_CUDA=1 pip install --no-build-isolation -e .`, TORCH_CUDA_ARCH_LIST picks the GPUs)"
        )
    divisor = 1.0
    if normalizer is not None and not isinstance(normalizer, torch.Tensor):
        divisor, normalizer = float(normalizer), None
    return torch.ops.retinanet_plugin.sigmoid_focal_loss(
        logits, labels, normalizer, float(gamma), float(alpha), reduction, divisor
    )


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_forward(logits, labels, normalizer, gamma, alpha, reduction, divisor):
    torch._check(logits.dim() == 2, lambda: f"logits must be 2-D [N, K], got {logits.dim()}-D")
    torch._check(labels.dim() == 1, lambda: f"labels must be 1-D [N], got {labels.dim()}-D")
    torch._check(labels.shape[0] == logits.shape[0], lambda: "labels must have one entry per row of logits")
    dtype = _accumulate_dtype(logits.dtype)
    if reduction == "none":
        return logits.new_empty(logits.shape, dtype=dtype)
    return logits.new_empty((), dtype=dtype)


def _fake_backward(grad, logits, labels, normalizer, gamma, alpha, reduction, divisor):
    return logits.new_empty(logits.shape)


def _setup_context(ctx, inputs, output):
    logits, labels, normalizer, gamma, alpha, reduction, divisor = inputs
    ctx.save_for_backward(logits, labels, normalizer)  # nothing of size [N, K] besides the logits
    ctx.loss_args = (gamma, alpha, reduction, divisor)


def _backward(ctx, grad):
    logits, labels, normalizer = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = torch.ops.retinanet_plugin.sigmoid_focal_loss_backward(
            grad, logits, labels, normalizer, *ctx.loss_args
        )
    # labels: integer; normalizer: treated as a constant; gamma, alpha, reduction, divisor: not tensors.
    return grad_logits, None, None, None, None, None, None


if _C is not None:
    torch.library.register_fake("retinanet_plugin::sigmoid_focal_loss")(_fake_forward)
    torch.library.register_fake("retinanet_plugin::sigmoid_focal_loss_backward")(_fake_backward)
    torch.library.register_autograd(
        "retinanet_plugin::sigmoid_focal_loss", _backward, setup_context=_setup_context
    )
