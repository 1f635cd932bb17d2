"""RetinaNet's two training losses, chosen once from the config and then called in every step.

A step labels every anchor of every image (``RetinaNetPlugin.label_anchors``) and flattens the batch
into one :class:`LabelledAnchors`; the classification loss reads its labels (and, for the quality
focal loss, the IoU of the decoded boxes), the box loss its deltas and matched boxes. Both are
computed for all anchors, without a host synchronisation, and the meta-architecture divides both by
the foreground normaliser.

The choices:

- ``MODEL.RETINANET_PLUGIN.CLASSIFICATION_LOSS``: "focal" (the paper) or "quality_focal" (GFL, Li et
  al.);
- ``MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL``: "op" (the compiled op) or "reference" (composite
  PyTorch);
- ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE``: "smooth_l1" (the paper), "giou", "diou" or "ciou".
"""

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Union

import torch
from torch import Tensor

from detectron2.layers import ciou_loss, diou_loss
from detectron2.modeling.box_regression import Box2BoxTransform
from fvcore.nn import smooth_l1_loss

from ..layers import (
    focal_loss_op_available,
    quality_focal_loss,
    quality_focal_loss_reference,
    sigmoid_focal_loss,
    sigmoid_focal_loss_reference,
)
from ..layers.compiled_ops import not_loaded_message
from ..layers.giou_loss import aligned_box_iou, giou_loss
from .box_transform import encode_box_targets

Normalizer = Union[Tensor, float]

FOCAL_LOSS_IMPLS = {"op": sigmoid_focal_loss, "reference": sigmoid_focal_loss_reference}
QUALITY_FOCAL_LOSS_IMPLS = {"op": quality_focal_loss, "reference": quality_focal_loss_reference}
CLASSIFICATION_LOSSES = ("focal", "quality_focal")
IOU_BOX_LOSSES = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}
BOX_LOSSES = ("smooth_l1",) + tuple(IOU_BOX_LOSSES)


@dataclass
class LabelledAnchors:
    """The anchors of a batch, image-major and flattened (M = images x anchors), with their targets.

    Attributes:
        anchors: [M, 4] XYXY pixels.
        deltas: [M, 4] float32 predicted box deltas.
        labels: [M] int64: 0..K-1 foreground class, K background, -1 ignored.
        gt_boxes: [M, 4] matched ground truth on foreground anchors, the anchor itself elsewhere (so
            every box target is finite).
        foreground: [M] bool.
    """

    anchors: Tensor
    deltas: Tensor
    labels: Tensor
    gt_boxes: Tensor
    foreground: Tensor
    box2box_transform: Box2BoxTransform
    _decoded: Optional[Tensor] = field(default=None, repr=False)

    def pred_boxes(self) -> Tensor:
        """[M, 4] the deltas decoded on the anchors (XYXY pixels), computed once and shared by the
        losses."""
        if self._decoded is None:
            self._decoded = self.box2box_transform.apply_deltas(self.deltas, self.anchors)
        return self._decoded


ClassificationLoss = Callable[[Tensor, LabelledAnchors, Normalizer], Tensor]
BoxRegressionLoss = Callable[[LabelledAnchors], Tensor]


class FocalLoss:
    """FL = -alpha_t (1 - p_t)^gamma log(p_t) over every non-ignored (anchor, class) pair, summed
    and divided by the normaliser: ``loss(logits [M, K], anchors, normalizer) -> 0-dim``."""

    def __init__(self, alpha: float, gamma: float, impl: Callable[..., Tensor]):
        self.alpha, self.gamma, self.impl = alpha, gamma, impl

    def __call__(self, logits: Tensor, anchors: LabelledAnchors, normalizer: Normalizer) -> Tensor:
        return self.impl(
            logits,
            anchors.labels,
            gamma=self.gamma,
            alpha=self.alpha,
            reduction="sum",
            normalizer=normalizer,
        )


class QualityFocalLoss:
    """Generalized Focal Loss's quality focal loss: the target on the labelled class is the IoU of
    the anchor's decoded box with its ground truth (a constant: no gradient flows through it)."""

    def __init__(self, beta: float, impl: Callable[..., Tensor]):
        self.beta, self.impl = beta, impl

    def __call__(self, logits: Tensor, anchors: LabelledAnchors, normalizer: Normalizer) -> Tensor:
        quality = aligned_box_iou(anchors.pred_boxes().detach(), anchors.gt_boxes).clamp(0.0, 1.0)
        return self.impl(
            logits, anchors.labels, quality, beta=self.beta, reduction="sum", normalizer=normalizer
        )


