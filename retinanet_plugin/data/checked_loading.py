"""The dataset dicts a data loader gets, checked: bad input fails early with a message that names
it, or is repaired in a documented, logged way; it never reaches the model unnoticed.

Policy. "load" = when the train/test data loader is built (:func:`load_checked_dataset_dicts`, from
the dataset dicts, before any training step); "read" = when the mapper reads an image
(:class:`.CheckedDatasetMapper`).

============================================ ===== =================================================
Problem                                      When  What
============================================ ===== =================================================
image file missing or empty (0 bytes)        load  error listing every such file with its image id
image file corrupt, truncated, not an image  read  ``UnreadableImageError`` naming the file and the
                                                   image id
image size differs from height/width         read  Detectron2's ``SizeMismatchError``, with the
                                                   image id added
grayscale, palette, RGBA, CMYK... image      read  converted to ``INPUT.FORMAT``, logged (file,
                                                   mode); an alpha channel is dropped, not
                                                   composited
16-bit grayscale image (PIL modes I;16, I)   read  scaled to 8 bits (value >> 8, as PIL does for
                                                   16-bit colour), logged (``image_quirks``)
float image (PIL mode F)                     read  ``UnreadableImageError``: its range is not known
EXIF orientation                             read  applied, unless the dataset's height/width are
                                                   those of the stored pixels (the tool showed them
                                                   unturned), logged; ``DATASETS.EXIF_ORIENTATION``
                                                   (``image_quirks``)
image over PIL's size limit                  read  ``UnreadableImageError`` naming the size and
                                                   ``DATASETS.MAX_IMAGE_PIXELS``
crowd box (``iscrowd: 1``, VOC "difficult")  read  ignored in training (not background), or dropped
                                                   as in Detectron2:
                                                   ``MODEL.RETINANET_PLUGIN.CROWD_BOXES``
box mostly cut off by an augmentation        read  ignored when less than
                                                   ``CROP_MIN_VISIBLE_FRACTION`` of it is left
                                                   (``training_instances``)
no ``file_name``                             load  error naming the dataset and the image's index
train image without an ``annotations`` key   load  error: give an empty list for an image without
                                                   objects
empty annotation list                        load  valid: an image without objects (all anchors are
                                                   background);
                                                   ``DATALOADER.FILTER_EMPTY_ANNOTATIONS True``
                                                   drops such images (Detectron2 logs how many)
category id not in a COCO json's categories  load  error naming the annotation ids, image ids and
                                                   json file (Detectron2's ``load_coco_json`` names
                                                   only the category id)
COCO json file that Detectron2 cannot load   load  error naming the dataset, the json file and what
                                                   is wrong: where the JSON breaks (not UTF-8,
                                                   malformed, not an object), or the entries (index,
                                                   id) with a missing or mistyped field, a repeated
                                                   id, ``ignore``, an unreadable segmentation; no
                                                   traceback from pycocotools or ``load_coco_json``
COCO json file without images                load  error naming the dataset and the json file
no train image has any object                load  error naming the datasets and json files: nothing
                                                   to train on (a COCO file without "annotations"
                                                   gives this)
category id outside [0, #thing_classes)      load  error naming the annotation and the image
bbox missing, not 4 numbers, NaN or inf      load  error naming the annotation and the image
                                                   (strings such as "12" and booleans are not
                                                   numbers)
no ``bbox_mode``                             load  error naming the annotation and the image
relative or rotated ``bbox_mode``            load  error naming the annotation and the image
box partly outside the image                 load  clipped to the image; WARNING with the count and
                                                   the image ids
box entirely outside the image               load  dropped; WARNING with the count and the image ids
box with width or height <= 0                load  dropped; WARNING with the count and the image ids
                                                   (Detectron2's transforms would turn width -10
                                                   into +10)
NUM_CLASSES != number of ``thing_classes``   load  error naming ``MODEL.RETINANET.NUM_CLASSES``, the
                                                   dataset and its class count
============================================ ===== =================================================

Where: the dataset dicts and their boxes, :mod:`.dataset_dict_checks`; COCO json files Detectron2
cannot load, :mod:`.coco_json_checks`; image files, :mod:`.image_reading` and :mod:`.image_quirks`;
crowd and cut-off boxes, :mod:`.training_instances`; the class count, :func:`check_num_classes`
here.

Errors list every problem found in a dataset (the first :data:`.errors.MAX_LISTED` of each kind), so
one run shows them all. For datasets loaded from a COCO json file the error message looks the
annotation ids up in the file.
"""

from typing import Any, Dict, List, Sequence, Union

import torch

