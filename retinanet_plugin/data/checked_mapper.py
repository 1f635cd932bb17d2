"""The plugin's ``DatasetMapper``: checked image reading (:mod:`.image_reading`) and ground truth
with ignored boxes (:mod:`.training_instances`), for the "read" rows of the policy in
:mod:`.checked_loading`."""

import copy
from typing import Any, Dict

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .image_reading import read_image_checked
from .training_instances import training_instances

__all__ = ["CheckedDatasetMapper"]


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` for detection (image and boxes), reading images with
    :func:`read_image_checked`: errors name the file and image id; grayscale/RGBA/... images are
    converted to ``INPUT.FORMAT`` with a log line; EXIF orientation follows what the annotations
    saw. Crowd boxes and boxes mostly cut off by an augmentation are kept as ignored boxes
    (:func:`training_instances`). Semantic segmentation and precomputed proposals are not supported.

    Extra arguments (from the config: ``MODEL.RETINANET_PLUGIN.CROWD_BOXES``,
    ``CROP_MIN_VISIBLE_FRACTION``, ``DATASETS.EXIF_ORIENTATION``): ``crowd_boxes`` "ignore" or
    "drop", ``min_visible_fraction``, ``exif_orientation`` "auto", "apply" or "ignore".
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        crowd_boxes: str = "ignore",
        min_visible_fraction: float = 0.0,
        exif_orientation: str = "auto",
        **kwargs,
    ):
        super().__init__(is_train, **kwargs)
        self.crowd_boxes = crowd_boxes
        self.min_visible_fraction = min_visible_fraction
        self.exif_orientation = exif_orientation

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        plugin = cfg.MODEL.get("RETINANET_PLUGIN", None)
        if plugin is not None:
            ret["crowd_boxes"] = plugin.get("CROWD_BOXES", "ignore")
            ret["min_visible_fraction"] = plugin.get("CROP_MIN_VISIBLE_FRACTION", 0.0)
        ret["exif_orientation"] = cfg.DATASETS.get("EXIF_ORIENTATION", "auto")
        return ret

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        dataset_dict["instances"] = training_instances(
            dataset_dict.pop("annotations"),
            transforms,
            image_shape,
            crowd_boxes=self.crowd_boxes,
            min_visible_fraction=self.min_visible_fraction,
        )

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image_id = dataset_dict.get("image_id", None)
        has_size = "height" in dataset_dict and "width" in dataset_dict
        expected = (dataset_dict["height"], dataset_dict["width"]) if has_size else None
        image = read_image_checked(
            dataset_dict["file_name"],
            self.image_format,
            image_id,
            expected_size=expected,
            exif_orientation=self.exif_orientation,
        )
        try:
            utils.check_image_size(dataset_dict, image)
        except utils.SizeMismatchError as e:
            raise utils.SizeMismatchError(f"{e} (image id {image_id})") from e
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict
