"""Inference post-processing: from dense per-level predictions to at most
``max_detections_per_image`` boxes.

Two forms select the same candidates (per level, the best ``topk_candidates`` (anchor, class) pairs
above the score threshold) and decode them with the same ``apply_deltas``:

* :func:`select_detections` (eager): threshold first, per level for all images at once and on the
  logits (only pairs near the threshold get a sigmoid), top-k of what passed per image (cheap: few
  pairs pass), then per image class-aware NMS with Detectron2's ``batched_nms``, giving a
  variable-length ``Instances``. It is what the model runs, and what Detectron2's RetinaNet
  computes.
* :func:`select_detections_padded` (export): all images at once, in tensors of a fixed size [N, D]
  plus a count per image, with no Python loop or branch on data, so that ``torch.jit.trace``,
  ``torch.export`` and ONNX can capture it with a dynamic batch and image size.
"""

import math
from typing import List, NamedTuple, Tuple

import torch
from torch import Tensor

from detectron2.layers import batched_nms
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from torchvision.ops import nms


class DetectionSettings(NamedTuple):
    """The test-time settings of both selections (``MODEL.RETINANET.*_TEST``,
    ``TEST.DETECTIONS_PER_IMAGE``)."""

    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms_thresh: float = 0.5
    max_detections_per_image: int = 100


def _num_candidates(num_pairs, topk_candidates: int):
    """min(topk_candidates, num_pairs), kept symbolic: a traced 0-dim tensor under
    ``torch.jit.trace``, a SymInt under ``torch.export`` (so the exported graph is right for every
    image size), a plain int in eager mode."""
    if isinstance(num_pairs, Tensor):
        return num_pairs.clamp(max=topk_candidates)
    return torch.sym_min(num_pairs, topk_candidates)


