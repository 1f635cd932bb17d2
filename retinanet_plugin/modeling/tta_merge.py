"""How test-time augmentation merges the detections of its views into one set per image.

Every view (an input size, or its mirror image) gives its own detections, mapped back to the
image. :class:`ViewMerge` merges them in up to three steps, chosen once from the config
(``MODEL.RETINANET_PLUGIN.TTA``):

1. class-aware NMS at the detector's ``test_nms_thresh``: each box that survives represents the
   boxes of its class that it suppressed, its *cluster*;
2. box voting (``VOTING_IOU`` > 0; Gidaris and Komodakis 2015, Detectron's ``BBOX_VOTE``): a kept
   box becomes the score-weighted mean of the boxes of its class that overlap it by at least
   ``VOTING_IOU`` (itself included), and with ``SCORE`` "best_and_consensus" its score becomes the
   mean of its best score and the views' consensus, the sum of those boxes' scores divided by the
   number of views (at most 1): a box that one view alone believes scores about half as much;
3. cross-class NMS (``CROSS_CLASS_NMS_THRESH`` < 1): of boxes of different classes that overlap by
   more than it, the best-scored one stays (one object, one label).

The defaults (no voting, the best score, no cross-class NMS) are step 1 alone: Detectron2's merge
for its R-CNN test-time augmentation.
"""

import torch
from torchvision.ops import nms

from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, pairwise_iou

__all__ = ["ViewMerge", "SCORE_CHOICES"]

SCORE_CHOICES = ("best", "best_and_consensus")


class ViewMerge:
    """Merges the detections of ``view_count`` views of an image: ``boxes`` [N, 4] (XYXY, in the
    image's pixels), ``scores`` [N], ``classes`` [N] -> the merged (boxes, scores, classes), best
    first, at most ``max_detections``."""

    @configurable
    def __init__(
        self,
        *,
        nms_thresh: float,
        max_detections: int,
        voting_iou: float = 0.0,
        score: str = "best",
        cross_class_nms_thresh: float = 1.0,
    ):
        if score not in SCORE_CHOICES:
            raise ValueError(
                f"MODEL.RETINANET_PLUGIN.TTA.SCORE must be one of {SCORE_CHOICES}, got {score!r}"
            )
        if score != "best" and not voting_iou > 0:
            raise ValueError(
                f"MODEL.RETINANET_PLUGIN.TTA.SCORE {score!r} needs box voting "
                f"(MODEL.RETINANET_PLUGIN.TTA.VOTING_IOU > 0, got {voting_iou})"
            )
        if not 0.0 <= voting_iou <= 1.0:
            raise ValueError(
                f"MODEL.RETINANET_PLUGIN.TTA.VOTING_IOU must be in [0, 1], got {voting_iou}"
            )
        self.nms_thresh = nms_thresh
        self.max_detections = max_detections
        self.voting_iou = voting_iou
        self.consensus_score = score == "best_and_consensus"
        self.cross_class_nms_thresh = cross_class_nms_thresh

    @classmethod
    def from_config(cls, cfg, detector):
        """``detector``: its ``test_nms_thresh`` and ``max_detections_per_image``."""
        node = cfg.MODEL.RETINANET_PLUGIN.TTA
        return {
            "nms_thresh": detector.test_nms_thresh,
            "max_detections": detector.max_detections_per_image,
            "voting_iou": node.VOTING_IOU,
            "score": node.SCORE,
            "cross_class_nms_thresh": node.CROSS_CLASS_NMS_THRESH,
        }

    def __call__(
        self, boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, view_count: int
    ):
        keep = batched_nms(boxes, scores, classes, self.nms_thresh)
        kept_boxes, kept_scores, kept_classes = boxes[keep], scores[keep], classes[keep]
        if self.voting_iou > 0 and len(keep):
            kept_boxes, consensus = self._vote(keep, boxes, scores, classes)
            if self.consensus_score:
                kept_scores = (kept_scores + (consensus / view_count).clamp(max=1.0)) / 2
        if self.cross_class_nms_thresh < 1.0:
            order = nms(kept_boxes, kept_scores, self.cross_class_nms_thresh)
        else:
            order = torch.argsort(kept_scores, descending=True, stable=True)
        order = order[: self.max_detections]
        return kept_boxes[order], kept_scores[order], kept_classes[order]

    def _vote(self, keep, boxes, scores, classes):
        """The voters of each kept box ``boxes[keep[k]]``: the boxes of its class overlapping it
        by ``voting_iou`` or more, itself always included (an empty box overlaps nothing).
        Returns their score-weighted mean boxes [K, 4] and score sums [K]; a box whose voters'
        scores sum to 0 stays as it is."""
        overlap = pairwise_iou(Boxes(boxes[keep]), Boxes(boxes))
        voters = (overlap >= self.voting_iou) & (classes[keep][:, None] == classes[None, :])
        voters[torch.arange(len(keep)), keep] = True
        weights = voters.to(scores.dtype) * scores[None, :]
        total = weights.sum(dim=1)
        mean = (weights @ boxes) / total.clamp(min=torch.finfo(total.dtype).tiny)[:, None]
        return torch.where((total > 0)[:, None], mean, boxes[keep]), total
