"""How test-time augmentation merges the detections of its views into one set per image.

Every view (an input size, or its mirror image) gives its own detections, mapped back to the
image. :class:`ViewMerge` merges them in up to three steps, chosen once from the config
(``MODEL.RETINANET_PLUGIN.TTA``):

1. class-aware NMS at the detector's ``test_nms_thresh``;
2. box voting (``VOTING_IOU`` > 0; Gidaris and Komodakis 2015, Detectron's ``BBOX_VOTE``): each box
   that NMS kept becomes the score-weighted mean of its *voters*, the boxes of its class from every
   view that overlap it by at least ``VOTING_IOU`` (itself included); with ``SCORE``
   "best_and_consensus" its score becomes the mean of its own score and the views' consensus, the
   sum of its voters' scores divided by the number of views (at most 1): a box that one view alone
   believes scores about half as much;
3. class-agnostic NMS (``CLASS_AGNOSTIC_NMS_THRESH`` < 1): of boxes that overlap by more than it,
   whatever their classes, the best-scored one stays (one object, one label).

The defaults (no voting, each box's own score, no class-agnostic NMS) are step 1 alone:
Detectron2's merge for its R-CNN test-time augmentation.
"""

import torch
from torchvision.ops import nms

from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, pairwise_iou

__all__ = ["ViewMerge", "SCORE_CHOICES"]

SCORE_CHOICES = ("best", "best_and_consensus")
KEY = "MODEL.RETINANET_PLUGIN.TTA"


class ViewMerge:
    """Merges the detections of ``view_count`` views of an image: called with ``boxes`` [N, 4]
    (XYXY, the image's pixels), ``scores`` [N] (in [0, 1]), ``classes`` [N] and ``view_count``;
    returns the merged (boxes, scores, classes), best first, at most ``max_detections``."""

    @configurable
    def __init__(
        self,
        *,
        nms_thresh: float,
        max_detections: int,
        voting_iou: float = 0.0,
        score: str = "best",
        class_agnostic_nms_thresh: float = 1.0,
        max_pairs: int = 2**22,
    ):
        """
        Args:
            nms_thresh: IoU of the class-aware NMS (step 1).
            max_detections: how many boxes an image keeps.
            voting_iou: the voters' least IoU with a kept box (step 2); 0: no voting.
            score: "best" (a kept box's own score) or "best_and_consensus" (needs voting).
            class_agnostic_nms_thresh: IoU of the class-agnostic NMS (step 3); 1: none.
            max_pairs: most (kept box, box) IoU values voting holds at once (memory bound).
        """
        if score not in SCORE_CHOICES:
            raise ValueError(f"{KEY}.SCORE must be one of {SCORE_CHOICES}, got {score!r}")
        for name, value in (
            ("VOTING_IOU", voting_iou),
            ("CLASS_AGNOSTIC_NMS_THRESH", class_agnostic_nms_thresh),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{KEY}.{name} must be in [0, 1], got {value}")
        if score != "best" and voting_iou == 0:
            raise ValueError(f"{KEY}.SCORE {score!r} needs box voting ({KEY}.VOTING_IOU > 0)")
        self.nms_thresh = nms_thresh
        self.max_detections = max_detections
        self.voting_iou = voting_iou
        self.consensus_score = score == "best_and_consensus"
        self.class_agnostic_nms_thresh = class_agnostic_nms_thresh
        self.max_pairs = max_pairs

    @classmethod
    def from_config(cls, cfg, detector):
        """``detector``: its ``test_nms_thresh`` and ``max_detections_per_image``."""
        node = cfg.MODEL.RETINANET_PLUGIN.TTA
        return {
            "nms_thresh": detector.test_nms_thresh,
            "max_detections": detector.max_detections_per_image,
            "voting_iou": node.VOTING_IOU,
            "score": node.SCORE,
            "class_agnostic_nms_thresh": node.CLASS_AGNOSTIC_NMS_THRESH,
        }

    def __call__(self, boxes, scores, classes, view_count: int):
        if view_count < 1:
            raise ValueError(f"view_count must be at least 1, got {view_count}")
        keep = batched_nms(boxes, scores, classes, self.nms_thresh)
        kept_boxes, kept_scores, kept_classes = boxes[keep], scores[keep], classes[keep]
        if self.voting_iou > 0 and len(keep):
            kept_boxes, consensus = self._vote(keep, boxes, scores, classes)
            if self.consensus_score:
                kept_scores = (kept_scores + (consensus / view_count).clamp(max=1.0)) / 2
        if self.class_agnostic_nms_thresh < 1.0:
            order = nms(kept_boxes, kept_scores, self.class_agnostic_nms_thresh)
        else:
            order = torch.argsort(kept_scores, descending=True, stable=True)
        order = order[: self.max_detections]
        return kept_boxes[order], kept_scores[order], kept_classes[order]

    def _vote(self, keep, boxes, scores, classes):
        """The voters of each kept box ``boxes[keep[k]]``: the boxes of its class overlapping it by
        ``voting_iou`` or more, itself always included (an empty box overlaps nothing). Returns
        their score-weighted mean boxes [K, 4] and score sums [K], ``max_pairs`` IoU values at a
        time."""
        weights_dtype = torch.promote_types(boxes.dtype, scores.dtype)
        all_boxes, all_scores = Boxes(boxes), scores.to(weights_dtype)
        rows = max(1, self.max_pairs // max(1, len(boxes)))
        means, totals = [], []
        for start in range(0, len(keep), rows):
            part = keep[start : start + rows]
            overlap = pairwise_iou(Boxes(boxes[part]), all_boxes)
            voters = (overlap >= self.voting_iou) & (classes[part][:, None] == classes[None, :])
            voters[torch.arange(len(part), device=part.device), part] = True
            weights = voters.to(weights_dtype) * all_scores[None, :]
            total = weights.sum(dim=1)
            mean = (weights @ boxes.to(weights_dtype)) / total.clamp(min=1e-12)[:, None]
            # a box whose voters' scores sum to 0 stays as it is
            means.append(torch.where((total > 0)[:, None], mean.to(boxes.dtype), boxes[part]))
            totals.append(total.to(scores.dtype))
        return torch.cat(means), torch.cat(totals)