def top_candidates(
    anchors: List[Boxes],
    logits: List[Tensor],
    deltas: List[Tensor],
    *,
    box2box_transform: Box2BoxTransform,
    topk_candidates: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Per level and image, the ``topk_candidates`` best (anchor, class) pairs, decoded; levels
    concatenated.

    Args:
        anchors: per level, Boxes of [R_i, 4] (XYXY pixels).
        logits, deltas: per level, [N, R_i, K] class logits and [N, R_i, 4] box deltas.
    Returns:
        boxes [N, C, 4] (XYXY pixels), scores [N, C] (sigmoid probabilities), classes [N, C]
        (int64), where C = sum_i min(topk_candidates, R_i * K); level by level, each level's pairs
        best first.
    """
    boxes, scores, classes = [], [], []
    for anchors_l, logits_l, deltas_l in zip(anchors, logits, deltas):
        num_images, num_classes = logits_l.shape[0], logits_l.shape[-1]
        flat = logits_l.detach().flatten(1)  # [N, R_i * K]
        k = _num_candidates(flat.shape[1], topk_candidates)
        # top-k of the logits (the sigmoid is monotonic): a sigmoid for the k best pairs only
        top_logits, top_idx = flat.topk(k, dim=1)  # sorted, best first
        top_scores = top_logits.sigmoid()
        anchor_idx = torch.div(top_idx, num_classes, rounding_mode="floor")
        top_deltas = deltas_l.detach().gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
        decoded = box2box_transform.apply_deltas(
            top_deltas.reshape(-1, 4), anchors_l.tensor[anchor_idx.reshape(-1)]
        )
        boxes.append(decoded.view(num_images, -1, 4))
        scores.append(top_scores)
        classes.append(top_idx % num_classes)
    return torch.cat(boxes, dim=1), torch.cat(scores, dim=1), torch.cat(classes, dim=1)


def select_detections(
    anchors: List[Boxes],
    logits: List[Tensor],
    deltas: List[Tensor],
    image_sizes: List[Tuple[int, int]],
    box2box_transform: Box2BoxTransform,
    settings: DetectionSettings,
) -> List[Instances]:
    """Per image and level, the top-k (anchor, class) pairs above the score threshold; then per
    image, class-aware NMS over all levels and the best ``settings.max_detections_per_image``.

    Args:
        anchors: per level, Boxes of [R_i, 4] (XYXY pixels).
        logits, deltas: per level, [N, R_i, K] class logits and [N, R_i, 4] box deltas.
        image_sizes: N (height, width) of the padded-batch images, for the returned ``Instances``.
    Returns:
        N ``Instances`` with ``pred_boxes`` (XYXY pixels), ``scores`` (sigmoid probabilities),
        ``pred_classes``.
    """
    boxes, scores, classes, image_idx = _candidates(
        anchors, logits, deltas, len(image_sizes), box2box_transform, settings
    )
    results: List[Instances] = []
    for i, image_size in enumerate(image_sizes):
        rows = (image_idx == i).nonzero().squeeze(1)  # level by level, as Detectron2 orders them
        image_boxes, image_scores, image_classes = boxes[rows], scores[rows], classes[rows]
        keep = batched_nms(image_boxes, image_scores, image_classes, settings.nms_thresh)
        keep = keep[: settings.max_detections_per_image]
        # fields set one by one: the form TorchScript's Instances takes
        instances = Instances(image_size)
        instances.pred_boxes = Boxes(image_boxes[keep])
        instances.scores = image_scores[keep]
        instances.pred_classes = image_classes[keep]
        results.append(instances)
    return results


def candidate_logit_bound(score_thresh: float, dtype: torch.dtype) -> float:
    """A logit below which no sigmoid of ``dtype`` exceeds ``score_thresh``: logit(t * (1 - slack))
    with a relative slack far above the sigmoid's rounding (1e-4 in float32/64, 0.02 in 16-bit
    floats); -inf for t <= 0 (every pair), +inf for t >= 1 (none)."""
    if score_thresh >= 1.0:
        return math.inf
    if score_thresh <= 0.0:
        return -math.inf
    slack = 1e-4 if dtype == torch.float32 or dtype == torch.float64 else 0.02
    low = score_thresh * (1.0 - slack)
    return math.log(low / (1.0 - low))


def _candidates(
    anchors: List[Boxes],
    logits: List[Tensor],
    deltas: List[Tensor],
    num_images: int,
    box2box_transform: Box2BoxTransform,
    settings: DetectionSettings,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every image's candidates: per level and image the best ``settings.topk_candidates`` (anchor,
    class) pairs whose score exceeds ``settings.score_thresh``, decoded.

    One comparison per level covers all images, on the logits (the sigmoid is monotonic), so that
    only the pairs near or above the threshold get a sigmoid; the exact test ``sigmoid > thresh``
    then runs on those, and the top-k on each image's survivors in their flat order: the pairs and
    order of Detectron2's per-image loop, which takes the sigmoid of every pair in float32. The
    scores here are the float64 sigmoid rounded to the logits' dtype, within one unit in the last
    place of Detectron2's float32 ones, and the same wherever a pair sits in the tensor.

    Returns:
        boxes [C, 4] (XYXY pixels), scores [C], classes [C] (int64), image_idx [C] (int64); level
        by level, within a level image by image, each image's pairs best first.
    """
    boxes: List[Tensor] = []
    scores: List[Tensor] = []
    classes: List[Tensor] = []
    images: List[Tensor] = []
    for anchors_l, logits_l, deltas_l in zip(anchors, logits, deltas):
        num_classes = logits_l.shape[-1]
        flat = logits_l.detach().flatten(1)  # [N, R_i * K]
        bound = candidate_logit_bound(settings.score_thresh, flat.dtype)
        near = (flat >= bound).nonzero()  # [M, 2] (image, pair), image-major; -inf too at t < 0
        # a float32 sigmoid's last bit depends on where the pair sits (SIMD lanes or scalar tail)
        near_scores = flat[near[:, 0], near[:, 1]].double().sigmoid().to(flat.dtype)
        above = (near_scores > settings.score_thresh).nonzero().squeeze(1)
        image_l, pair_l, score_l = near[above, 0], near[above, 1], near_scores[above]
        counts: List[int] = torch.bincount(image_l, minlength=num_images).tolist()
        best: List[Tensor] = []
        start = 0
        for count in counts:  # each image's survivors, a contiguous run
            order = score_l[start : start + count].topk(min(settings.topk_candidates, count))[1]
            best.append(order + start)
            start += count
        rows = torch.cat(best)
        pair_idx, image = pair_l[rows], image_l[rows]
        anchor_idx = torch.div(pair_idx, num_classes, rounding_mode="floor")
        boxes.append(
            box2box_transform.apply_deltas(
                deltas_l[image, anchor_idx].detach(), anchors_l.tensor[anchor_idx]
            )
        )
        scores.append(score_l[rows])
        classes.append(pair_idx % num_classes)
        images.append(image)
    return torch.cat(boxes), torch.cat(scores), torch.cat(classes), torch.cat(images)


def nms_per_image_and_class(
    boxes: Tensor, scores: Tensor, image_idx: Tensor, classes: Tensor, nms_thresh: float
) -> Tensor:
    """Greedy NMS that never lets a box suppress one of another image or class, in a single ``nms``
    call.

    Each (image, class) group is moved to its own tile of the plane (images along x, classes along
    y), so that boxes of different groups never overlap. IoUs are computed on the moved coordinates:
    equal to the unmoved ones up to float32 rounding at the tiles' magnitude (max(N, K) times the
    boxes' extent), the same kind of rounding as torchvision's ``batched_nms`` coordinate trick,
    which offsets by class along both axes.

    Args:
        boxes: [M, 4] XYXY; scores, image_idx, classes: [M].
    Returns:
        indices (int64) of the kept boxes, by decreasing score.
    """
    low = boxes.min()
    extent = boxes.max() - low + 1.0  # a tile is larger than every box
    offset_x = image_idx.to(boxes.dtype) * extent
    offset_y = classes.to(boxes.dtype) * extent
    moved = boxes - low + torch.stack([offset_x, offset_y, offset_x, offset_y], dim=1)
    return nms(moved, scores, nms_thresh)


