"""The exported model's output: fixed-size detection tensors plus a count per image.

``boxes`` [N, D, 4] (XYXY pixels of the output size), ``scores`` [N, D], ``classes`` [N, D] (int64)
and ``num_detections`` [N] (int64): row i holds its num_detections[i] detections first, best first,
then padding (boxes 0, score 0, class -1). D is ``TEST.DETECTIONS_PER_IMAGE``.
"""

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.structures import Boxes, Instances

PaddedDetections = Tuple[Tensor, Tensor, Tensor, Tensor]
OUTPUT_NAMES = ("boxes", "scores", "classes", "num_detections")


def _compact(keep: Tensor, boxes: Tensor, scores: Tensor, classes: Tensor) -> PaddedDetections:
    """Move the rows' kept entries ([N, D] mask) to the front, in their order, and pad the rest."""
    slot = torch.arange(keep.shape[1], device=keep.device).unsqueeze(0)
    order = torch.sort(
        (~keep).to(torch.int64) * keep.shape[1] + slot, dim=1
    ).indices  # unique keys: no ties
    num_detections = keep.sum(dim=1)
    filled = slot < num_detections.unsqueeze(1)
    boxes = torch.where(
        filled.unsqueeze(2), boxes.gather(1, order.unsqueeze(2).expand_as(boxes)), 0.0
    )
    scores = torch.where(filled, scores.gather(1, order), 0.0)
    classes = torch.where(filled, classes.gather(1, order), -1)
    return boxes, scores, classes, num_detections


def resize_padded_detections(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    num_detections: Tensor,
    image_sizes: Tensor,
    output_sizes: Tensor,
) -> PaddedDetections:
    """Detectron2's ``detector_postprocess`` on padded detections: boxes scaled from the input size
    to the output size, clipped to it, and the ones left empty dropped.

    Args:
        boxes, scores, classes, num_detections: padded detections in the input image's pixels.
        image_sizes, output_sizes: [N, 2] int64 (height, width) of the image the model saw and of
            the output.
    """
    # Divided in float64 and rounded once, as detector_postprocess's Python float division is.
    # [N, 2] (y, x)
    scale = (output_sizes.to(torch.float64) / image_sizes.to(torch.float64)).to(boxes.dtype)
    boxes = boxes * scale[:, [1, 0, 1, 0]].unsqueeze(1)
    limits = output_sizes.to(boxes.dtype)[:, [1, 0, 1, 0]].unsqueeze(1)  # (w, h, w, h)
    boxes = torch.minimum(boxes.clamp(min=0.0), limits)
    slot = torch.arange(boxes.shape[1], device=boxes.device).unsqueeze(0)
    nonempty = (boxes[..., 2] - boxes[..., 0] > 0) & (boxes[..., 3] - boxes[..., 1] > 0)
    return _compact((slot < num_detections.unsqueeze(1)) & nonempty, boxes, scores, classes)


def padded_detections_to_instances(detections: Sequence[Tensor], output_sizes) -> List[Instances]:
    """Per image, an ``Instances`` (``pred_boxes``, ``scores``, ``pred_classes``) of its
    num_detections rows.

    Args:
        detections: (boxes, scores, classes, num_detections) as tensors or numpy arrays (e.g. from
            ONNX Runtime).
        output_sizes: [N, 2] (height, width) of each output image.
    """
    boxes, scores, classes, num_detections = (torch.as_tensor(x) for x in detections)
    results = []
    for i, (height, width) in enumerate(torch.as_tensor(output_sizes).tolist()):
        n = int(num_detections[i])
        results.append(
            Instances(
                (int(height), int(width)),
                pred_boxes=Boxes(boxes[i, :n]),
                scores=scores[i, :n],
                pred_classes=classes[i, :n].to(torch.int64),
            )
        )
    return results
