"""The models compared in the RetinaNet benchmarks: the plugin, Detectron2's ``RetinaNet`` from the
same config, and torchvision's RetinaNet with matching settings.

Shared by ``bench_retinanet.py`` and ``profile_retinanet.py``; their random weights are calibrated
by ``calibration.py`` and saved and loaded by ``weights.py``. ``copy_detectron2_weights`` is the
step that ``tests/test_parity.py`` (``plugin_model_like``) also performs: Detectron2's weights go
into the plugin through the checkpoint converter and load with ``strict=True``, since the parameter
names are the same.
"""

import os
from typing import Dict, Tuple

import torch
from torch import nn

from benchmarks.harness import REPO_ROOT

PLUGIN_CONFIG = os.path.join(REPO_ROOT, "configs", "retinanet_R50.yaml")
MODELS = ("plugin", "detectron2", "torchvision")
# The three keys that turn the plugin's config into Detectron2's own RetinaNet (the rest is shared).
DETECTRON2_COMPONENTS = {
    "MODEL.META_ARCHITECTURE": "RetinaNet",
    "MODEL.BACKBONE.NAME": "build_retinanet_resnet_fpn_backbone",
    "MODEL.ANCHOR_GENERATOR.NAME": "DefaultAnchorGenerator",
}
# Differences of torchvision's RetinaNet that its builder cannot remove (printed with the results).
TORCHVISION_DIFFERENCES = (
    "weights: same seed, not the same values (torchvision's module layout differs); calibrated the "
    "same way",
    "ResNet stride in the 3x3 conv (torchvision) instead of the first 1x1 conv (the config's "
    "RESNETS.STRIDE_IN_1X1: True): the first block of res3-res5 runs that 1x1 conv at 4x the "
    "pixels",
    "anchor sizes rounded to whole pixels by torchvision's AnchorGenerator",
    "input: RGB in [0, 1], normalised inside the model; GeneralizedRCNNTransform resizes by a "
    "factor of exactly 1.0 (min_size/max_size set to the image's sides), a bilinear copy of the "
    "image",
    "losses: per-image loops, normalised by each image's foreground count (no moving average)",
)


def layout_of(model_name: str) -> str:
    """Whose weight layout ``model_name`` has: "torchvision", or "detectron2" (the plugin's too)."""
    return "torchvision" if model_name == "torchvision" else "detectron2"


# ------------------------------------------------------------------------------------------ configs
def plugin_config(device: str = "cpu", depth: int = 50, num_classes: int = 80):
    """The plugin's ``configs/retinanet_R50.yaml`` on ``device``, without pretrained weights (random
    init), with ResNet ``depth`` (18/34/50/101/152)."""
    from retinanet_plugin.engine.config_setup import config_from_file

    cfg, _ = config_from_file(PLUGIN_CONFIG, ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""])
    cfg.MODEL.RESNETS.DEPTH = depth
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    return cfg


def detectron2_config(plugin_cfg):
    """Detectron2's own RetinaNet from the same config: only the three component names change."""
    cfg = plugin_cfg.clone()
    for key, value in DETECTRON2_COMPONENTS.items():
        cfg.merge_from_list([key, value])
    return cfg


# ------------------------------------------------------------------------------------------- models
def build_detectron2_model(plugin_cfg) -> nn.Module:
    from detectron2.modeling import build_model
    from detectron2.modeling.meta_arch.retinanet import RetinaNet

    model = build_model(detectron2_config(plugin_cfg))
    assert type(model) is RetinaNet, type(model)
    return model


def build_plugin_model(plugin_cfg) -> nn.Module:
    from detectron2.modeling import build_model
    from retinanet_plugin.modeling import RetinaNetPlugin

    model = build_model(plugin_cfg)
    assert type(model) is RetinaNetPlugin, type(model)
    return model


def build_model(name: str, plugin_cfg, image_size: Tuple[int, int]) -> nn.Module:
    """The model ``name`` (one of MODELS) from the plugin's config, random weights, on the CPU."""
    if name == "torchvision":
        return build_torchvision_model(plugin_cfg, image_size)
    if name == "detectron2":
        return build_detectron2_model(plugin_cfg)
    return build_plugin_model(plugin_cfg)


