"""Conversion of Detectron2 RetinaNet checkpoints into plugin checkpoints.

The plugin's module names are Detectron2's (``backbone.bottom_up.*``, ``backbone.fpn_*``,
``backbone.top_block.p6/p7``, ``head.cls_subnet/bbox_subnet/cls_score/bbox_pred``), so a Detectron2
RetinaNet checkpoint also loads directly through ``DetectionCheckpointer``. The functions here are the
explicit, validated path: they check that the weights are a RetinaNet's, read the class and anchor counts
from the shapes, and say what they dropped and why.
"""
import logging
import os
import pickle
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from ..utils import atomic_write
from .safe_pickle import load_pickle_checkpoint, torch_refused_global

logger = logging.getLogger(__name__)

CLS_SCORE_KEYS = ("head.cls_score.weight", "head.cls_score.bias")
BBOX_PRED_KEYS = ("head.bbox_pred.weight", "head.bbox_pred.bias")
# Weights every Detectron2 RetinaNet has (FPN + P6/P7 on a ResNet); missing any of them is an error.
REQUIRED_KEYS = CLS_SCORE_KEYS + BBOX_PRED_KEYS + (
    "head.cls_subnet.0.weight",
    "head.bbox_subnet.0.weight",
    "backbone.top_block.p6.weight",
    "backbone.top_block.p7.weight",
    "backbone.bottom_up.stem.conv1.weight",
)
# Entries of old Detectron2 checkpoints that are not learned (the config rebuilds them): dropped.
NOT_LEARNED_PREFIXES = ("anchor_generator.cell_anchors.", "pixel_mean", "pixel_std")
# Key prefixes that identify other Detectron2 meta-architectures, named in the error message.
OTHER_ARCHITECTURE_PREFIXES = {
    "roi_heads.": "GeneralizedRCNN (Faster/Mask R-CNN)",
    "proposal_generator.": "GeneralizedRCNN (Faster/Mask R-CNN)",
    "sem_seg_head.": "SemanticSegmentor or PanopticFPN",
    "head.cls_logits.": "FCOS",
}
# Depth of a Detectron2 ResNet from the number of blocks in res4, for bottleneck and basic blocks.
_DEPTH_FROM_RES4_BLOCKS = {True: {6: 50, 23: 101, 36: 152}, False: {2: 18, 6: 34}}


def _strip_ddp_prefix(state_dict: Dict[str, Any]) -> Tuple[Dict[str, Any], Optional[str]]:
    prefix = "module."
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()), prefix
    return state_dict, None


class CheckpointEntryError(TypeError, ValueError):
    """A checkpoint entry that is not a numeric tensor or numpy array (a ``TypeError``, and a ``ValueError`` like the
    other problems of a checkpoint's content)."""