def select_detections_padded(
    anchors: List[Boxes],
    logits: List[Tensor],
    deltas: List[Tensor],
    box2box_transform: Box2BoxTransform,
    settings: DetectionSettings,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`select_detections` for all images at once, in fixed-size tensors (for export).

    The candidates are those of :func:`select_detections`; class-aware NMS runs per image and class
    through :func:`nms_per_image_and_class`, so the two agree except where an IoU lies within
    float32 rounding of ``settings.nms_thresh`` (none in the tests). Detections are compacted to the
    front of each row, best first.

    Returns:
        boxes [N, D, 4] (XYXY pixels), scores [N, D], classes [N, D] (int64), num_detections [N]
        (int64), with D = ``settings.max_detections_per_image``; row i holds num_detections[i]
        detections, then padding (boxes 0, score 0, class -1).
    """
    boxes, scores, classes = top_candidates(
        anchors,
        logits,
        deltas,
        box2box_transform=box2box_transform,
        topk_candidates=settings.topk_candidates,
    )
    num_images = scores.shape[0]
    image_idx = torch.arange(num_images, device=scores.device).unsqueeze(1).expand_as(scores)
    # Only pairs above the threshold reach NMS (its cost grows with the square of their number).
    above = (scores > settings.score_thresh).flatten().nonzero().squeeze(1)
    boxes = boxes.reshape(-1, 4)[above]
    scores = scores.flatten()[above]
    classes = classes.flatten()[above]
    image_idx = image_idx.flatten()[above]
    # Two dummy rows, of an image N of their own (so they never suppress, nor are suppressed by, a
    # real box), keep every tensor non-empty and NMS's output at >= 2 boxes, which torchvision's
    # fake nms (what torch.export traces) asserts at run time even where no pair passes the
    # threshold. They sort last and fill the padding.
    boxes = torch.cat([boxes, boxes.new_zeros(2, 4)])
    scores = torch.cat([scores, scores.new_full((2,), -1.0)])
    classes = torch.cat([classes, torch.arange(2, dtype=classes.dtype, device=classes.device)])
    image_idx = torch.cat([image_idx, image_idx.new_full((2,), num_images)])
    # by decreasing score
    kept = nms_per_image_and_class(boxes, scores, image_idx, classes, settings.nms_thresh)
    source, filled, num_detections = _pack_per_image(
        kept, image_idx, num_images, settings.max_detections_per_image
    )
    out_boxes = torch.where(filled.unsqueeze(2), boxes[source], 0.0)
    out_scores = torch.where(filled, scores[source], 0.0)
    out_classes = torch.where(filled, classes[source], -1)
    return out_boxes, out_scores, out_classes, num_detections


def _pack_per_image(
    kept: Tensor, image_idx: Tensor, num_images: int, max_detections_per_image: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """Where each image's kept candidates go in the [N, D] output (D = max_detections_per_image).

    Args:
        kept: [M] indices of the kept candidates, by decreasing score, the two dummy rows (image
            ``num_images``) among them.
        image_idx: the image of every candidate.
    Returns:
        source [N, D] (the candidate of each slot; the last dummy row where not filled), filled
        [N, D] bool, num_detections [N].
    """
    # Group the kept boxes by image, keeping the score order inside each image: sort by a unique
    # key.
    kept_image = image_idx[kept]
    position = torch.arange(kept.shape[0], device=kept.device)
    order = torch.sort(kept_image * (kept.shape[0] + 1) + position).indices
    kept, kept_image = kept[order], kept_image[order]
    # Per image: how many boxes it kept and where its run starts; the dummies (image N) sort last.
    kept_per_image = torch.zeros(num_images + 1, dtype=torch.int64, device=kept.device)
    kept_per_image = kept_per_image.scatter_add(0, kept_image, torch.ones_like(kept_image))
    starts = kept_per_image.cumsum(0) - kept_per_image
    num_detections = kept_per_image[:num_images].clamp(max=max_detections_per_image)
    slot = torch.arange(max_detections_per_image, device=kept.device).unsqueeze(0)  # [1, D]
    filled = slot < num_detections.unsqueeze(1)  # [N, D]
    dummy = kept_per_image.sum() - 1  # the last dummy row, last in the grouped order
    source = torch.where(filled, starts[:num_images].unsqueeze(1) + slot, dummy)
    return kept[source], filled, num_detections