def copy_detectron2_weights(
    detectron2_state_dict: Dict[str, torch.Tensor], plugin_model: nn.Module
) -> None:
    """Load Detectron2 RetinaNet weights into the plugin's model through the checkpoint converter;
    every weight must be used and every plugin weight given (the plugin's own loss-normaliser buffer
    aside)."""
    from retinanet_plugin.checkpoint import convert_detectron2_retinanet_state_dict

    state_dict, report = convert_detectron2_retinanet_state_dict(detectron2_state_dict)
    if report["dropped"]:
        raise RuntimeError(f"the converter dropped Detectron2 weights: {report['dropped']}")
    plugin_model.load_state_dict(state_dict, strict=True)


def torchvision_backbone(model_cfg):
    """torchvision's ResNet-FPN with the config's depth, frozen stages and P6/P7 input."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    c5_channels = 2048 if model_cfg.RESNETS.DEPTH >= 50 else 512
    fpn_channels = 256  # torchvision's resnet_fpn_backbone has no other width
    if model_cfg.FPN.OUT_CHANNELS != fpn_channels:
        raise ValueError(
            f"torchvision's FPN is {fpn_channels} wide; the config asks for "
            f"{model_cfg.FPN.OUT_CHANNELS}"
        )
    p6_from_c5 = model_cfg.RETINANET_PLUGIN.P6P7_INPUT == "res5"
    return resnet_fpn_backbone(
        backbone_name=f"resnet{model_cfg.RESNETS.DEPTH}",
        weights=None,
        # FREEZE_AT 2: stem + res2 frozen, 3 stages train
        trainable_layers=5 - model_cfg.BACKBONE.FREEZE_AT,
        returned_layers=[2, 3, 4],
        # torchvision feeds P6 from P5 when in_channels == out_channels, else from C5.
        extra_blocks=LastLevelP6P7(c5_channels if p6_from_c5 else fpn_channels, fpn_channels),
    )


def build_torchvision_model(plugin_cfg, image_size: Tuple[int, int]) -> nn.Module:
    """torchvision's RetinaNet with the config's settings: ResNet-``depth`` FPN on C3-C5, P6 from C5
    (or P5 as the config says), P7, FrozenBN, stem and res2 frozen (``MODEL.BACKBONE.FREEZE_AT``),
    the config's anchor sizes and ratios (9 per location), IoU thresholds, top-k, score and NMS
    thresholds, detections per image, and images kept at ``image_size`` (height, width) by its
    transform. Random weights."""
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    model_cfg = plugin_cfg.MODEL
    backbone = torchvision_backbone(model_cfg)
    levels = len(model_cfg.RETINANET.IN_FEATURES)
    sizes = [tuple(float(s) for s in level) for level in model_cfg.ANCHOR_GENERATOR.SIZES]
    ratios = [tuple(float(r) for r in level) for level in model_cfg.ANCHOR_GENERATOR.ASPECT_RATIOS]
    sizes = sizes * levels if len(sizes) == 1 else sizes
    ratios = ratios * levels if len(ratios) == 1 else ratios
    bg_iou, fg_iou = model_cfg.RETINANET.IOU_THRESHOLDS
    model = RetinaNet(
        backbone,
        num_classes=model_cfg.RETINANET.NUM_CLASSES,
        min_size=min(image_size),
        max_size=max(image_size),
        anchor_generator=AnchorGenerator(tuple(sizes), tuple(ratios)),
        score_thresh=model_cfg.RETINANET.SCORE_THRESH_TEST,
        nms_thresh=model_cfg.RETINANET.NMS_THRESH_TEST,
        detections_per_img=plugin_cfg.TEST.DETECTIONS_PER_IMAGE,
        fg_iou_thresh=fg_iou,
        bg_iou_thresh=bg_iou,
        topk_candidates=model_cfg.RETINANET.TOPK_CANDIDATES_TEST,
        size_divisible=32,  # as Detectron2's FPN pads (the stride of res5)
    )
    return model


def keep_torchvision_image_size(model: nn.Module, image_size: Tuple[int, int]) -> None:
    """Make torchvision's transform resize ``image_size`` images by exactly 1.0 (no change of
    size)."""
    model.transform.min_size = (min(image_size),)
    model.transform.max_size = max(image_size)
