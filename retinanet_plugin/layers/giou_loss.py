"""Generalized IoU loss (Rezatofighi et al., 2019) and the IoU of aligned box pairs, elementwise,
without host syncs."""

import torch
from torch import Tensor

from .reduction import check_reduction


def giou_loss(
    pred_boxes: Tensor, target_boxes: Tensor, reduction: str = "none", eps: float = 1e-7
) -> Tensor:
    """1 - GIoU of each pair of boxes.

    Same value as ``fvcore.nn.giou_loss``, but with no check on the device (fvcore asserts x2 >= x1
    and indexes with a boolean mask: host synchronisations in every step); a box with x2 < x1 counts
    as empty.

    Args:
        pred_boxes, target_boxes: [..., 4] XYXY pixels, same shape.
        reduction: "none" ([...] per pair), "sum" or "mean".
    """
    check_reduction(reduction)
    iou, union = _aligned_iou_and_union(pred_boxes, target_boxes, eps)
    pred_lo, pred_hi = pred_boxes[..., :2], pred_boxes[..., 2:]
    target_lo, target_hi = target_boxes[..., :2], target_boxes[..., 2:]
    enclosing = (torch.maximum(pred_hi, target_hi) - torch.minimum(pred_lo, target_lo)).prod(dim=-1)
    loss = 1 - (iou - (enclosing - union) / (enclosing + eps))
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    return loss


def aligned_box_iou(boxes_a: Tensor, boxes_b: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU [...] of each pair ``boxes_a[i]``, ``boxes_b[i]`` ([..., 4] XYXY pixels, same shape), in
    [0, 1]."""
    return _aligned_iou_and_union(boxes_a, boxes_b, eps)[0]


def _aligned_iou_and_union(boxes_a: Tensor, boxes_b: Tensor, eps: float):
    overlap = (
        torch.minimum(boxes_a[..., 2:], boxes_b[..., 2:])
        - torch.maximum(boxes_a[..., :2], boxes_b[..., :2])
    ).clamp(min=0)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = (
        (boxes_a[..., 2:] - boxes_a[..., :2]).prod(dim=-1)
        + (boxes_b[..., 2:] - boxes_b[..., :2]).prod(dim=-1)
        - intersection
    )
    return intersection / (union + eps), union
