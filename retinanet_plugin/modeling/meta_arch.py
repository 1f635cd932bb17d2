"""The plugin's RetinaNet meta-architecture: anchor labelling, losses and inference."""
import logging
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import cat, ciou_loss, diou_loss
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from fvcore.nn import smooth_l1_loss

from ..layers import (
    focal_loss_op_available,
    quality_focal_loss,
    quality_focal_loss_reference,
    sigmoid_focal_loss,
    sigmoid_focal_loss_reference,
)
from ..layers.giou_loss import aligned_box_iou, giou_loss
from ..utils.device_scalar_logger import DeviceScalarLogger
from .anchor_labeling import DEFAULT_CHUNK_ELEMENTS, match_anchors
from .box_transform import SyncFreeBox2BoxTransform
from .detection_selection import select_detections
from .head import build_retinanet_plugin_head

logger = logging.getLogger(__name__)

BOX_LOSSES = ("smooth_l1", "giou", "diou", "ciou")
NORMALIZERS = ("ema", "batch")
FOCAL_LOSS_IMPLS = {"op": sigmoid_focal_loss, "reference": sigmoid_focal_loss_reference}
QUALITY_FOCAL_LOSS_IMPLS = {"op": quality_focal_loss, "reference": quality_focal_loss_reference}
CLASSIFICATION_LOSSES = ("focal", "quality_focal")


