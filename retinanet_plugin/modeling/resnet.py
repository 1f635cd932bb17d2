"""Detectron2's ResNet, with R18/R34 at any width.

Detectron2's ``build_resnet_backbone`` fixes ``MODEL.RESNETS.RES2_OUT_CHANNELS`` at 64 for the
BasicBlock depths (18, 34), the width of their ImageNet weights. A model trained from scratch on a
CPU (the synthetic demo) gains from a narrower network: with ``RES2_OUT_CHANNELS`` 32 and
``STEM_OUT_CHANNELS`` 32, R18's stages have 32-64-128-256 channels, about a quarter of the
multiply-adds. Every other setting builds exactly Detectron2's network.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    ResNet,
    build_resnet_backbone,
)

BASIC_BLOCK_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
DETECTRON2_BASIC_BLOCK_WIDTH = 64


def build_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    """Detectron2's ResNet from ``MODEL.RESNETS`` and ``MODEL.BACKBONE.FREEZE_AT``; for depth 18 or
    34, ``RES2_OUT_CHANNELS`` may be any width (res2-res5 get 1, 2, 4, 8 times it)."""
    resnets = cfg.MODEL.RESNETS
    width = resnets.RES2_OUT_CHANNELS
    if resnets.DEPTH not in BASIC_BLOCK_STAGES or width == DETECTRON2_BASIC_BLOCK_WIDTH:
        return build_resnet_backbone(cfg, input_shape)
    if width <= 0:
        raise ValueError(f"MODEL.RESNETS.RES2_OUT_CHANNELS must be positive, got {width}")
    for key, supported in (("RES5_DILATION", 1), ("NUM_GROUPS", 1)):
        if resnets.get(key) != supported:
            raise ValueError(
                f"MODEL.RESNETS.{key} must be {supported} for R{resnets.DEPTH}, got "
                f"{resnets.get(key)}"
            )
    if any(resnets.DEFORM_ON_PER_STAGE):
        raise ValueError(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE is not supported for R{resnets.DEPTH}")
    stem = BasicStem(input_shape.channels, resnets.STEM_OUT_CHANNELS, norm=resnets.NORM)
    stages, in_channels = [], resnets.STEM_OUT_CHANNELS
    for index, num_blocks in enumerate(BASIC_BLOCK_STAGES[resnets.DEPTH]):
        out_channels = width * 2**index
        first_stride = 1 if index == 0 else 2
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=resnets.NORM,
            )
        )
        in_channels = out_channels
    return ResNet(
        stem, stages, out_features=resnets.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT
    )
