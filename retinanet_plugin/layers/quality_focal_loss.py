"""Front door of the compiled quality focal loss op,
``torch.ops.retinanet_plugin.quality_focal_loss``.

The quality focal loss (Generalized Focal Loss, Li et al. 2020) replaces the one-hot target of the
sigmoid focal loss by a soft one: ``quality[i]`` in [0, 1] (e.g. the IoU of anchor i's predicted box
with its ground truth) on the labelled class, 0 elsewhere, and the modulating factor by ``|target -
sigmoid(x)|^beta``. Its kernels share everything but the per-element math with the sigmoid focal
loss op (``retinanet_plugin/csrc``): integer labels, any strides, fp32 accumulation, an in-kernel
normaliser, a backward that recomputes from the logits. This module registers the op's fake kernel
(for ``torch.compile`` / ``torch.export``) and its autograd formula.
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
from .quality_focal_loss_reference import check_quality_is_target


def quality_focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    quality: torch.Tensor,
    beta: float = 2.0,
    reduction: str = "sum",
    normalizer: Optional[Union[torch.Tensor, float]] = None,
) -> torch.Tensor:
    """Quality focal loss from integer labels and per-row soft targets, same semantics as
    :func:`quality_focal_loss_reference`.

    For element (i, c), with y = quality[i] if c == labels[i] else 0 and s = sigmoid(logits[i, c]):
    ``loss = |y - s|^beta * BCE(logits[i, c], y)``.

    Args:
        logits: [N, K] class logits, float32/float16/bfloat16 (or float64), any strides.
        labels: [N] int64 or int32: 0..K-1 the row's class, K background (target 0 on every class),
            -1 ignored (no loss, zero gradient). A label outside [-1, K] raises (on CUDA: a
            device-side assertion).
        quality: [N] floating point target of each labelled row, in [0, 1]; not read on
            background/ignored rows. A value outside [0, 1] (or NaN) on a labelled row raises on the
            CPU and trips a device-side assertion on CUDA (no host synchronisation). It is a target:
            no gradient flows to it, and a ``quality`` that requires grad is refused (pass
            ``quality.detach()``).
        beta: exponent of ``|y - s|``, finite and >= 0 (2 in the paper). Where s == y the gradient
            is 0 (for beta < 1 the derivative is infinite there; 0 is the subgradient used).
        reduction, normalizer: as for :func:`sigmoid_focal_loss` ("mean" divides by the non-ignored
            rows times K; the normalizer is a 0-dim tensor kept on the device, or a float).
    Returns:
        "none": [N, K] float32 (float64 for float64 logits), zero on ignored rows; "sum"/"mean": a
        0-dim tensor of that dtype. The gradient w.r.t. ``logits`` has the logits' dtype.
    """
    require_op(logits, reduction)
    check_quality_is_target(quality)
    normalizer, divisor = split_normalizer(normalizer)
    return torch.ops.retinanet_plugin.quality_focal_loss(
        logits, labels, quality, normalizer, float(beta), reduction, divisor
    )


def _fake_forward(logits, labels, quality, normalizer, beta, reduction, divisor):
    torch._check(quality.dim() == 1, lambda: f"quality must be 1-D [N], got {quality.dim()}-D")
    torch._check(
        quality.shape[0] == logits.shape[0], lambda: "quality must have one entry per row of logits"
    )
    check_labels_shape(logits, labels)
    return fake_loss(logits, reduction)


def _fake_backward(grad, logits, labels, quality, normalizer, beta, reduction, divisor):
    return fake_grad(logits)


def _setup_context(ctx, inputs, output):
    # logits, labels, quality, normalizer: nothing [N, K] besides the logits
    ctx.save_for_backward(*inputs[:4])
    ctx.constants = inputs[4:]  # beta, reduction, divisor


def _backward(ctx, grad):
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = torch.ops.retinanet_plugin.quality_focal_loss_backward(
            grad, *ctx.saved_tensors, *ctx.constants
        )
    # labels: integer; quality: a target; normalizer: treated as a constant; beta, reduction,
    # divisor: not tensors.
    return (grad_logits,) + (None,) * 6


if op_available():
    torch.library.register_fake("retinanet_plugin::quality_focal_loss")(_fake_forward)
    torch.library.register_fake("retinanet_plugin::quality_focal_loss_backward")(_fake_backward)
    torch.library.register_autograd(
        "retinanet_plugin::quality_focal_loss", _backward, setup_context=_setup_context
    )
