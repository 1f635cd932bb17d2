"""The composite PyTorch quality focal loss (Generalized Focal Loss, Li et al. 2020), kept as the
reference and as a fallback for the op (``retinanet_plugin.layers.quality_focal_loss``)."""

from typing import Optional, Union

import torch
import torch.nn.functional as F

from .reduction import check_reduction, reduce_label_loss


def check_quality_is_target(quality: torch.Tensor) -> None:
    """Raises when ``quality`` requires grad: it is a target (e.g. a detached IoU), and no gradient
    flows to it."""
    if quality.requires_grad:
        raise ValueError(
            "quality_focal_loss: quality requires grad, but it is a target and gets no gradient; "
            "pass "
            "quality.detach() (e.g. the IoU of the detached predicted box with its ground truth)"
        )


def quality_focal_loss_elementwise(
    logits: torch.Tensor, targets: torch.Tensor, beta: float
) -> torch.Tensor:
    """``|targets - sigmoid(logits)|^beta * BCE(logits, targets)`` elementwise, for soft targets in
    [0, 1]."""
    modulating = (logits.sigmoid() - targets).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * modulating


def quality_focal_loss_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    quality: torch.Tensor,
    beta: float = 2.0,
    reduction: str = "sum",
    normalizer: Optional[Union[torch.Tensor, float]] = None,
) -> torch.Tensor:
    """Quality focal loss from integer labels and per-row soft targets, as a composite PyTorch
    expression.

    The target of row i is ``quality[i]`` on column ``labels[i]`` and 0 elsewhere (background rows:
    0 on every column); ignored rows (label -1) give no loss.

    Args:
        logits: [N, K] class logits (any float dtype; computed in fp32, or fp64 for fp64 logits).
        labels: [N] integers: 0..K-1 the row's class, K background (target 0 everywhere), -1 ignored
            (no loss).
        quality: [N] soft target in [0, 1] of each labelled row (e.g. the IoU of its predicted box
            with its ground truth); not read on background/ignored rows. It must not require grad
            (see :func:`check_quality_is_target`).
        beta: exponent of ``|quality - sigmoid(logits)|``, >= 0 (2 in the paper).
        reduction: "none" ([N, K], zero on ignored rows), "sum", or "mean" (over the non-ignored
            elements).
        normalizer: optional scalar the result is divided by (e.g. the number of foreground
            anchors).
    """
    check_reduction(reduction)
    check_quality_is_target(quality)
    num_classes = logits.shape[-1]
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    valid = labels >= 0
    labelled = valid & (labels < num_classes)
    on_class = F.one_hot(labels.clamp(min=0), num_classes + 1)[:, :num_classes].to(compute_dtype)
    # Other rows' quality values are never read.
    row_target = torch.where(labelled, quality.to(compute_dtype), 0.0)
    targets = on_class * row_target.unsqueeze(1)
    loss = quality_focal_loss_elementwise(logits.to(compute_dtype), targets, beta)
    loss = loss * valid.unsqueeze(1).to(compute_dtype)
    return reduce_label_loss(loss, labels, reduction, normalizer)
