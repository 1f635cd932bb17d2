"""RetinaNet's class and box subnets, and the registry that lets users swap heads."""

import math
from typing import List, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import CycleBatchNormList, ShapeSpec, get_norm
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.utils.registry import Registry


RETINANET_PLUGIN_HEAD_REGISTRY = Registry("RETINANET_PLUGIN_HEAD")
RETINANET_PLUGIN_HEAD_REGISTRY.__doc__ = """
Heads of the plugin's RetinaNet. A head is built as ``head(cfg, input_shape)`` with
``input_shape: List[ShapeSpec]`` (one per level) and returns ``(logits, box_deltas)``: two lists
with one tensor per level, of shapes [N, A*K, H_i, W_i] and [N, A*4, H_i, W_i].
"""


def build_retinanet_plugin_head(cfg, input_shape: List[ShapeSpec]) -> nn.Module:
    """Build the head named by ``MODEL.RETINANET_PLUGIN.HEAD_NAME``."""
    return RETINANET_PLUGIN_HEAD_REGISTRY.get(cfg.MODEL.RETINANET_PLUGIN.HEAD_NAME)(
        cfg, input_shape
    )


def _norm_layer(norm: str, channels: int, num_levels: int) -> nn.Module:
    """GN (or any Detectron2 norm name) is shared across levels; BN / SyncBN keep one set of
    statistics per level (Detectron2's ``CycleBatchNormList``), since feature statistics differ from
    level to level."""
    if norm in ("BN", "SyncBN"):
        bn_class = nn.BatchNorm2d if norm == "BN" else nn.SyncBatchNorm
        return CycleBatchNormList(length=num_levels, bn_class=bn_class, num_features=channels)
    return get_norm(norm, channels)


def _subnet(in_channels: int, conv_dims: List[int], norm: str, num_levels: int) -> nn.Sequential:
    layers = []
    for out_channels in conv_dims:
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1))
        if norm:
            layers.append(_norm_layer(norm, out_channels, num_levels))
        layers.append(nn.ReLU())
        in_channels = out_channels
    return nn.Sequential(*layers)


@RETINANET_PLUGIN_HEAD_REGISTRY.register()
class RetinaNetPluginHead(nn.Module):
    """Class subnet and box subnet of the paper, shared across levels and not with each other.

    Each subnet is ``len(conv_dims)`` (4) 3x3 convs with ReLU (and an optional norm: ``"GN"`` shared
    across levels, or ``"BN"``/``"SyncBN"`` with statistics per level), followed by a 3x3 conv
    predicting A*K class logits or A*4 box deltas per location. Conv weights start from N(0, 0.01)
    with zero bias, except the class bias, -log((1 - prior) / prior), so that every anchor starts
    with a foreground probability of ``prior_prob``. Module names match Detectron2's
    ``RetinaNetHead``, so its checkpoints load unchanged.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: int,
        conv_dims: List[int],
        norm: str = "",
        prior_prob: float = 0.01,
    ):
        super().__init__()
        if len({s.channels for s in input_shape}) != 1:
            raise ValueError(
                f"all levels must have the same channels, got {[s.channels for s in input_shape]}"
            )
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"MODEL.RETINANET.PRIOR_PROB must be in (0, 1), got {prior_prob}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        in_channels = input_shape[0].channels
        last_dim = conv_dims[-1] if conv_dims else in_channels
        self.cls_subnet = _subnet(in_channels, conv_dims, norm, len(input_shape))
        self.bbox_subnet = _subnet(in_channels, conv_dims, norm, len(input_shape))
        self.cls_score = nn.Conv2d(
            last_dim, num_anchors * num_classes, kernel_size=3, stride=1, padding=1
        )
        self.bbox_pred = nn.Conv2d(last_dim, num_anchors * 4, kernel_size=3, stride=1, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_score.bias, -math.log((1.0 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        num_anchors = _anchors_per_location(cfg, input_shape)
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "num_anchors": num_anchors,
            "conv_dims": [input_shape[0].channels] * cfg.MODEL.RETINANET.NUM_CONVS,
            "norm": cfg.MODEL.RETINANET.NORM,
            "prior_prob": cfg.MODEL.RETINANET.PRIOR_PROB,
        }

    def forward(
        self, features: List[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """features: per level [N, C, H_i, W_i] -> ([N, A*K, H_i, W_i] logits, [N, A*4, H_i, W_i]
        deltas)."""
        logits = [self.cls_score(self.cls_subnet(f)) for f in features]
        deltas = [self.bbox_pred(self.bbox_subnet(f)) for f in features]
        return logits, deltas


def _anchors_per_location(cfg, input_shape: List[ShapeSpec]) -> int:
    """The number of anchors per location that the configured anchor generator produces on every
    level."""
    counts = set(build_anchor_generator(cfg, input_shape).num_cell_anchors)
    if len(counts) != 1:
        raise ValueError(
            f"MODEL.ANCHOR_GENERATOR gives {sorted(counts)} anchors per location on different "
            "levels; "
            "a head shared across levels needs the same number on every level"
        )
    return counts.pop()
