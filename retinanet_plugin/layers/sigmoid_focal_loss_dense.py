"""Front door of the compiled sigmoid focal loss of float targets,
``torch.ops.retinanet_plugin.sigmoid_focal_loss_dense``: a drop-in replacement for fvcore's and
torchvision's ``sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction)``.

Detectron2's FCOS and much user code call fvcore's composite loss with one-hot, multi-label or soft
targets; it keeps about seven [N, K] intermediates for autograd. The op computes the same loss in
one pass over the logits and the targets, keeps nothing of size [N, K] besides its inputs, and
recomputes in the backward (math in ``csrc/sigmoid_focal_loss_dense.h``). This module registers its
fake kernel and its autograd formula.
"""

from typing import Optional, Union

import torch

from .compiled_ops import fake_grad, fake_loss, op_available, require_op, split_normalizer


def sigmoid_focal_loss_dense(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    normalizer: Optional[Union[torch.Tensor, float]] = None,
) -> torch.Tensor:
    """Sigmoid focal loss of float targets, with fvcore's and torchvision's signature and semantics.

    ``loss = alpha_t * (1 - p_t)^gamma * BCE(inputs, targets)`` elementwise, with p =
    sigmoid(inputs), ``p_t = p t + (1 - p)(1 - t)`` and ``alpha_t = alpha t + (1 - alpha)(1 - t)``.

    Args:
        inputs: [N, K] logits, float32/float16/bfloat16 (or float64), any strides. (Other shapes:
            flatten to [-1, K] first; the loss is elementwise.)
        targets: [N, K] floating point targets in [0, 1]: one-hot, multi-label or soft. A target
            outside [0, 1] or NaN raises on the CPU and trips a device-side assertion on CUDA. They
            are targets: no gradient flows to them, and targets that require grad are refused (pass
            ``targets.detach()``).
        alpha: weight of the positive term in (0, 1), negatives get 1 - alpha; alpha < 0 disables
            the weighting (fvcore's default is -1, torchvision's and this function's 0.25).
        gamma: focusing exponent, finite and >= 0 (0 gives the alpha-weighted binary cross-entropy).
        reduction: "none", "sum", or "mean" (over all N * K elements, as fvcore and torchvision).
        normalizer: optional 0-dim tensor (kept on the device) or float the result is divided by
            inside the kernel.
    Returns:
        "none": [N, K] float32 (float64 for float64 inputs); "sum"/"mean": a 0-dim tensor of that
        dtype. The gradient w.r.t. ``inputs`` has the inputs' dtype.
    """
    require_op(inputs, reduction)
    if targets.requires_grad:
        raise ValueError(
            "sigmoid_focal_loss_dense: targets require grad, but the op gives no gradient to its "
            "targets; "
            "pass targets.detach()"
        )
    normalizer, divisor = split_normalizer(normalizer)
    return torch.ops.retinanet_plugin.sigmoid_focal_loss_dense(
        inputs, targets, normalizer, float(gamma), float(alpha), reduction, divisor
    )


def _fake_forward(logits, targets, normalizer, gamma, alpha, reduction, divisor):
    torch._check(
        targets.shape == logits.shape, lambda: "targets must have the logits' shape [N, K]"
    )
    return fake_loss(logits, reduction)


def _fake_backward(grad, logits, targets, normalizer, gamma, alpha, reduction, divisor):
    return fake_grad(logits)


def _setup_context(ctx, inputs, output):
    # logits, targets, normalizer: the inputs themselves, nothing new
    ctx.save_for_backward(*inputs[:3])
    ctx.constants = inputs[3:]  # gamma, alpha, reduction, divisor


def _backward(ctx, grad):
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = torch.ops.retinanet_plugin.sigmoid_focal_loss_dense_backward(
            grad, *ctx.saved_tensors, *ctx.constants
        )
    # targets: no gradient (refused when they require one); normalizer: a constant; the rest: not
    # tensors.
    return (grad_logits,) + (None,) * 6


if op_available():
    torch.library.register_fake("retinanet_plugin::sigmoid_focal_loss_dense")(_fake_forward)
    torch.library.register_fake("retinanet_plugin::sigmoid_focal_loss_dense_backward")(
        _fake_backward
    )
    torch.library.register_autograd(
        "retinanet_plugin::sigmoid_focal_loss_dense", _backward, setup_context=_setup_context
    )
