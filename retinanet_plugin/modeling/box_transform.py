"""Detectron2's anchor-box encoding without its device-side validity check."""

from typing import Sequence

import torch
from torch import Tensor


def encode_box_targets(src_boxes: Tensor, target_boxes: Tensor, weights: Sequence[float]) -> Tensor:
    """Deltas [R, 4] (dx, dy, dw, dh, scaled by ``weights``) that take ``src_boxes`` [R, 4] to
    ``target_boxes`` [R, 4], both XYXY pixels: ``Box2BoxTransform.get_deltas`` without its
    ``src_widths > 0`` assert, which reads a GPU value (a host synchronisation in every training
    step). The plugin's sources are its anchors, whose sizes the anchor generator checks once, when
    it is built."""
    src_wh = src_boxes[:, 2:] - src_boxes[:, :2]
    src_centre = src_boxes[:, :2] + 0.5 * src_wh
    target_wh = target_boxes[:, 2:] - target_boxes[:, :2]
    target_centre = target_boxes[:, :2] + 0.5 * target_wh
    wx, wy, ww, wh = weights
    centre_weights = src_boxes.new_tensor([wx, wy])
    size_weights = src_boxes.new_tensor([ww, wh])
    return torch.cat(
        [
            centre_weights * (target_centre - src_centre) / src_wh,
            size_weights * torch.log(target_wh / src_wh),
        ],
        dim=1,
    )
