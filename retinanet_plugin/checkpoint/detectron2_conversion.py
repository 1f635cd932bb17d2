"""Conversion of Detectron2 RetinaNet weights into plugin weights.

The plugin's names are Detectron2's (:mod:`.retinanet_layout`), so a Detectron2 RetinaNet
checkpoint also loads directly through a checkpointer. This is the explicit, validated path: it
checks that the weights are a RetinaNet's, reads the class and anchor counts from the shapes, and
says what it dropped and why.
"""

import logging
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .retinanet_layout import (
    CLS_SCORE_KEYS,
    NOT_LEARNED_PREFIXES,
    describe_retinanet_weights,
    missing_retinanet_keys_message,
    retinanet_shape_problem,
)
from .weight_entries import name_problem, non_finite_problem, strip_ddp_prefix, to_cpu_tensor

__all__ = ["convert_detectron2_retinanet_state_dict"]

logger = logging.getLogger(__name__)

StateDict = "OrderedDict[str, torch.Tensor]"
# Name prefixes of what a plugin RetinaNet holds (its EMA loss normaliser included).
PLUGIN_PREFIXES = ("backbone.", "head.", "loss_normalizer")


def _model_weights(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """The weights of a checkpoint dict or state dict: a non-empty mapping named by strings."""
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get("model"), Mapping):
        state_dict = state_dict["model"]
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ValueError(
            "the checkpoint has no model weights (expected a non-empty name -> tensor mapping)"
        )
    problem = name_problem(state_dict)
    if problem:
        raise ValueError(f"the checkpoint {problem}")
    return state_dict


def _learned_tensors(weights: Mapping[str, Any]) -> Tuple[StateDict, Dict[str, str], int]:
    """``(CPU tensors, dropped name -> why, how many were numpy arrays)``; entries that are not
    learned (anchors, pixel statistics of old checkpoints) are dropped."""
    tensors: StateDict = OrderedDict()
    dropped: Dict[str, str] = {}
    from_numpy = 0
    for key, value in weights.items():
        if key.startswith(NOT_LEARNED_PREFIXES):
            dropped[key] = "not learned: rebuilt from the config"
            continue
        from_numpy += isinstance(value, np.ndarray)
        tensors[key] = to_cpu_tensor(key, value)
    return tensors, dropped, from_numpy


def _check_retinanet(tensors: StateDict) -> None:
    """Raise ``ValueError`` when the tensors are not a whole RetinaNet's, of finite numbers."""
    problem = retinanet_shape_problem(tensors)
    if problem:
        raise ValueError(problem)
    problem = non_finite_problem(tensors)
    if problem:
        raise ValueError(f"the checkpoint {problem}")


def _drop_class_layer(
    tensors: StateDict, dropped: Dict[str, str], checkpoint_classes: int, num_classes: int
) -> None:
    """Remove ``head.cls_score`` (the layer whose shape is the class count), saying so."""
    for key in CLS_SCORE_KEYS:
        del tensors[key]
        dropped[key] = f"checkpoint has {checkpoint_classes} classes, the model {num_classes}"
    logger.warning(
        f"Dropping {', '.join(CLS_SCORE_KEYS)}: the checkpoint has {checkpoint_classes} classes "
        f"but num_classes is {num_classes}; that layer keeps its fresh initialisation, every "
        "other weight is loaded."
    )


def convert_detectron2_retinanet_state_dict(
    state_dict: Mapping[str, Any], num_classes: Optional[int] = None
) -> Tuple[StateDict, Dict[str, Any]]:
    """Turn the model weights of a Detectron2 ``RetinaNet`` checkpoint into the plugin's.

    Args:
        state_dict: name -> tensor or numpy array: the ``"model"`` entry of a ``.pth`` written by
            ``DetectionCheckpointer`` or of a model-zoo ``.pkl`` (the whole checkpoint dict is
            accepted too). A ``module.`` prefix (DistributedDataParallel) is removed.
        num_classes: the plugin model's ``MODEL.RETINANET.NUM_CLASSES``; when it differs from the
            checkpoint's, the class output layer (``head.cls_score``) is dropped with a warning
            and the rest is kept (fine-tuning on another dataset). None keeps it whatever its size.

    Returns:
        ``(new_state_dict, report)``: the weights as CPU tensors under the plugin's names, and a
        dict with ``num_classes``, ``num_anchors``, ``num_convs``, ``fpn_out_channels``,
        ``resnet_depth`` and ``res2_out_channels`` (None when unknown), ``p6p7_input`` (None when
        the shapes cannot tell), ``stripped_prefix``, ``converted_from_numpy`` (how many arrays)
        and ``dropped`` (name -> why).

    Raises:
        ValueError: the weights are not a Detectron2 RetinaNet's (the message names the missing
            keys and, when it can, the architecture they look like), their shapes are
            inconsistent, or some hold NaN or infinite values.
        CheckpointEntryError: an entry is not a tensor or a numpy array torch can take (a
            ``TypeError`` and a ``ValueError``).
    """
    weights = _model_weights(state_dict)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes <= 0):
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    weights, stripped_prefix = strip_ddp_prefix(weights)
    missing = missing_retinanet_keys_message(weights)
    if missing:
        raise ValueError(missing)
    tensors, dropped, from_numpy = _learned_tensors(weights)
    _check_retinanet(tensors)
    report = describe_retinanet_weights(tensors)
    report.update(stripped_prefix=stripped_prefix, converted_from_numpy=from_numpy)
    if num_classes is not None and num_classes != report["num_classes"]:
        _drop_class_layer(tensors, dropped, report["num_classes"], num_classes)
    others = sorted(k for k in tensors if not k.startswith(PLUGIN_PREFIXES))
    if others:
        logger.warning(
            "Keeping entries that a RetinaNet does not have (loading reports them unexpected): "
            f"{others}"
        )
    report["dropped"] = dropped
    return tensors, report
