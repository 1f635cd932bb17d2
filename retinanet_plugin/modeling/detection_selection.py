"""Inference post-processing: from dense per-level predictions to at most ``max_detections_per_image`` boxes."""
from typing import List, Tuple

import torch
from torch import Tensor

from detectron2.layers import batched_nms, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances


def select_detections(
    anchors: List[Boxes],
    logits: List[Tensor],
    deltas: List[Tensor],
    image_sizes: List[Tuple[int, int]],
    *,
    box2box_transform: Box2BoxTransform,
    score_thresh: float,
    topk_candidates: int,
    nms_thresh: float,
    max_detections_per_image: int,
) -> List[Instances]:
    """Per level, the top-k (anchor, class) pairs above the score threshold, for all images at once;
    then per image, class-aware NMS over all levels and the best ``max_detections_per_image``.

    Args:
        anchors: per level, Boxes of [R_i, 4] (XYXY pixels).
        logits, deltas: per level, [N, R_i, K] class logits and [N, R_i, 4] box deltas.
        image_sizes: N (height, width) of the padded-batch images, for the returned ``Instances``.
    Returns:
        N ``Instances`` with ``pred_boxes`` (XYXY pixels), ``scores`` (sigmoid probabilities), ``pred_classes``.
    """
    num_images = len(image_sizes)
    per_image = [([], [], []) for _ in range(num_images)]
    for anchors_l, logits_l, deltas_l in zip(anchors, logits, deltas):
        num_classes = logits_l.shape[-1]
        scores = logits_l.detach().flatten(1).sigmoid()  # [N, R_i * K]
        k = min(topk_candidates, scores.shape[1])
        top_scores, top_idx = scores.topk(k, dim=1)  # sorted, best first
        anchor_idx = torch.div(top_idx, num_classes, rounding_mode="floor")
        classes = top_idx % num_classes
        top_deltas = deltas_l.detach().gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
        boxes = box2box_transform.apply_deltas(
            top_deltas.reshape(-1, 4), anchors_l.tensor[anchor_idx.reshape(-1)]
        ).view(num_images, k, 4)
        keep = top_scores > score_thresh
        for i in range(num_images):
            per_image[i][0].append(boxes[i][keep[i]])
            per_image[i][1].append(top_scores[i][keep[i]])
            per_image[i][2].append(classes[i][keep[i]])
    results = []
    for (boxes, scores, classes), image_size in zip(per_image, image_sizes):
        boxes, scores, classes = cat(boxes), cat(scores), cat(classes)
        keep = batched_nms(boxes, scores, classes, nms_thresh)[:max_detections_per_image]
        results.append(Instances(image_size, pred_boxes=Boxes(boxes[keep]), scores=scores[keep], pred_classes=classes[keep]))
    return results
