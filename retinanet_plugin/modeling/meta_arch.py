"""The plugin's RetinaNet meta-architecture: dense predictions, anchor labelling, losses and
inference.

One path serves every use: :meth:`RetinaNetPlugin.dense_predictions` takes normalised images to
per-level anchors, class logits and box deltas; training labels the anchors and applies the losses
chosen at construction (``modeling/losses.py``); inference selects detections
(``modeling/detection_selection.py``), variable-length per image in eager mode and TorchScript,
fixed-size for the exporters (``export/``).
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm

from ..utils.capture import is_capturing
from ..utils.device_scalar_logger import DeviceScalarLogger
from .anchor_labeling import DEFAULT_CHUNK_ELEMENTS, label_image_anchors
from .detection_selection import DetectionSettings, select_detections, select_detections_padded
from .execution import compiled, network_execution
from .head import build_retinanet_plugin_head
from .losses import BoxRegressionLoss, ClassificationLoss, LabelledAnchors, losses_from_config
from .weight_layout import weight_layout_for_mode

logger = logging.getLogger(__name__)

NORMALIZERS = ("ema", "batch")

DensePredictions = Tuple[List[Boxes], List[Tensor], List[Tensor]]


@META_ARCH_REGISTRY.register()
class RetinaNetPlugin(DenseDetector):
    """RetinaNet (Lin et al., "Focal Loss for Dense Object Detection") on Detectron2's
    dense-detector base.

    Training returns ``{"loss_cls", "loss_box_reg"}``, both divided by the foreground-anchor
    normaliser. Inference returns, per image, ``Instances`` with ``pred_boxes``, ``scores`` and
    ``pred_classes`` in the resolution of the input's ``height``/``width``. The model scripts with
    Detectron2's ``scripting_with_instances`` (inference only), as Detectron2's ``RetinaNet`` does.
    """

    # eval mode's network function (maybe compiled): used only by a method TorchScript leaves out;
    # the weights train() gives back their layout (weight_layout.py): Python-side only
    __jit_ignored_attributes__ = ["_eval_network", "_channels_last_weights"]

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
        classification_loss: ClassificationLoss,
        box_regression_loss: BoxRegressionLoss,
        num_classes: int,
        matching_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        normalizer_ema_init: float = 100.0,
        normalizer_ema_momentum: Optional[float] = 0.9,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        input_format: str = "BGR",
        channels_last: bool = False,
        bfloat16_inference: bool = False,
        compile_mode: Optional[str] = None,
        compile_freezing: bool = False,
    ):
        """
        Args:
            classification_loss, box_regression_loss: from ``modeling.losses``
                (``losses_from_config``).
            matching_chunk_elements: IoU values computed at once when labelling anchors (bounds
                memory).
            normalizer_ema_init, normalizer_ema_momentum: the loss normaliser, an exponential moving
                average of the foreground-anchor count; momentum None: the batch's own count (the
                paper's), and the saved average is left as it is.
            channels_last: the images (and so the activations) in channels-last memory format, in
                eval mode and in training under an autocast of the images' device (mixed
                precision); float32 training keeps NCHW. In eval mode the convolution weights are
                held channels-last too (``weight_layout.py``).
            bfloat16_inference: in eval mode, the backbone and head under bfloat16 autocast (their
                outputs back in float32).
            compile_mode: in eval mode, the backbone and head run as one ``torch.compile``d function
                in this mode (e.g. "default", "max-autotune"), compiled here once; None: eager.
            compile_freezing: with ``compile_mode``, Inductor's freezing passes for calls without
                autograd (``execution.compiled``).
            Others: as Detectron2's ``RetinaNet``.
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        if matching_chunk_elements < 1:
            raise ValueError(
                "MODEL.RETINANET_PLUGIN.MATCHING_CHUNK_ELEMENTS must be >= 1, got "
                f"{matching_chunk_elements}"
            )
        if normalizer_ema_momentum is not None and not 0.0 <= normalizer_ema_momentum <= 1.0:
            raise ValueError(
                "MODEL.RETINANET_PLUGIN.NORMALIZER_EMA_MOMENTUM must be in [0, 1], got "
                f"{normalizer_ema_momentum}"
            )
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.anchor_matcher = anchor_matcher
        self.matching_chunk_elements = matching_chunk_elements
        self.classification_loss = classification_loss
        self.box_regression_loss = box_regression_loss
        self.normalizer_ema_momentum = normalizer_ema_momentum
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format
        self.channels_last = channels_last
        self.bfloat16_inference = bfloat16_inference
        self.compile_mode = compile_mode
        # What eval mode runs for the backbone and head, chosen once: called as f(self, images). A
        # function of the class, not a bound method, so that a copy of the model runs its own
        # weights (dynamo guards on the module it is given).
        network = type(self).network_outputs
        self._eval_network = (
            network if compile_mode is None else compiled(network, compile_mode, compile_freezing)
        )
        self._channels_last_weights: List[str] = []  # converted by eval(), restored by train()
        # Saved in checkpoints so a resumed run continues with the same normaliser.
        self.register_buffer("loss_normalizer", torch.tensor(float(normalizer_ema_init)))
        self._metrics = DeviceScalarLogger()

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        feature_shapes = _head_feature_shapes(cfg, backbone)
        plugin = cfg.MODEL.RETINANET_PLUGIN
        if plugin.LOSS_NORMALIZER not in NORMALIZERS:
            raise ValueError(
                f"MODEL.RETINANET_PLUGIN.LOSS_NORMALIZER must be one of {NORMALIZERS}, "
                f"got {plugin.LOSS_NORMALIZER!r}"
            )
        box2box_transform = Box2BoxTransform(weights=cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS)
        return {
            "backbone": backbone,
            "head": build_retinanet_plugin_head(cfg, feature_shapes),
            "head_in_features": cfg.MODEL.RETINANET.IN_FEATURES,
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "box2box_transform": box2box_transform,
            "anchor_matcher": _anchor_matcher(cfg),
            **losses_from_config(cfg, box2box_transform),
            "matching_chunk_elements": plugin.MATCHING_CHUNK_ELEMENTS,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "normalizer_ema_init": plugin.NORMALIZER_EMA_INIT,
            "normalizer_ema_momentum": (
                None if plugin.LOSS_NORMALIZER == "batch" else plugin.NORMALIZER_EMA_MOMENTUM
            ),
            "test_score_thresh": cfg.MODEL.RETINANET.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.RETINANET.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            **network_execution(cfg),
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints of Detectron2's RetinaNet (and older ones) have no normaliser: keep the
        # current one.
        state_dict.setdefault(prefix + "loss_normalizer", self.loss_normalizer.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------------------ the one path
    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """As Detectron2's meta-architectures: a list of dicts with "image" [3, H, W] (0-255,
        ``INPUT.FORMAT``), and "instances" in training or the optional output "height"/"width" in
        inference."""
        images = self.preprocess_image(batched_inputs)
        anchors, logits, deltas = self.dense_predictions(images.tensor)
        if self.training:
            assert not torch.jit.is_scripting(), "RetinaNetPlugin scripts for inference only"
            return self.training_losses(anchors, logits, deltas, self._gt_instances(batched_inputs))
        results = self.inference(anchors, logits, deltas, images.image_sizes)
        if torch.jit.is_scripting():
            return results
        return self._postprocess(results, batched_inputs, images.image_sizes)

    def dense_predictions(self, images: Tensor) -> DensePredictions:
        """Per-level anchors and head outputs for a batch of normalised images.

        Args:
            images: [N, 3, H, W] normalised (``(pixel - PIXEL_MEAN) / PIXEL_STD``, 0 in the
                padding), H and W multiples of the backbone's ``size_divisibility``:
                ``preprocess_image(...).tensor`` or :meth:`normalize_padded_batch`.
        Returns:
            anchors: per level i, ``Boxes`` of [R_i, 4] XYXY pixels.
            logits, deltas: per level, [N, R_i, K] class logits and [N, R_i, 4] box deltas.
        """
        if self._channels_last(images):
            images = images.contiguous(memory_format=torch.channels_last)
        if not torch.jit.is_scripting():  # scripted, traced and exported models run float32, eager
            if not self.training and not is_capturing():
                return self._eval_dense_predictions(images)
        features, predictions = self.network_outputs(images)
        return self.dense_outputs(features, predictions)

    def train(self, mode: bool = True) -> "RetinaNetPlugin":
        """``nn.Module.train``; a channels-last model holds its convolution weights channels-last
        in eval mode (``weight_layout.py``)."""
        super().train(mode)
        if self.channels_last:
            self._channels_last_weights = weight_layout_for_mode(
                self, mode, self._channels_last_weights
            )
        return self

    def _channels_last(self, images: Tensor) -> bool:
        """Whether this forward runs channels-last, when chosen at construction: always in eval
        mode; in training under an autocast of the images' device only (mixed precision, where
        oneDNN's channels-last kernels halve the step on a CPU with bfloat16 instructions)."""
        if not self.channels_last:
            return False
        if not self.training:
            return True
        if not torch.jit.is_scripting():
            return torch.is_autocast_enabled(images.device.type)
        return False

    def network_outputs(self, images: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
        """The backbone's features of ``head_in_features`` and the head's outputs (per-level
        logits [N, A*K, H_i, W_i] and deltas [N, A*4, H_i, W_i])."""
        features = self.backbone(images)
        features = [features[f] for f in self.head_in_features]
        return features, self.head(features)

    @torch.jit.unused
    def _eval_dense_predictions(self, images: Tensor) -> DensePredictions:
        """Eval mode in eager PyTorch: the network chosen at construction (compiled or not), under
        bfloat16 autocast when asked (the head's outputs back in float32)."""
        if not self.bfloat16_inference:
            return self.dense_outputs(*self._eval_network(self, images))
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            features, predictions = self._eval_network(self, images)
        predictions = [[p.float() for p in outputs] for outputs in predictions]
        return self.dense_outputs(features, predictions)

    def dense_outputs(
        self, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> DensePredictions:
        """(anchors, logits, deltas) of :meth:`dense_predictions` from the head's input and
        output."""
        logits, deltas = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        return self.anchor_generator(features), logits, deltas

    def normalize_padded_batch(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        """What ``preprocess_image`` gives, for a batch already padded: [N, 3, H, W] pixels (0-255)
        with image i in the top-left [image_sizes[i, 0], image_sizes[i, 1]] of row i, normalised, 0
        in the padding."""
        height, width = images.shape[-2], images.shape[-1]
        rows = torch.arange(height, device=images.device).unsqueeze(0) < image_sizes[:, 0:1]
        cols = torch.arange(width, device=images.device).unsqueeze(0) < image_sizes[:, 1:2]
        # rows [N, H] and cols [N, W]: inside image i
        inside = (rows.unsqueeze(2) & cols.unsqueeze(1)).unsqueeze(1)  # [N, 1, H, W]
        return torch.where(inside, (images - self.pixel_mean) / self.pixel_std, 0.0)

    # -------------------------------------------------------------------------------- training
    # Training runs without host synchronisation: no .item(), nonzero() or boolean-mask indexing.
    @torch.jit.unused
    def _gt_instances(self, batched_inputs) -> List[Instances]:
        if "instances" not in batched_inputs[0]:
            raise ValueError(
                "Instance annotations are missing in training! (the inputs need 'instances', the "
                "dataset mapper's ground truth)"
            )
        return [x["instances"].to(self.device) for x in batched_inputs]

    @torch.jit.unused
    def training_losses(
        self,
        anchors: List[Boxes],
        logits: List[Tensor],
        deltas: List[Tensor],
        gt_instances: List[Instances],
    ) -> Dict[str, Tensor]:
        """{"loss_cls", "loss_box_reg"} from :meth:`dense_predictions`' outputs and the ground
        truth."""
        anchors = Boxes.cat(anchors).tensor
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, logits, gt_labels, deltas, gt_boxes)

    def forward_training(
        self, images: ImageList, features, predictions, gt_instances: List[Instances]
    ):
        """Detectron2's ``DenseDetector`` interface: the losses from the backbone features and head
        outputs."""
        return self.training_losses(*self.dense_outputs(features, predictions), gt_instances)

    @torch.no_grad()
    def label_anchors(
        self, anchors: Tensor, gt_instances: List[Instances]
    ) -> Tuple[Tensor, Tensor]:
        """Match anchors to ground truth by IoU (:func:`match_anchors`, with
        ``self.anchor_matcher``'s rule).

        Ground-truth boxes marked ``gt_ignore`` (crowd regions, VOC "difficult" objects, objects
        mostly cut off by a crop: ``retinanet_plugin.data.training_instances``) are matched on their
        own with the same rule: the anchors that one would make foreground or ignored, and that no
        other box makes foreground, are ignored (-1) rather than background. The other boxes are
        matched as if those were not there.

        Args:
            anchors: [R, 4] all levels' anchors, XYXY pixels.
        Returns:
            labels: [N, R] int64: 0..K-1 foreground class, K background, -1 ignored.
            boxes: [N, R, 4] the matched ground-truth box (XYXY pixels) on foreground anchors, the
                anchor itself elsewhere (so box targets are finite everywhere).
        """
        labelled = [
            label_image_anchors(
                anchors,
                instances,
                self.num_classes,
                self.anchor_matcher,
                self.matching_chunk_elements,
            )
            for instances in gt_instances
        ]
        return torch.stack([labels for labels, _ in labelled]), torch.stack(
            [boxes for _, boxes in labelled]
        )

    def _update_normalizer(self, num_foreground: Tensor) -> Tensor:
        """The loss normaliser for this step, from the batch's foreground count (a 0-dim tensor, no
        host sync): the moving average of the count per image batch, all-reduced over the workers,
        at least 1."""
        count = num_foreground.to(torch.float32)
        world_size = comm.get_world_size()
        if world_size > 1 and dist.is_available() and dist.is_initialized():
            count = count.clone()
            dist.all_reduce(count)
            count = count / world_size
        count = count.clamp(min=1.0)
        if self.normalizer_ema_momentum is None:  # "batch": the count itself
            return count
        momentum = self.normalizer_ema_momentum
        with torch.no_grad():
            self.loss_normalizer.mul_(momentum).add_(
                count.to(self.loss_normalizer) * (1.0 - momentum)
            )
        return self.loss_normalizer.clone()

    def losses(
        self,
        anchors: Tensor,
        logits: List[Tensor],
        gt_labels: Tensor,
        deltas: List[Tensor],
        gt_boxes: Tensor,
    ) -> Dict[str, Tensor]:
        """The classification loss over all non-ignored anchors and the box loss over the foreground
        anchors, both in fp32 and divided by the normaliser.

        Args:
            anchors: [R, 4] all levels' anchors.
            logits, deltas: per level, [N, R_i, K] and [N, R_i, 4] (any float dtype: fp16/bf16 under
                autocast).
            gt_labels, gt_boxes: [N, R] and [N, R, 4], from :meth:`label_anchors`.
        """
        num_images = gt_labels.shape[0]
        foreground = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_foreground = foreground.sum()
        self._metrics.put("num_pos_anchors", num_foreground / num_images)
        normalizer = self._update_normalizer(num_foreground)
        labelled = LabelledAnchors(
            anchors=_tile_over_images(anchors, num_images),
            deltas=cat(deltas, dim=1).float().reshape(-1, 4),  # image-major, as the tiled anchors
            labels=gt_labels.reshape(-1),
            gt_boxes=gt_boxes.reshape(-1, 4),
            foreground=foreground.reshape(-1),
            box2box_transform=self.box2box_transform,
        )
        logits = cat(logits, dim=1).reshape(-1, self.num_classes)
        return {
            "loss_cls": self.classification_loss(logits, labelled, normalizer),
            "loss_box_reg": self.box_regression_loss(labelled) / normalizer,
        }

    # ------------------------------------------------------------------------------- inference
    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ):
        """Detectron2's ``DenseDetector`` interface: detections from the backbone features and head
        outputs."""
        anchors, logits, deltas = self.dense_outputs(features, predictions)
        return self.inference(anchors, logits, deltas, images.image_sizes)

    @property
    def detection_settings(self) -> DetectionSettings:
        """The test-time settings, read from the attributes (which callers may change)."""
        return DetectionSettings(
            self.test_score_thresh,
            self.test_topk_candidates,
            self.test_nms_thresh,
            self.max_detections_per_image,
        )

    def inference(
        self,
        anchors: List[Boxes],
        logits: List[Tensor],
        deltas: List[Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """Detections per image (in the padded batch's resolution) from :meth:`dense_predictions`'
        outputs."""
        return select_detections(
            anchors, logits, deltas, image_sizes, self.box2box_transform, self.detection_settings
        )

    def inference_padded(
        self, anchors: List[Boxes], logits: List[Tensor], deltas: List[Tensor]
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The detections of :meth:`inference` as fixed-size tensors (boxes [N, D, 4], scores [N,
        D], classes [N, D], num_detections [N]; ``select_detections_padded``), with no Python branch
        on data: for export."""
        return select_detections_padded(
            anchors, logits, deltas, self.box2box_transform, self.detection_settings
        )

    @torch.jit.unused
    def _postprocess(
        self, results: List[Instances], batched_inputs, image_sizes
    ) -> List[Dict[str, Instances]]:
        """Per image, {"instances"} rescaled to the input's "height"/"width" (default: the size it
        had)."""
        outputs = []
        for instances, inputs, (height, width) in zip(results, batched_inputs, image_sizes):
            size = (inputs.get("height", height), inputs.get("width", width))
            outputs.append({"instances": detector_postprocess(instances, *size)})
        return outputs


def _head_feature_shapes(cfg, backbone) -> list:
    """The backbone's ShapeSpecs of ``MODEL.RETINANET.IN_FEATURES``, or an error naming the missing
    ones."""
    backbone_shape = backbone.output_shape()
    missing = [f for f in cfg.MODEL.RETINANET.IN_FEATURES if f not in backbone_shape]
    if missing:
        raise ValueError(
            f"MODEL.RETINANET.IN_FEATURES names {missing}, which the backbone "
            f"{cfg.MODEL.BACKBONE.NAME} does not output (it gives {sorted(backbone_shape)})"
        )
    return [backbone_shape[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]


def _anchor_matcher(cfg) -> Matcher:
    """Detectron2's ``Matcher`` with ``MODEL.RETINANET.IOU_THRESHOLDS``/``IOU_LABELS`` (checked)."""
    thresholds = list(cfg.MODEL.RETINANET.IOU_THRESHOLDS)
    labels = list(cfg.MODEL.RETINANET.IOU_LABELS)
    if thresholds != sorted(thresholds) or len(labels) != len(thresholds) + 1:
        raise ValueError(
            "MODEL.RETINANET.IOU_THRESHOLDS must be increasing with one fewer entry than "
            f"MODEL.RETINANET.IOU_LABELS; got {thresholds} and {labels}"
        )
    return Matcher(
        thresholds,
        labels,
        allow_low_quality_matches=cfg.MODEL.RETINANET_PLUGIN.ALLOW_LOW_QUALITY_MATCHES,
    )


def _tile_over_images(anchors: Tensor, num_images: int) -> Tensor:
    """[N * R, 4]: the [R, 4] anchors once per image, in the order of ``deltas.reshape(-1, 4)``."""
    return anchors.unsqueeze(0).expand(num_images, -1, -1).reshape(-1, 4)
