"""Modeling components; importing this module registers them in Detectron2's registries."""

from .anchor_generator import RetinaNetPluginAnchorGenerator
from .backbone import build_retinanet_plugin_resnet_fpn_backbone
from .head import RETINANET_PLUGIN_HEAD_REGISTRY, RetinaNetPluginHead, build_retinanet_plugin_head
from .meta_arch import RetinaNetPlugin
from .test_time_augmentation import RetinaNetPluginWithTTA

__all__ = [
    "RetinaNetPlugin",
    "RetinaNetPluginAnchorGenerator",
    "RetinaNetPluginHead",
    "RetinaNetPluginWithTTA",
    "RETINANET_PLUGIN_HEAD_REGISTRY",
    "build_retinanet_plugin_head",
    "build_retinanet_plugin_resnet_fpn_backbone",
]
