"""ResNet + FPN backbone with the RetinaNet pyramid P3-P7."""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7

from .frozen_bn_folding import fold_frozen_batchnorms
from .resnet import build_resnet

P6P7_INPUTS = ("res5", "p5")


@BACKBONE_REGISTRY.register()
def build_retinanet_plugin_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's ResNet (depth 18/34/50/101/152; R18/R34 at any width, :mod:`.resnet`) with an
    FPN giving p3-p7.

    P3-P5 come from the FPN over ``MODEL.FPN.IN_FEATURES`` (res3-res5), each with
    ``MODEL.FPN.OUT_CHANNELS`` channels (256). P6 is a 3x3 stride-2 conv on C5 (``res5``, as
    Detectron2) or on P5 (``p5``), chosen by ``MODEL.RETINANET_PLUGIN.P6P7_INPUT``; P7 is a 3x3
    stride-2 conv on ReLU(P6). Strides are 8, 16, 32, 64 and 128 pixels. With
    ``MODEL.RETINANET_PLUGIN.FOLD_FROZEN_BN``, frozen batch norms run folded into their
    convolutions in eval mode.
    """
    p6p7_input = cfg.MODEL.RETINANET_PLUGIN.P6P7_INPUT
    if p6p7_input not in P6P7_INPUTS:
        raise ValueError(
            f"MODEL.RETINANET_PLUGIN.P6P7_INPUT must be one of {P6P7_INPUTS}, got {p6p7_input!r}"
        )
    bottom_up = build_resnet(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    if p6p7_input == "res5":
        if "res5" not in bottom_up.output_shape():
            raise ValueError(
                "MODEL.RETINANET_PLUGIN.P6P7_INPUT is 'res5' but MODEL.RESNETS.OUT_FEATURES "
                f"{cfg.MODEL.RESNETS.OUT_FEATURES} does not include res5"
            )
        in_channels_p6 = bottom_up.output_shape()["res5"].channels
    else:
        in_channels_p6 = out_channels
    fpn = FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(in_channels_p6, out_channels, in_feature=p6p7_input),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    if cfg.MODEL.RETINANET_PLUGIN.FOLD_FROZEN_BN:
        fold_frozen_batchnorms(fpn)
    return fpn
