"""Ground truth of one training image after its augmentations: objects, and boxes to ignore.

Detectron2's ``DatasetMapper`` drops crowd annotations (``iscrowd: 1``), so the anchors on them are
trained as background, and keeps every box an augmentation cuts, clipped, however little of the
object is left. Here:

- ``iscrowd: 1`` boxes (COCO crowd regions, Pascal VOC "difficult" objects) are kept and marked
  ignored when ``crowd_boxes`` is "ignore" (``MODEL.RETINANET_PLUGIN.CROWD_BOXES``); "drop" is
  Detectron2's behaviour.
- Boxes are clipped to the augmented image (e.g. a random crop, ``INPUT.CROP``); a box of which less
  than ``min_visible_fraction`` of its area is left inside is marked ignored (the object is mostly
  cut off: neither a training object nor background); boxes with nothing left inside are dropped.

Ignored boxes go into the ``Instances`` with ``gt_ignore`` True. The field is only added to images
that have an ignored box, so the model knows without looking at the tensor (no host
synchronisation): the plugin's anchor labelling (``RetinaNetPlugin.label_anchors``) leaves the
anchors that such a box would match out of the classification loss. Other models would read them as
objects: give them data without the field.
"""

from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

__all__ = ["CROWD_BOX_POLICIES", "training_instances"]

CROWD_BOX_POLICIES = ("ignore", "drop")
_MIN_SIDE = 1e-5  # Detectron2's filter_empty_instances threshold


def training_instances(
    annotations: Sequence[Dict[str, Any]],
    transforms: T.TransformList,
    image_shape,
    *,
    crowd_boxes: str = "ignore",
    min_visible_fraction: float = 0.0,
) -> Instances:
    """``Instances`` with ``gt_boxes`` (XYXY, clipped to the image), ``gt_classes`` and, when some
    box is ignored, ``gt_ignore``, from a dataset dict's annotations and the transforms applied to
    its image."""
    if crowd_boxes not in CROWD_BOX_POLICIES:
        raise ValueError(
            f"MODEL.RETINANET_PLUGIN.CROWD_BOXES must be one of {CROWD_BOX_POLICIES}, got "
            f"{crowd_boxes!r}"
        )
    if not 0.0 <= min_visible_fraction <= 1.0:
        raise ValueError(
            "MODEL.RETINANET_PLUGIN.CROP_MIN_VISIBLE_FRACTION must be in [0, 1], got "
            f"{min_visible_fraction}"
        )
    kept: List[Dict[str, Any]] = [
        a for a in annotations if crowd_boxes == "ignore" or not a.get("iscrowd", 0)
    ]
    height, width = int(image_shape[0]), int(image_shape[1])
    instances = Instances((height, width))
    boxes = np.asarray(
        [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in kept],
        dtype=np.float64,
    ).reshape(-1, 4)
    if len(boxes):
        boxes = transforms.apply_box(boxes)
    full_area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    clipped = (
        np.stack(
            [
                np.clip(boxes[:, 0], 0, width),
                np.clip(boxes[:, 1], 0, height),
                np.clip(boxes[:, 2], 0, width),
                np.clip(boxes[:, 3], 0, height),
            ],
            axis=1,
        )
        if len(boxes)
        else boxes
    )
    clipped_w, clipped_h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    inside = (clipped_w > _MIN_SIDE) & (clipped_h > _MIN_SIDE)
    visible = np.divide(
        clipped_w * clipped_h, full_area, out=np.zeros_like(full_area), where=full_area > 0
    )
    crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in kept], dtype=bool)
    ignore = crowd | (visible < min_visible_fraction - 1e-9)
    classes = np.asarray([int(a["category_id"]) for a in kept], dtype=np.int64)
    instances.gt_boxes = Boxes(torch.as_tensor(clipped[inside], dtype=torch.float32).reshape(-1, 4))
    instances.gt_classes = torch.as_tensor(classes[inside], dtype=torch.int64)
    if ignore[inside].any():
        instances.gt_ignore = torch.as_tensor(ignore[inside], dtype=torch.bool)
    return instances
