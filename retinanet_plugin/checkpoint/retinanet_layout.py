"""What a RetinaNet checkpoint's names and shapes say.

The plugin's module names are Detectron2's (``backbone.bottom_up.*``, ``backbone.fpn_*``,
``backbone.top_block.p6/p7``, ``head.cls_subnet/bbox_subnet/cls_score/bbox_pred``), so the same
names hold for both. The head's output layers give the class and anchor counts:
``head.bbox_pred.weight`` is (A * 4, C, 3, 3) and ``head.cls_score.weight`` (A * K, C, 3, 3) for
A anchors per location and K classes.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = [
    "BBOX_PRED_KEYS",
    "CLS_SCORE_KEYS",
    "NOT_LEARNED_PREFIXES",
    "OTHER_ARCHITECTURE_PREFIXES",
    "REQUIRED_KEYS",
    "class_count",
    "describe_retinanet_weights",
    "head_counts",
    "missing_retinanet_keys_message",
    "retinanet_shape_problem",
]

CLS_SCORE_KEYS = ("head.cls_score.weight", "head.cls_score.bias")
BBOX_PRED_KEYS = ("head.bbox_pred.weight", "head.bbox_pred.bias")
CLS_SCORE_WEIGHT, BBOX_PRED_WEIGHT = CLS_SCORE_KEYS[0], BBOX_PRED_KEYS[0]
# Weights every Detectron2 RetinaNet has (FPN + P6/P7 on a ResNet).
REQUIRED_KEYS = (
    CLS_SCORE_KEYS
    + BBOX_PRED_KEYS
    + (
        "head.cls_subnet.0.weight",
        "head.bbox_subnet.0.weight",
        "backbone.top_block.p6.weight",
        "backbone.top_block.p7.weight",
        "backbone.bottom_up.stem.conv1.weight",
    )
)
# Entries of old Detectron2 checkpoints that are not learned (the config rebuilds them).
NOT_LEARNED_PREFIXES = ("anchor_generator.cell_anchors.", "pixel_mean", "pixel_std")
# Name prefixes of the weights of other Detectron2 meta-architectures.
OTHER_ARCHITECTURE_PREFIXES = {
    "roi_heads.": "GeneralizedRCNN (Faster/Mask R-CNN)",
    "proposal_generator.": "GeneralizedRCNN (Faster/Mask R-CNN)",
    "sem_seg_head.": "SemanticSegmentor or PanopticFPN",
    "head.cls_logits.": "FCOS",
}
# Depth of a Detectron2 ResNet from its number of res4 blocks, for bottleneck and basic blocks.
DEPTH_FROM_RES4_BLOCKS = {True: {6: 50, 23: 101, 36: 152}, False: {2: 18, 6: 34}}


def head_counts(weights: Mapping[str, Any]) -> Tuple[int, int]:
    """``(num_classes, num_anchors)`` from the output channels of ``head.cls_score.weight``
    (A * K) and ``head.bbox_pred.weight`` (A * 4); tensors or numpy arrays of at least 1-d.
    Raises ``ValueError`` naming the weight when the channels are inconsistent."""
    bbox_out = weights[BBOX_PRED_WEIGHT].shape[0]
    cls_out = weights[CLS_SCORE_WEIGHT].shape[0]
    if bbox_out % 4 != 0 or bbox_out == 0:
        raise ValueError(
            f"{BBOX_PRED_WEIGHT} has {bbox_out} output channels, not a multiple of 4 "
            "(A anchors * 4)"
        )
    num_anchors = bbox_out // 4
    if cls_out % num_anchors != 0 or cls_out == 0:
        raise ValueError(
            f"{CLS_SCORE_WEIGHT} has {cls_out} output channels, not a multiple of the "
            f"{num_anchors} anchors per location that {BBOX_PRED_WEIGHT} implies"
        )
    return cls_out // num_anchors, num_anchors


def class_count(weights: Mapping[str, Any]) -> Optional[int]:
    """The classes of a RetinaNet head's weights (:func:`head_counts`), or None when the weights
    do not tell (no head output layers, scalars, inconsistent channels)."""
    heads = [weights.get(CLS_SCORE_WEIGHT), weights.get(BBOX_PRED_WEIGHT)]
    if any(getattr(w, "ndim", 0) == 0 for w in heads):
        return None
    try:
        return head_counts(weights)[0]
    except ValueError:
        return None


def missing_retinanet_keys_message(weights: Mapping[str, Any]) -> Optional[str]:
    """``"not a Detectron2 RetinaNet checkpoint: missing [...]"`` naming, when it can, the
    architecture the weights look like; None when every required weight is there."""
    missing = [k for k in REQUIRED_KEYS if k not in weights]
    if not missing:
        return None
    found = {
        prefix: architecture
        for prefix, architecture in OTHER_ARCHITECTURE_PREFIXES.items()
        if any(k.startswith(prefix) for k in weights)
    }
    guess = ""
    if found:
        architectures = " or ".join(sorted(set(found.values())))
        has = ", ".join(p + "*" for p in found)
        guess = f"; it looks like a {architectures} checkpoint (has {has})"
    example = ", ".join(sorted(weights)[:5])
    return (
        f"not a Detectron2 RetinaNet checkpoint: missing {missing}{guess} (its first keys: "
        f"{example}, ...)"
    )


def retinanet_shape_problem(weights: Mapping[str, Any]) -> Optional[str]:
    """Why the required weights are not a RetinaNet's: a weight that is not a 4-d kernel, a bias
    that is not 1-d, a scalar among the backbone or head weights. None if they are."""
    for key in REQUIRED_KEYS:
        expected = 4 if key.endswith(".weight") else 1
        if weights[key].dim() != expected:
            kind = key.rsplit(".", 1)[-1]
            return (
                f"{key} has shape {tuple(weights[key].shape)}: a RetinaNet's {kind} there is "
                f"{expected}-d"
            )
    for key, value in weights.items():
        if key.startswith(("backbone.bottom_up.", "head.")) and value.dim() == 0:
            return f"{key} is a scalar (shape ()), not a weight of a RetinaNet"
    return None


def _count_blocks(weights: Mapping[str, Any], stage: str) -> int:
    prefix = f"backbone.bottom_up.{stage}."
    return len({k[len(prefix) :].split(".", 1)[0] for k in weights if k.startswith(prefix)})


def _count_subnet_convs(weights: Mapping[str, Any], subnet: str) -> int:
    prefix = f"head.{subnet}."
    return sum(
        1
        for k, v in weights.items()
        if k.startswith(prefix) and k.endswith(".weight") and v.dim() == 4
    )


def _p6p7_input(p6_in: int, fpn_channels: int, res5_channels: Optional[int]) -> Optional[str]:
    """The feature P6 is computed from: ``"res5"``, ``"p5"``, or None when shapes cannot tell."""
    if p6_in == res5_channels and p6_in != fpn_channels:
        return "res5"
    if p6_in == fpn_channels and p6_in != res5_channels:
        return "p5"
    return None


def describe_retinanet_weights(weights: Mapping[str, Any]) -> Dict[str, Any]:
    """What RetinaNet tensors (shapes checked by :func:`retinanet_shape_problem`) say about the
    model that produced them: ``num_classes``, ``num_anchors``, ``num_convs``, ``fpn_out_channels``,
    ``resnet_depth`` and ``res2_out_channels`` (None when unknown), ``p6p7_input``."""
    num_classes, num_anchors = head_counts(weights)
    fpn_channels = weights["backbone.top_block.p7.weight"].shape[0]
    bottleneck = "backbone.bottom_up.res2.0.conv3.weight" in weights
    last_conv = "conv3" if bottleneck else "conv2"  # the conv that gives a block's output channels
    channels = {}
    for stage in ("res2", "res5"):
        key = f"backbone.bottom_up.{stage}.0.{last_conv}.weight"
        channels[stage] = weights[key].shape[0] if key in weights else None
    p6_in = weights["backbone.top_block.p6.weight"].shape[1]
    return {
        "num_classes": num_classes,
        "num_anchors": num_anchors,
        "num_convs": _count_subnet_convs(weights, "cls_subnet"),
        "fpn_out_channels": fpn_channels,
        "resnet_depth": DEPTH_FROM_RES4_BLOCKS[bottleneck].get(_count_blocks(weights, "res4")),
        "res2_out_channels": channels["res2"],
        "p6p7_input": _p6p7_input(p6_in, fpn_channels, channels["res5"]),
    }
