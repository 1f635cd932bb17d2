"""Anchor labelling by IoU with bounded memory and, on CUDA, no host synchronisation.

Detectron2's ``Matcher`` takes the whole [G, R] IoU matrix (G ground-truth boxes, R anchors: about
200k anchors at 800x1333, so 500 boxes make a 400 MB matrix plus the temporaries of
``pairwise_iou``), and labels anchors with boolean-mask assignments and ``nonzero``, which
synchronise the host with the GPU. :func:`match_anchors` gives the same result as ``Matcher`` (same
thresholds, labels and low-quality rule, read from a ``Matcher``) working on blocks of anchors of at
most ``chunk_elements`` IoU values, and with ``torch.where`` only (on the CPU, where reading a
value costs the host nothing, the low-quality rule reads which blocks to look at again).
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou

DEFAULT_CHUNK_ELEMENTS = 1 << 22  # 4M IoU values (16 MB in fp32) per block


def _anchor_blocks(num_anchors: int, num_gt: int, chunk_elements: int):
    step = max(1, chunk_elements // max(num_gt, 1))
    for start in range(0, num_anchors, step):
        yield start, min(start + step, num_anchors)


def match_anchors(
    gt_boxes: Tensor,
    anchors: Tensor,
    matcher: Matcher,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    sync_free: Optional[bool] = None,
) -> Tuple[Tensor, Tensor]:
    """Match each anchor to the ground-truth box it overlaps most, as ``matcher(pairwise_iou(gt,
    anchors))`` does.

    Args:
        gt_boxes: [G, 4] XYXY pixels, G >= 1.
        anchors: [R, 4] XYXY pixels.
        matcher: gives ``thresholds``, ``labels`` and ``allow_low_quality_matches``.
        chunk_elements: most IoU values held at once (anchors are processed in blocks of
            ``chunk_elements // G``); with several blocks, the low-quality rule needs a second look
            at the IoUs (:func:`_best_for_some_box`).
        sync_free: how that second look is taken when there are several blocks: True, every
            block's IoUs again, with no host synchronisation; False, only the (block, box) pairs
            where the box has its maximum, which the host reads first (far less work: each box has
            its maximum in one block or a few). None: True for CUDA tensors, False otherwise.
    Returns:
        matched_idxs: [R] int64, index of the best ground truth of each anchor.
        match_labels: [R] int8, the matcher's label (1 foreground, 0 background, -1 ignored by
            default).

    One deliberate difference: with the low-quality rule, a ground-truth box that overlaps no anchor
    at all (IoU 0 everywhere: degenerate, or outside the image) promotes nothing, where ``Matcher``
    would make every anchor that does not overlap it foreground.
    """
    num_gt, num_anchors = gt_boxes.shape[0], anchors.shape[0]
    if num_gt == 0:
        raise ValueError(
            "match_anchors needs at least one ground-truth box (label images without boxes as "
            "background)"
        )
    gt = Boxes(gt_boxes)
    best_iou = anchors.new_empty(num_anchors)
    matched_idxs = torch.empty(num_anchors, dtype=torch.int64, device=anchors.device)
    blocks = list(_anchor_blocks(num_anchors, num_gt, chunk_elements))
    block_maxima = []  # per block, each box's largest IoU there: [G]
    single_block_iou = None
    for start, end in blocks:
        iou = pairwise_iou(gt, Boxes(anchors[start:end]))  # [G, block]
        best_iou[start:end], matched_idxs[start:end] = iou.max(dim=0)
        if matcher.allow_low_quality_matches:
            block_maxima.append(iou.max(dim=1).values)
        if len(blocks) == 1:
            single_block_iou = iou

    match_labels = torch.ones(num_anchors, dtype=torch.int8, device=anchors.device)
    for label, low, high in zip(matcher.labels, matcher.thresholds[:-1], matcher.thresholds[1:]):
        in_range = (best_iou >= low) & (best_iou < high)
        match_labels = torch.where(
            in_range, torch.tensor(label, dtype=torch.int8, device=anchors.device), match_labels
        )

    if matcher.allow_low_quality_matches and blocks:
        if sync_free is None:
            sync_free = anchors.is_cuda
        best_for_some_gt = _best_for_some_box(
            gt, anchors, blocks, torch.stack(block_maxima), single_block_iou, sync_free
        )
        match_labels = torch.where(best_for_some_gt, torch.ones_like(match_labels), match_labels)
    return matched_idxs, match_labels


def _best_for_some_box(
    gt: Boxes,
    anchors: Tensor,
    blocks,
    block_maxima: Tensor,
    single_block_iou: Optional[Tensor],
    sync_free: bool,
) -> Tensor:
    """[R] bool: the anchors that are some box's best (ties included), which the low-quality rule
    makes foreground, as ``Matcher.set_low_quality_matches_`` does. A box whose best IoU is 0
    promotes nothing.

    ``block_maxima`` [B, G]: each box's largest IoU in each block. With one block its IoUs are
    reused; else they are recomputed, for every box in every block (``sync_free``) or only for the
    boxes whose maximum lies in the block. Each recomputed IoU is the same elementwise expression
    of the same two boxes as in the first pass, so it equals that pass's value exactly, and the
    comparison with the maximum finds the same ties."""
    best_iou_per_gt = block_maxima.max(dim=0).values
    reference = best_iou_per_gt.masked_fill(best_iou_per_gt <= 0, float("inf"))  # [G]
    if single_block_iou is not None:
        return (single_block_iou == reference[:, None]).any(dim=0)
    result = torch.zeros(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    if sync_free:
        for start, end in blocks:
            iou = pairwise_iou(gt, Boxes(anchors[start:end]))
            result[start:end] = (iou == reference[:, None]).any(dim=0)
        return result
    holds_maximum = (block_maxima == reference).tolist()  # [B][G], read by the host
    for (start, end), holds in zip(blocks, holds_maximum):
        boxes = [g for g, h in enumerate(holds) if h]
        if boxes:
            index = torch.tensor(boxes, device=anchors.device)
            iou = pairwise_iou(Boxes(gt.tensor[index]), Boxes(anchors[start:end]))
            result[start:end] = (iou == reference[index, None]).any(dim=0)
    return result


def label_image_anchors(
    anchors: Tensor,
    instances: Instances,
    num_classes: int,
    matcher: Matcher,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Tuple[Tensor, Tensor]:
    """One image's anchor labels [R] (0..K-1 foreground class, K background, -1 ignored) and matched
    boxes [R, 4] (the ground truth on foreground anchors, the anchor itself elsewhere), from its
    ``gt_boxes``, ``gt_classes`` and optional ``gt_ignore`` (see ``RetinaNetPlugin.label_anchors``).
    """
    if len(instances) == 0:
        background = torch.full(
            (len(anchors),), num_classes, dtype=torch.int64, device=anchors.device
        )
        return background, anchors
    gt_boxes = instances.gt_boxes.tensor
    ignore = instances.gt_ignore if instances.has("gt_ignore") else None
    object_boxes = gt_boxes if ignore is None else _boxes_where(~ignore, gt_boxes)
    matched_idxs, match_labels = match_anchors(object_boxes, anchors, matcher, chunk_elements)
    labels = instances.gt_classes[matched_idxs].to(torch.int64)
    labels = torch.where(match_labels == 0, num_classes, labels)
    labels = torch.where(match_labels == -1, -1, labels)
    if ignore is not None:
        ignored_boxes = _boxes_where(ignore, gt_boxes)
        _, near_ignored = match_anchors(ignored_boxes, anchors, matcher, chunk_elements)
        labels = torch.where((labels == num_classes) & (near_ignored != 0), -1, labels)
    foreground = (match_labels == 1).unsqueeze(1)
    return labels, torch.where(foreground, gt_boxes[matched_idxs], anchors)


def _boxes_where(keep: Tensor, boxes: Tensor) -> Tensor:
    """``boxes`` [G, 4] with the rows where ``keep`` is False replaced by an empty box far outside
    any image: it overlaps no anchor, so it matches nothing and promotes nothing
    (``match_anchors``), and no host sync is needed to leave it out."""
    far = torch.full_like(boxes, -1e8)
    return torch.where(keep.unsqueeze(1), boxes, far)
