"""Front door of the compiled sigmoid focal loss op,
``torch.ops.retinanet_plugin.sigmoid_focal_loss``.

The C++/CUDA kernels (``retinanet_plugin/csrc``) take integer labels directly, so no one-hot target
is built, and keep no [N, K] intermediate for the backward pass (it recomputes from the logits).
This module registers the op's fake kernel (for ``torch.compile`` / ``torch.export``) and its
autograd formula with ``torch.library``.
"""

from typing import Optional, Union

import torch

from .compiled_ops import (
    check_labels_shape,
    fake_grad,
    fake_loss,
    op_available,
    require_op,
    split_normalizer,
)


def focal_loss_op_available() -> bool:
    """Whether the compiled op (``retinanet_plugin._C``) could be loaded."""
    return op_available()


def sigmoid_focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float = 2.0,
    alpha: float = 0.25,
    reduction: str = "sum",
    normalizer: Optional[Union[torch.Tensor, float]] = None,
) -> torch.Tensor:
    """Sigmoid focal loss from integer labels, same semantics as
    :func:`sigmoid_focal_loss_reference`.

    Args:
        logits: [N, K] class logits, float32/float16/bfloat16 (or float64), any strides.
        labels: [N] int64 or int32: 0..K-1 the positive class, K background, -1 ignored (no loss,
            zero gradient). A label outside [-1, K] raises (on CUDA: a device-side assertion).
        gamma: focusing parameter, >= 0 (0 gives the binary cross-entropy).
        alpha: weight of the positives (negatives get 1 - alpha); alpha < 0 disables the weighting.
        reduction: "none", "sum", or "mean" (over the non-ignored elements: sum / (rows with label
            >= 0 * K)).
        normalizer: optional 0-dim tensor (stays on the device: no host synchronisation) or float;
            the result is divided by it inside the kernel. No gradient flows to it. A float or a CPU
            tensor becomes a constant of the CUDA launch: a CUDA graph captured with it replays that
            value; a CUDA tensor is read anew.
    Returns:
        "none": [N, K] float32 (float64 for float64 logits), zero on ignored rows; "sum"/"mean": a
        0-dim tensor of that dtype. The gradient w.r.t. ``logits`` has the logits' dtype. [N, K]
        results are contiguous, or column-major for column-major CUDA logits
        (``compiled_ops.output_strides``).
    """
    require_op(logits, reduction)
    normalizer, divisor = split_normalizer(normalizer)
    return torch.ops.retinanet_plugin.sigmoid_focal_loss(
        logits, labels, normalizer, float(gamma), float(alpha), reduction, divisor
    )


def _fake_forward(logits, labels, normalizer, gamma, alpha, reduction, divisor):
    check_labels_shape(logits, labels)
    return fake_loss(logits, reduction)


def _fake_backward(grad, logits, labels, normalizer, gamma, alpha, reduction, divisor):
    return fake_grad(logits)


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
    # labels: integer; normalizer: treated as a constant; gamma, alpha, reduction, divisor: not
    # tensors.
    return grad_logits, None, None, None, None, None, None


if op_available():
    torch.library.register_fake("retinanet_plugin::sigmoid_focal_loss")(_fake_forward)
    torch.library.register_fake("retinanet_plugin::sigmoid_focal_loss_backward")(_fake_backward)
    torch.library.register_autograd(
        "retinanet_plugin::sigmoid_focal_loss", _backward, setup_context=_setup_context
    )
