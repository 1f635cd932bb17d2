"""The composite PyTorch sigmoid focal loss, kept as the reference and as a fallback for the op."""

from typing import Callable, Optional, Union

import torch
from fvcore.nn import sigmoid_focal_loss

from .reduction import check_reduction, reduce_label_loss


def sigmoid_focal_loss_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float = 2.0,
    alpha: float = 0.25,
    reduction: str = "sum",
    normalizer: Optional[Union[torch.Tensor, float]] = None,
    composite: Callable[..., torch.Tensor] = sigmoid_focal_loss,
) -> torch.Tensor:
    """Sigmoid focal loss from integer labels, computed the way Detectron2 does (one-hot + fvcore).

    Args:
        logits: [N, K] class logits (any float dtype; computed in fp32 or fp64).
        labels: [N] integers: 0..K-1 the positive class, K background, -1 ignored (no loss).
        gamma, alpha: focal loss parameters (alpha < 0 disables the alpha weighting).
        reduction: "none" ([N, K], zero on ignored rows), "sum", or "mean" (over the non-ignored
            elements).
        normalizer: optional scalar the result is divided by (e.g. the number of foreground
            anchors).
        composite: the elementwise loss on one-hot targets, ``f(inputs, targets, alpha, gamma,
            "none")``: fvcore's (Detectron2's choice), or e.g.
            ``torchvision.ops.sigmoid_focal_loss``.
    Returns:
        The loss, in the dtype fvcore returns (fp32 for fp16/bf16/fp32 inputs, fp64 for fp64).
    """
    check_reduction(reduction)
    num_classes = logits.shape[-1]
    valid = labels >= 0
    targets = torch.nn.functional.one_hot(labels.clamp(min=0), num_classes + 1)[:, :num_classes]
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = composite(logits.to(compute_dtype), targets.to(compute_dtype), alpha, gamma, "none")
    loss = loss * valid.unsqueeze(1).to(compute_dtype)
    return reduce_label_loss(loss, labels, reduction, normalizer)