class SmoothL1BoxLoss:
    """Smooth L1 (``beta`` = 0: L1) between the predicted deltas and the encoded ground truth,
    summed over the foreground anchors: ``loss(anchors) -> 0-dim``."""

    def __init__(self, box2box_transform: Box2BoxTransform, beta: float):
        self.weights, self.beta = box2box_transform.weights, beta

    def __call__(self, anchors: LabelledAnchors) -> Tensor:
        target = encode_box_targets(anchors.anchors, anchors.gt_boxes, self.weights)
        per_anchor = smooth_l1_loss(anchors.deltas, target, beta=self.beta, reduction="none").sum(
            dim=1
        )
        return torch.where(anchors.foreground, per_anchor, 0.0).sum()


class IoUBoxLoss:
    """An IoU-based loss (GIoU, DIoU or CIoU) between the decoded boxes and their ground truth,
    summed over the foreground anchors."""

    def __init__(self, per_box_loss: Callable[..., Tensor]):
        self.per_box_loss = per_box_loss

    def __call__(self, anchors: LabelledAnchors) -> Tensor:
        per_anchor = self.per_box_loss(anchors.pred_boxes(), anchors.gt_boxes, reduction="none")
        return torch.where(anchors.foreground, per_anchor, 0.0).sum()


def build_classification_loss(
    kind: str, impl: str, *, alpha: float, gamma: float, quality_beta: float
) -> ClassificationLoss:
    """The classification loss named by the config (errors name the key and the choices)."""
    if kind not in CLASSIFICATION_LOSSES:
        raise ValueError(
            f"MODEL.RETINANET_PLUGIN.CLASSIFICATION_LOSS must be one of "
            f"{CLASSIFICATION_LOSSES}, got {kind!r}"
        )
    if impl not in FOCAL_LOSS_IMPLS:
        raise ValueError(
            f"MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL must be one of "
            f"{tuple(FOCAL_LOSS_IMPLS)}, got {impl!r}"
        )
    if impl == "op" and not focal_loss_op_available():
        raise RuntimeError(
            f"MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL is 'op' but {not_loaded_message()}, or set "
            "the key to 'reference'"
        )
    if not quality_beta >= 0:
        raise ValueError(
            f"MODEL.RETINANET_PLUGIN.QUALITY_FOCAL_LOSS_BETA must be >= 0, got {quality_beta}"
        )
    if kind == "focal":
        return FocalLoss(alpha, gamma, FOCAL_LOSS_IMPLS[impl])
    return QualityFocalLoss(quality_beta, QUALITY_FOCAL_LOSS_IMPLS[impl])


def build_box_regression_loss(
    kind: str, box2box_transform: Box2BoxTransform, *, smooth_l1_beta: float
) -> BoxRegressionLoss:
    """The box regression loss named by ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE``."""
    if kind == "smooth_l1":
        return SmoothL1BoxLoss(box2box_transform, smooth_l1_beta)
    if kind not in IOU_BOX_LOSSES:
        raise ValueError(
            f"MODEL.RETINANET.BBOX_REG_LOSS_TYPE must be one of {BOX_LOSSES}, got {kind!r}"
        )
    return IoUBoxLoss(IOU_BOX_LOSSES[kind])


def losses_from_config(cfg, box2box_transform: Box2BoxTransform) -> Dict[str, object]:
    """``classification_loss`` and ``box_regression_loss`` for ``RetinaNetPlugin.__init__``."""
    plugin = cfg.MODEL.RETINANET_PLUGIN
    return {
        "classification_loss": build_classification_loss(
            plugin.CLASSIFICATION_LOSS,
            plugin.FOCAL_LOSS_IMPL,
            alpha=cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            gamma=cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
            quality_beta=plugin.QUALITY_FOCAL_LOSS_BETA,
        ),
        "box_regression_loss": build_box_regression_loss(
            cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE,
            box2box_transform,
            smooth_l1_beta=cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA,
        ),
    }