def _to_tensor(key: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        try:
            return torch.from_numpy(np.ascontiguousarray(value))
        except (TypeError, ValueError, RuntimeError) as e:  # object, str, float128 or non-native byte order arrays
            raise CheckpointEntryError(
                f"checkpoint entry {key!r} is a numpy array of dtype {value.dtype.str} that torch cannot take ({e})"
            ) from e
    raise CheckpointEntryError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor or numpy array")


def _check_required_shapes(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Every required weight is a 4-d convolution kernel and every required bias 1-d; the stage weights that
    :func:`_describe` reads have an output dimension."""
    for key in REQUIRED_KEYS:
        expected = 4 if key.endswith(".weight") else 1
        if state_dict[key].dim() != expected:
            raise ValueError(
                f"{key} has shape {tuple(state_dict[key].shape)}: a RetinaNet's {key.rsplit('.', 1)[-1]} there is "
                f"{expected}-d"
            )
    for key, value in state_dict.items():
        if key.startswith(("backbone.bottom_up.", "head.")) and value.dim() == 0:
            raise ValueError(f"{key} is a scalar (shape ()), not a weight of a RetinaNet")


def _check_finite(state_dict: Mapping[str, torch.Tensor]) -> None:
    bad = [k for k, v in state_dict.items() if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all()]
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad) - 5} more)" if len(bad) > 5 else "")
        raise ValueError(f"{len(bad)} weights hold NaN or infinite values ({shown}): the checkpoint is damaged")


def _count_blocks(state_dict: Mapping[str, torch.Tensor], stage: str) -> int:
    prefix = f"backbone.bottom_up.{stage}."
    blocks = {k[len(prefix):].split(".", 1)[0] for k in state_dict if k.startswith(prefix)}
    return len(blocks)


def _count_subnet_convs(state_dict: Mapping[str, torch.Tensor], subnet: str) -> int:
    prefix = f"head.{subnet}."
    return sum(1 for k, v in state_dict.items() if k.startswith(prefix) and k.endswith(".weight") and v.dim() == 4)


def _describe(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """What the weights say about the model that produced them (the config it needs to load them)."""
    bbox_out = state_dict["head.bbox_pred.weight"].shape[0]
    cls_out = state_dict["head.cls_score.weight"].shape[0]
    if bbox_out % 4 != 0 or bbox_out == 0:
        raise ValueError(f"head.bbox_pred.weight has {bbox_out} output channels, not a multiple of 4 (A anchors * 4)")
    num_anchors = bbox_out // 4
    if cls_out % num_anchors != 0 or cls_out == 0:
        raise ValueError(
            f"head.cls_score.weight has {cls_out} output channels, not a multiple of the {num_anchors} anchors "
            "per location that head.bbox_pred.weight implies"
        )
    fpn_channels = state_dict["backbone.top_block.p7.weight"].shape[0]
    p6_in = state_dict["backbone.top_block.p6.weight"].shape[1]
    bottleneck = "backbone.bottom_up.res2.0.conv3.weight" in state_dict
    last_conv = "conv3" if bottleneck else "conv2"  # the conv that gives a block's output channels
    stage_channels = {}
    for stage in ("res2", "res5"):
        key = f"backbone.bottom_up.{stage}.0.{last_conv}.weight"
        stage_channels[stage] = state_dict[key].shape[0] if key in state_dict else None
    res5_channels = stage_channels["res5"]
    if p6_in == res5_channels and p6_in != fpn_channels:
        p6p7_input = "res5"
    elif p6_in == fpn_channels and p6_in != res5_channels:
        p6p7_input = "p5"
    else:
        p6p7_input = None  # the shapes cannot tell
    return {
        "num_classes": cls_out // num_anchors,
        "num_anchors": num_anchors,
        "num_convs": _count_subnet_convs(state_dict, "cls_subnet"),
        "fpn_out_channels": fpn_channels,
        "resnet_depth": _DEPTH_FROM_RES4_BLOCKS[bottleneck].get(_count_blocks(state_dict, "res4")),
        "res2_out_channels": stage_channels["res2"],
        "p6p7_input": p6p7_input,
    }


def convert_detectron2_retinanet_state_dict(
    state_dict: Mapping[str, Any], num_classes: Optional[int] = None
) -> Tuple["OrderedDict[str, torch.Tensor]", Dict[str, Any]]:
    """Turn the model weights of a Detectron2 ``RetinaNet`` checkpoint into the plugin's.

    Args:
        state_dict: name -> tensor or numpy array: the ``"model"`` entry of a ``.pth`` written by
            ``DetectionCheckpointer`` or of a model-zoo ``.pkl`` (the whole checkpoint dict is accepted
            too). A ``module.`` prefix (DistributedDataParallel) is removed.
        num_classes: the plugin model's ``MODEL.RETINANET.NUM_CLASSES``; when it differs from the
            checkpoint's, the class output layer (``head.cls_score``) is dropped with a warning and the rest
            is kept (fine-tuning on another dataset). None keeps it whatever its size.

    Returns:
        ``(new_state_dict, report)``: the weights as CPU tensors under the plugin's names, and a dict with
        ``num_classes``, ``num_anchors``, ``num_convs``, ``fpn_out_channels``, ``resnet_depth`` (None when
        unknown), ``p6p7_input`` (None when the shapes cannot tell), ``stripped_prefix``,
        ``converted_from_numpy`` (how many arrays) and ``dropped`` (key -> why).

    Raises:
        ValueError: the weights are not a Detectron2 RetinaNet's (the message names the missing keys and,
            when it can, the architecture they look like), their shapes are inconsistent, or some hold NaN or
            infinite values.
        CheckpointEntryError: an entry is not a tensor or a numpy array torch can take (a ``TypeError`` and a
            ``ValueError``).
    """
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get("model"), Mapping):
        state_dict = state_dict["model"]
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ValueError("the checkpoint has no model weights (expected a non-empty name -> tensor mapping)")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes <= 0):
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")

    not_names = [k for k in state_dict if not isinstance(k, str)]
    if not_names:
        raise ValueError(f"the checkpoint's weights are named by {type(not_names[0]).__name__}s such as "
                         f"{not_names[0]!r}, not by strings")
    weights, stripped_prefix = _strip_ddp_prefix(dict(state_dict))
    missing = [k for k in REQUIRED_KEYS if k not in weights]
    if missing:
        found = {p: a for p, a in OTHER_ARCHITECTURE_PREFIXES.items() if any(k.startswith(p) for k in weights)}
        guess = ""
        if found:
            architectures = " or ".join(sorted(set(found.values())))
            guess = f"; it looks like a {architectures} checkpoint (has {', '.join(p + '*' for p in found)})"
        example = ", ".join(sorted(weights)[:5])
        raise ValueError(
            f"not a Detectron2 RetinaNet checkpoint: missing {missing}{guess} (its first keys: {example}, ...)"
        )

    new_state_dict: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    dropped: Dict[str, str] = {}
    converted = 0
    for key, value in weights.items():
        if key.startswith(NOT_LEARNED_PREFIXES):
            dropped[key] = "not learned: rebuilt from the config"
            continue
        converted += isinstance(value, np.ndarray)
        new_state_dict[key] = _to_tensor(key, value).detach().cpu()

    _check_required_shapes(new_state_dict)
    _check_finite(new_state_dict)
    report = _describe(new_state_dict)
    report.update(stripped_prefix=stripped_prefix, converted_from_numpy=converted)
    if num_classes is not None and num_classes != report["num_classes"]:
        for key in CLS_SCORE_KEYS:
            del new_state_dict[key]
            dropped[key] = f"checkpoint has {report['num_classes']} classes, the model {num_classes}"
        logger.warning(
            f"Dropping {', '.join(CLS_SCORE_KEYS)}: the checkpoint has {report['num_classes']} classes but "
            f"num_classes is {num_classes}; that layer keeps its fresh initialisation, every other weight is loaded."
        )
    others = sorted(k for k in new_state_dict if not k.startswith(("backbone.", "head.", "loss_normalizer")))
    if others:
        logger.warning(f"Keeping entries that a RetinaNet does not have (loading reports them unexpected): {others}")
    report["dropped"] = dropped
    return new_state_dict, report


def load_detectron2_checkpoint(path: str) -> Dict[str, Any]:
    """Read a Detectron2 checkpoint file: a ``.pkl`` of the model zoo (``{"model": {name: ndarray},
    "__author__": ...}``) or a ``.pth`` written by ``DetectionCheckpointer`` (``{"model": state_dict, ...}``).

    Returns the checkpoint dict, always with a ``"model"`` entry. Raises ``ValueError`` naming the file when
    it is neither (for example a Caffe2/Detectron1 ``.pkl``, whose names Detectron2 converts only by
    heuristics: load those through ``DetectionCheckpointer`` instead).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(".pkl"):
        data = load_pickle_checkpoint(path)  # restricted: numpy arrays, plain containers and numbers only
        if not (isinstance(data, dict) and isinstance(data.get("model"), Mapping)):
            caffe2 = isinstance(data, dict) and "blobs" in data
            kind = "a Caffe2/Detectron1 file ('blobs')" if caffe2 else "not a Detectron2 model-zoo file"
            raise ValueError(f"{path}: expected a dict with a 'model' entry (Detectron2 model-zoo format); it is {kind}")
        return data
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only" not in str(e):
            raise ValueError(f"{path} cannot be read: it is truncated or corrupt ({_first_line(e)})") from e
        raise ValueError(
            f"{path}: torch.load(weights_only=True) cannot read it (it holds more than tensors and plain "
            f"containers{_forbidden_global(e)}); if you trust the file, re-save its 'model' entry alone: {e}"
        ) from e
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError, TypeError,
            IndexError, UnicodeDecodeError, MemoryError) as e:
        raise ValueError(f"{path} cannot be read: it is truncated or corrupt ({_first_line(e)})") from e
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        return dict(data)
    if isinstance(data, Mapping) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return {"model": data}  # a bare state dict
    raise ValueError(f"{path}: expected a checkpoint dict with a 'model' entry or a bare state dict")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


def _forbidden_global(error: BaseException) -> str:
    """``"; it asks for the global 'posix.system'"`` from torch's weights-only refusal, or ""."""
    name = torch_refused_global(error)
    return f"; it asks for the global '{name}'" if name else ""


def save_plugin_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str, **extra) -> None:
    """Write ``{"model": state_dict, **extra}`` with ``torch.save`` through a temporary file beside ``path``
    and a rename, so ``path`` is either the previous file or the complete new one, never half-written."""
    atomic_write(path, lambda f: torch.save({"model": OrderedDict(state_dict), **extra}, f))