@META_ARCH_REGISTRY.register()
class RetinaNetPlugin(DenseDetector):
    """RetinaNet (Lin et al., "Focal Loss for Dense Object Detection") on Detectron2's dense-detector base.

    Training returns ``{"loss_cls", "loss_box_reg"}``, both divided by the foreground-anchor normaliser.
    Inference returns, per image, ``Instances`` with ``pred_boxes``, ``scores`` and ``pred_classes`` in the
    resolution of the input's ``height``/``width``.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone,
        head: nn.Module,
        head_in_features: List[str],
        anchor_generator: nn.Module,
        box2box_transform: Box2BoxTransform,
        anchor_matcher: Matcher,
        matching_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        num_classes: int,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        focal_loss_impl: str = "op",
        classification_loss: str = "focal",
        quality_focal_loss_beta: float = 2.0,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        loss_normalizer: str = "ema",
        normalizer_ema_init: float = 100.0,
        normalizer_ema_momentum: float = 0.9,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        input_format: str = "BGR",
    ):
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        if box_reg_loss_type not in BOX_LOSSES:
            raise ValueError(f"MODEL.RETINANET.BBOX_REG_LOSS_TYPE must be one of {BOX_LOSSES}, got {box_reg_loss_type!r}")
        if loss_normalizer not in NORMALIZERS:
            raise ValueError(f"MODEL.RETINANET_PLUGIN.LOSS_NORMALIZER must be one of {NORMALIZERS}, got {loss_normalizer!r}")
        if focal_loss_impl not in FOCAL_LOSS_IMPLS:
            raise ValueError(
                f"MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL must be one of {tuple(FOCAL_LOSS_IMPLS)}, got {focal_loss_impl!r}"
            )
        if classification_loss not in CLASSIFICATION_LOSSES:
            raise ValueError(
                f"MODEL.RETINANET_PLUGIN.CLASSIFICATION_LOSS must be one of {CLASSIFICATION_LOSSES}, got {classification_loss!r}"
            )
        if not quality_focal_loss_beta >= 0:
            raise ValueError(f"MODEL.RETINANET_PLUGIN.QUALITY_FOCAL_LOSS_BETA must be >= 0, got {quality_focal_loss_beta}")
        if focal_loss_impl == "op" and not focal_loss_op_available():
            raise RuntimeError(
                "MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL is 'op' but retinanet_plugin._C is not built: run "
                "`pip install --no-build-isolation -e .` in the plugin's folder, or set the key to 'reference'"
            )
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.anchor_matcher = anchor_matcher
        if matching_chunk_elements < 1:
            raise ValueError(f"MODEL.RETINANET_PLUGIN.MATCHING_CHUNK_ELEMENTS must be >= 1, got {matching_chunk_elements}")
        self.matching_chunk_elements = matching_chunk_elements
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.focal_loss_impl = focal_loss_impl
        self.classification_loss = classification_loss
        self.quality_focal_loss_beta = quality_focal_loss_beta
        self.smooth_l1_beta = smooth_l1_beta
        self.box_reg_loss_type = box_reg_loss_type
        self.loss_normalizer_mode = loss_normalizer
        self.normalizer_ema_momentum = normalizer_ema_momentum
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format
        # Saved in checkpoints so a resumed run continues with the same normaliser.
        self.register_buffer("loss_normalizer", torch.tensor(float(normalizer_ema_init)))
        self._metrics = DeviceScalarLogger()

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        missing = [f for f in cfg.MODEL.RETINANET.IN_FEATURES if f not in backbone_shape]
        if missing:
            raise ValueError(
                f"MODEL.RETINANET.IN_FEATURES names {missing}, which the backbone "
                f"{cfg.MODEL.BACKBONE.NAME} does not output (it gives {sorted(backbone_shape)})"
            )
        feature_shapes = [backbone_shape[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        thresholds = list(cfg.MODEL.RETINANET.IOU_THRESHOLDS)
        if thresholds != sorted(thresholds) or len(cfg.MODEL.RETINANET.IOU_LABELS) != len(thresholds) + 1:
            raise ValueError(
                "MODEL.RETINANET.IOU_THRESHOLDS must be increasing with one fewer entry than "
                f"MODEL.RETINANET.IOU_LABELS; got {thresholds} and {list(cfg.MODEL.RETINANET.IOU_LABELS)}"
            )
        plugin = cfg.MODEL.RETINANET_PLUGIN
        return {
            "backbone": backbone,
            "head": build_retinanet_plugin_head(cfg, feature_shapes),
            "head_in_features": cfg.MODEL.RETINANET.IN_FEATURES,
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "box2box_transform": SyncFreeBox2BoxTransform(weights=cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS),
            "anchor_matcher": Matcher(
                thresholds,
                cfg.MODEL.RETINANET.IOU_LABELS,
                allow_low_quality_matches=plugin.ALLOW_LOW_QUALITY_MATCHES,
            ),
            "matching_chunk_elements": plugin.MATCHING_CHUNK_ELEMENTS,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "focal_loss_alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
            "focal_loss_impl": plugin.FOCAL_LOSS_IMPL,
            "classification_loss": plugin.CLASSIFICATION_LOSS,
            "quality_focal_loss_beta": plugin.QUALITY_FOCAL_LOSS_BETA,
            "smooth_l1_beta": cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA,
            "box_reg_loss_type": cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE,
            "loss_normalizer": plugin.LOSS_NORMALIZER,
            "normalizer_ema_init": plugin.NORMALIZER_EMA_INIT,
            "normalizer_ema_momentum": plugin.NORMALIZER_EMA_MOMENTUM,
            "test_score_thresh": cfg.MODEL.RETINANET.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.RETINANET.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints of Detectron2's RetinaNet (and older ones) have no normaliser: keep the current one.
        state_dict.setdefault(prefix + "loss_normalizer", self.loss_normalizer.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------------------------------- training
    # Training runs without host synchronisation: no .item(), nonzero() or boolean-mask indexing.
    def forward_training(self, images: ImageList, features, predictions, gt_instances: List[Instances]):
        logits, deltas = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        anchors = Boxes.cat(self.anchor_generator(features)).tensor
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, logits, gt_labels, deltas, gt_boxes)

    @torch.no_grad()
    def label_anchors(self, anchors: Tensor, gt_instances: List[Instances]) -> Tuple[Tensor, Tensor]:
        """Match anchors to ground truth by IoU (:func:`match_anchors`, with ``self.anchor_matcher``'s rule).

        Args:
            anchors: [R, 4] all levels' anchors, XYXY pixels.
        Ground-truth boxes marked ``gt_ignore`` (crowd regions, VOC "difficult" objects, objects mostly cut off by a
        crop: ``retinanet_plugin.data.training_instances``) are matched on their own with the same rule: the
        anchors that one would make foreground or ignored, and that no other box makes foreground, are ignored (-1)
        rather than background. The other boxes are matched as if those were not there.

        Args:
            anchors: [R, 4] all levels' anchors, XYXY pixels.
        Returns:
            labels: [N, R] int64: 0..K-1 foreground class, K background, -1 ignored.
            boxes: [N, R, 4] the matched ground-truth box (XYXY pixels) on foreground anchors, the anchor itself
                elsewhere (so box targets are finite everywhere).
        """
        labels, boxes = [], []
        for instances in gt_instances:
            if len(instances) == 0:
                labels.append(torch.full((len(anchors),), self.num_classes, dtype=torch.int64, device=anchors.device))
                boxes.append(anchors)
                continue
            gt_boxes = instances.gt_boxes.tensor
            ignore = instances.gt_ignore if instances.has("gt_ignore") else None
            object_boxes = gt_boxes if ignore is None else _boxes_where(~ignore, gt_boxes)
            matched_idxs, match_labels = match_anchors(
                object_boxes, anchors, self.anchor_matcher, self.matching_chunk_elements
            )
            labels_i = instances.gt_classes[matched_idxs].to(torch.int64)
            labels_i = torch.where(match_labels == 0, self.num_classes, labels_i)
            labels_i = torch.where(match_labels == -1, -1, labels_i)
            if ignore is not None:
                _, near_ignored = match_anchors(
                    _boxes_where(ignore, gt_boxes), anchors, self.anchor_matcher, self.matching_chunk_elements
                )
                labels_i = torch.where((labels_i == self.num_classes) & (near_ignored != 0), -1, labels_i)
            labels.append(labels_i)
            foreground = (match_labels == 1).unsqueeze(1)
            boxes.append(torch.where(foreground, instances.gt_boxes.tensor[matched_idxs], anchors))
        return torch.stack(labels), torch.stack(boxes)

    def _update_normalizer(self, num_foreground: Tensor) -> Tensor:
        """The loss normaliser for this step, from the batch's foreground count (a 0-dim tensor, no host sync)."""
        count = num_foreground.to(torch.float32)
        world_size = comm.get_world_size()
        if world_size > 1 and dist.is_available() and dist.is_initialized():
            count = count.clone()
            dist.all_reduce(count)
            count = count / world_size
        count = count.clamp(min=1.0)
        if self.loss_normalizer_mode == "batch":
            return count
        momentum = self.normalizer_ema_momentum
        with torch.no_grad():
            self.loss_normalizer.mul_(momentum).add_(count.to(self.loss_normalizer) * (1.0 - momentum))
        return self.loss_normalizer.clone()

    def losses(self, anchors: Tensor, logits: List[Tensor], gt_labels: Tensor, deltas: List[Tensor], gt_boxes: Tensor) -> Dict[str, Tensor]:
        """Focal (or quality focal) loss over all non-ignored anchors and box loss over foreground anchors, in fp32.

        Args:
            anchors: [R, 4] all levels' anchors.
            logits, deltas: per level, [N, R_i, K] and [N, R_i, 4] (any float dtype: fp16/bf16 under autocast).
            gt_labels, gt_boxes: [N, R] and [N, R, 4], from :meth:`label_anchors`.
        """
        num_images = gt_labels.shape[0]
        foreground = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_foreground = foreground.sum()
        self._metrics.put("num_pos_anchors", num_foreground / num_images)
        normalizer = self._update_normalizer(num_foreground)

        logits = cat(logits, dim=1).reshape(-1, self.num_classes)
        deltas = cat(deltas, dim=1).float().reshape(-1, 4)  # [N * R, 4], image-major, as the tiled anchors
        anchors = _tile_over_images(anchors, num_images)
        gt_boxes = gt_boxes.reshape(-1, 4)
        # Decoded once, for the IoU-based box losses and the quality focal loss's target.
        pred_boxes = None
        if self.box_reg_loss_type != "smooth_l1" or self.classification_loss == "quality_focal":
            pred_boxes = self.box2box_transform.apply_deltas(deltas, anchors)
        if self.classification_loss == "focal":
            loss_cls = FOCAL_LOSS_IMPLS[self.focal_loss_impl](
                logits, gt_labels.reshape(-1), gamma=self.focal_loss_gamma, alpha=self.focal_loss_alpha,
                reduction="sum", normalizer=normalizer,
            )
        else:
            # The target: IoU of each predicted box with its ground truth, a constant (no gradient through it).
            quality = aligned_box_iou(pred_boxes.detach(), gt_boxes).clamp(0.0, 1.0)
            loss_cls = QUALITY_FOCAL_LOSS_IMPLS[self.focal_loss_impl](
                logits, gt_labels.reshape(-1), quality, beta=self.quality_focal_loss_beta, reduction="sum",
                normalizer=normalizer,
            )
        loss_box_reg = self._box_loss(anchors, deltas, pred_boxes, gt_boxes, foreground.reshape(-1))
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg / normalizer}

    def _box_loss(self, anchors: Tensor, deltas: Tensor, pred_boxes, gt_boxes: Tensor, foreground: Tensor) -> Tensor:
        """Summed box regression loss over the foreground anchors, from [M, 4] anchors, deltas, decoded boxes (for
        the IoU losses; None for smooth L1) and matched boxes, and the [M] foreground mask.

        Computed for all anchors and masked with ``torch.where`` (no data-dependent shapes, so no host sync);
        ``gt_boxes`` is the anchor itself off the foreground, so every term is finite.
        """
        if self.box_reg_loss_type == "smooth_l1":
            target = self.box2box_transform.get_deltas(anchors, gt_boxes)
            per_anchor = smooth_l1_loss(deltas, target, beta=self.smooth_l1_beta, reduction="none").sum(dim=1)
        else:
            box_loss = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}[self.box_reg_loss_type]
            per_anchor = box_loss(pred_boxes, gt_boxes, reduction="none")
        return torch.where(foreground, per_anchor, 0.0).sum()

    # ---------------------------------------------------------------------------------------- inference
    def forward_inference(self, images: ImageList, features: List[Tensor], predictions):
        logits, deltas = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(features)
        return self.inference(anchors, logits, deltas, images.image_sizes)

    def inference(self, anchors: List[Boxes], logits: List[Tensor], deltas: List[Tensor], image_sizes) -> List[Instances]:
        """Detections per image from per-level ``logits`` [N, R_i, K] and ``deltas`` [N, R_i, 4]."""
        return select_detections(anchors, logits, deltas, image_sizes, **self.detection_selection_settings())

    def detection_selection_settings(self) -> Dict[str, object]:
        """Keyword arguments of ``select_detections`` / ``select_detections_padded``: the test-time settings."""
        return {
            "box2box_transform": self.box2box_transform,
            "score_thresh": self.test_score_thresh,
            "topk_candidates": self.test_topk_candidates,
            "nms_thresh": self.test_nms_thresh,
            "max_detections_per_image": self.max_detections_per_image,
        }


def _boxes_where(keep: Tensor, boxes: Tensor) -> Tensor:
    """``boxes`` [G, 4] with the rows where ``keep`` is False replaced by an empty box far outside any image: it
    overlaps no anchor, so it matches nothing and promotes nothing (``match_anchors``), and no host sync is needed
    to leave it out."""
    far = torch.full_like(boxes, -1e8)
    return torch.where(keep.unsqueeze(1), boxes, far)


def _tile_over_images(anchors: Tensor, num_images: int) -> Tensor:
    """[N * R, 4]: the [R, 4] anchors once per image, in the order of ``deltas.reshape(-1, 4)``."""
    return anchors.unsqueeze(0).expand(num_images, -1, -1).reshape(-1, 4)