from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data.build import (
    filter_images_with_only_crowd_annotations,
    print_instances_class_histogram,
)

from .coco_json_checks import coco_annotation_id_lookup, dataset_dicts_from_catalog
from .dataset_dict_checks import validate_dataset_dicts
from .errors import DatasetValidationError, listed

__all__ = ["check_num_classes", "load_checked_dataset_dicts"]


def check_num_classes(cfg, dataset_name: str) -> int:
    """The dataset's class count; raises when it differs from ``MODEL.RETINANET.NUM_CLASSES``.

    Call it after the dataset was loaded: ``load_coco_json`` sets ``thing_classes`` then. Datasets
    without ``thing_classes`` in their metadata are checked against ``NUM_CLASSES`` only (category
    ids < NUM_CLASSES).
    """
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
    thing_classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    if thing_classes is not None and len(thing_classes) != num_classes:
        shown = listed(list(thing_classes), limit=8)
        raise ValueError(
            f"MODEL.RETINANET.NUM_CLASSES is {num_classes} but dataset '{dataset_name}' has "
            f"{len(thing_classes)} classes (thing_classes: {shown}); set "
            f"MODEL.RETINANET.NUM_CLASSES {len(thing_classes)}."
        )
    return num_classes


def _checked_dicts_of(cfg, name: str, *, is_train: bool) -> List[Dict[str, Any]]:
    """The checked and repaired dicts of one dataset (the repairs logged)."""
    dicts = dataset_dicts_from_catalog(name)
    if isinstance(dicts, torch.utils.data.Dataset):
        raise ValueError(
            f"dataset '{name}' is a torch Dataset; the plugin's loaders need a list of dataset "
            "dicts"
        )
    num_classes = check_num_classes(cfg, name)
    json_file = MetadataCatalog.get(name).get("json_file", None)
    if not dicts:
        raise DatasetValidationError(
            f"Dataset '{name}' is empty" + (f" ({json_file} has no images)" if json_file else "")
        )
    lookup = coco_annotation_id_lookup(json_file) if json_file else None
    dicts, report = validate_dataset_dicts(
        dicts, name, num_classes=num_classes, is_train=is_train, annotation_id_lookup=lookup
    )
    report.log()
    return dicts


def _check_something_to_train_on(cfg, names: List[str], all_dicts: List[Dict[str, Any]]):
    """The training dicts, without images that have no object when
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``; raises when no image has an object."""
    if not any(d.get("annotations") for d in all_dicts):
        files = [MetadataCatalog.get(n).get("json_file", None) for n in names]
        shown = f" (from {', '.join(map(str, filter(None, files)))})" if any(files) else ""
        raise DatasetValidationError(
            f"no image of {names}{shown} has an object: there is nothing to train on (a COCO file "
            "without 'annotations', such as an image-info file, gives this)"
        )
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        all_dicts = filter_images_with_only_crowd_annotations(all_dicts)
        if not all_dicts:
            raise DatasetValidationError(
                f"no image of {names} has an object; set DATALOADER.FILTER_EMPTY_ANNOTATIONS False "
                "to train on them"
            )
    return all_dicts


def load_checked_dataset_dicts(
    cfg, dataset_names: Union[str, Sequence[str]], *, is_train: bool
) -> List[Dict[str, Any]]:
    """The dataset dicts a data loader trains (``is_train``) or tests on, checked and repaired by
    the policy.

    Like Detectron2's ``get_detection_dataset_dicts`` (with ``filter_empty =
    DATALOADER.FILTER_EMPTY_ANNOTATIONS`` for training, False for testing), plus the class count
    check and :func:`.validate_dataset_dicts`. RetinaNet uses neither precomputed proposals nor
    keypoints: configs that ask for them are refused.
    """
    if cfg.MODEL.LOAD_PROPOSALS or cfg.MODEL.KEYPOINT_ON:
        raise ValueError(
            "MODEL.LOAD_PROPOSALS and MODEL.KEYPOINT_ON must be False: RetinaNet uses neither"
        )
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    if not names:
        raise ValueError(f"no dataset given (DATASETS.{'TRAIN' if is_train else 'TEST'} is empty)")
    all_dicts: List[Dict[str, Any]] = []
    for name in names:
        all_dicts.extend(_checked_dicts_of(cfg, name, is_train=is_train))
    if is_train:
        all_dicts = _check_something_to_train_on(cfg, names, all_dicts)
        thing_classes = MetadataCatalog.get(names[0]).get("thing_classes", None)
        if thing_classes is not None:
            utils.check_metadata_consistency("thing_classes", names)
            print_instances_class_histogram(all_dicts, thing_classes)
    return all_dicts
