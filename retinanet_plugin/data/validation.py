"""Checks of detection datasets, so that bad input fails early with a message that names it, or is repaired in a
documented, logged way; it never reaches the model unnoticed.

Policy. "load" = when the train/test data loader is built (:func:`load_checked_dataset_dicts`, from the dataset
dicts, before any training step); "read" = when the mapper reads an image (:class:`CheckedDatasetMapper`).

============================================ ===== ===================================================================
Problem                                      When  What happens
============================================ ===== ===================================================================
image file missing or empty (0 bytes)        load  error listing every such file with its image id
image file corrupt, truncated, not an image  read  ``UnreadableImageError`` naming the file and the image id
image size differs from height/width         read  Detectron2's ``SizeMismatchError``, with the image id added
grayscale, palette, RGBA, CMYK... image      read  converted to ``INPUT.FORMAT``, logged (file, mode); an alpha
                                                   channel is dropped, not composited
16-bit grayscale image (PIL modes I;16, I)   read  scaled to 8 bits (value >> 8, as PIL does for 16-bit colour),
                                                   logged (``image_quirks``)
float image (PIL mode F)                     read  ``UnreadableImageError``: its range is not known
EXIF orientation                             read  applied, unless the dataset's height/width are those of the
                                                   stored pixels (the tool showed them unturned), logged;
                                                   ``DATASETS.EXIF_ORIENTATION`` (``image_quirks``)
image over PIL's size limit                  read  ``UnreadableImageError`` naming the size and
                                                   ``DATASETS.MAX_IMAGE_PIXELS``
crowd box (``iscrowd: 1``, VOC "difficult")  read  ignored in training (not background), or dropped as in
                                                   Detectron2: ``MODEL.RETINANET_PLUGIN.CROWD_BOXES``
box mostly cut off by an augmentation        read  ignored when less than ``CROP_MIN_VISIBLE_FRACTION`` of it is
                                                   left (``training_instances``)
no ``file_name``                             load  error naming the dataset and the image's index
train image without an ``annotations`` key   load  error: give an empty list for an image without objects
empty annotation list                        load  valid: an image without objects (all anchors are background);
                                                   ``DATALOADER.FILTER_EMPTY_ANNOTATIONS True`` drops such images
                                                   (Detectron2 logs how many)
category id not in a COCO json's categories  load  error naming the annotation ids, image ids and json file
                                                   (Detectron2's ``load_coco_json`` names only the category id)
COCO json file that Detectron2 cannot load   load  error naming the dataset, the json file and what is wrong:
                                                   where the JSON breaks (not UTF-8, malformed, not an object),
                                                   or the entries (index, id) with a missing or mistyped field, a
                                                   repeated id, ``ignore``, an unreadable segmentation; no
                                                   traceback from pycocotools or ``load_coco_json``
COCO json file without images                load  error naming the dataset and the json file
no train image has any object                load  error naming the datasets and json files: nothing to train on
                                                   (a COCO file without "annotations" gives this)
category id outside [0, #thing_classes)      load  error naming the annotation and the image
bbox missing, not 4 numbers, NaN or inf      load  error naming the annotation and the image (strings such
                                                   as "12" and booleans are not numbers)
no ``bbox_mode``                             load  error naming the annotation and the image
relative or rotated ``bbox_mode``            load  error naming the annotation and the image
box partly outside the image                 load  clipped to the image; WARNING with the count and the image ids
box entirely outside the image               load  dropped; WARNING with the count and the image ids
box with width or height <= 0                load  dropped; WARNING with the count and the image ids
                                                   (Detectron2's transforms would turn width -10 into +10)
NUM_CLASSES != number of ``thing_classes``   load  error naming ``MODEL.RETINANET.NUM_CLASSES``, the dataset
                                                   and its class count
============================================ ===== ===================================================================

Errors list every problem found in a dataset (the first :data:`MAX_LISTED` of each kind), so one run shows them
all. Box checks need the image's ``height`` and ``width`` in the dict (COCO json always has them). Annotations are
named by their COCO ``id`` when the dict carries it, else by their position in the image's list; for
datasets loaded from a COCO json file the error message looks the ids up in the file.
"""
import copy
import dataclasses
import json
import logging
import math
import os
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from detectron2.config import configurable
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.build import filter_images_with_only_crowd_annotations, print_instances_class_histogram
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from .image_quirks import SIXTEEN_BIT_MODES, orient_as_annotated, sixteen_bit_to_8bit, size_limit_message
from .training_instances import training_instances

__all__ = [
    "CheckedDatasetMapper",
    "DatasetValidationError",
    "UnreadableImageError",
    "ValidationReport",
    "check_num_classes",
    "coco_annotation_id_lookup",
    "load_checked_dataset_dicts",
    "read_image_checked",
    "validate_dataset_dicts",
]

logger = logging.getLogger(__name__)

MAX_LISTED = 10  # problems of one kind named in an error or log line; the rest are counted
_SUPPORTED_BOX_MODES = (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
_FLOAT_MODES = ("F",)


class DatasetValidationError(ValueError):
    """A dataset dict that cannot be trained on; the message names the dataset, image and annotation."""


class UnreadableImageError(OSError):
    """An image file that exists but cannot be decoded into an 8-bit image."""


# ---------------------------------------------------------------------------------------------------------------
# Dataset dicts
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ValidationReport:
    """What :func:`validate_dataset_dicts` found and repaired in one dataset (image ids per fix-up)."""

    dataset_name: str
    num_images: int = 0
    num_annotations: int = 0
    images_without_objects: List[Any] = dataclasses.field(default_factory=list)
    clipped: Dict[Any, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    dropped_outside: Dict[Any, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    dropped_degenerate: Dict[Any, int] = dataclasses.field(default_factory=lambda: defaultdict(int))

    def log(self) -> None:
        """One WARNING line per kind of fix-up (count and image ids), one INFO line for images without objects."""
        for counts, what in (
            (self.clipped, "boxes partly outside their image were clipped to it"),
            (self.dropped_outside, "boxes entirely outside their image were dropped"),
            (self.dropped_degenerate, "boxes with width or height <= 0 were dropped"),
        ):
            if counts:
                logger.warning(
                    f"Dataset '{self.dataset_name}': {sum(counts.values())} {what}, in {len(counts)} images "
                    f"(image ids {_listed(sorted(counts, key=str))})."
                )
        if self.images_without_objects:
            logger.info(
                f"Dataset '{self.dataset_name}': {len(self.images_without_objects)} of {self.num_images} images have "
                f"no objects (image ids {_listed(self.images_without_objects)})."
            )


def _listed(items: Sequence[Any], limit: int = MAX_LISTED) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _image_label(record: Dict[str, Any], index: int) -> str:
    image_id = record.get("image_id", None)
    where = f"image id {image_id}" if image_id is not None else f"image #{index}"
    file_name = record.get("file_name", None)
    return f"{where} ({file_name})" if file_name else where


AnnotationIdLookup = Callable[[Any, int, Any], Optional[Any]]  # (image id, position, bbox) -> annotation id


def _annotation_label(annotation: Any, position: int, image_id: Any, lookup: Optional[AnnotationIdLookup]) -> str:
    if isinstance(annotation, dict) and "id" in annotation:
        return f"annotation id {annotation['id']}"
    found = None
    if lookup is not None and isinstance(annotation, dict):
        found = lookup(image_id, position, annotation.get("bbox"))
    return f"annotation id {found}" if found is not None else f"annotation #{position}"


def coco_annotation_id_lookup(json_file: str) -> AnnotationIdLookup:
    """Find the COCO ``id`` of a loaded annotation (``load_coco_json`` does not keep it) from its image id, position
    in the image's list and bbox; the file is read on the first call only. None when no annotation matches."""
    by_image: Optional[Dict[Any, List[Dict[str, Any]]]] = None

    def lookup(image_id: Any, position: int, bbox: Any) -> Optional[Any]:
        nonlocal by_image
        if by_image is None:
            with PathManager.open(json_file, "r") as f:
                annotations = json.load(f).get("annotations", [])
            by_image = defaultdict(list)
            for a in annotations:
                by_image[a.get("image_id")].append(a)
        candidates = by_image.get(image_id, [])
        if position < len(candidates) and candidates[position].get("bbox") == bbox:
            return candidates[position].get("id")
        return next((a.get("id") for a in candidates if a.get("bbox") == bbox), None)

    return lookup


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """An int or float (numpy's too), not a bool, a string or a complex number."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_annotation(annotation: Any, num_classes: int, image_size: Optional[Tuple[float, float]]):
    """Returns ``(problem, None)`` for an error, or ``(None, action)`` with action one of None (keep as is),
    ("clip", new_bbox), "outside" or "degenerate" (drop)."""
    if not isinstance(annotation, dict):
        return f"is a {type(annotation).__name__}, not a dict", None
    category = annotation.get("category_id", None)
    if isinstance(category, bool) or not isinstance(category, (int, np.integer)):
        return f"has category_id {category!r}, not an integer", None
    if not 0 <= category < num_classes:
        return (
            f"has category_id {category}, outside [0, {num_classes}) (the dataset's {num_classes} classes; ids must be "
            "contiguous and 0-based: register COCO json files with register_coco_instances, which maps them)",
            None,
        )
    bbox = annotation.get("bbox", None)
    if bbox is None:
        return "has no bbox", None
    try:
        items = list(bbox)
    except TypeError:
        return f"has bbox {bbox!r}, not 4 numbers", None
    if isinstance(bbox, (str, bytes)) or not all(_is_number(v) for v in items):  # "1" is text, True is no number
        return f"has bbox {bbox!r}, not 4 numbers", None
    values = [float(v) for v in items]
    if len(values) != 4:
        return f"has bbox {bbox!r}, not 4 numbers", None
    if not all(math.isfinite(v) for v in values):
        return f"has bbox {values} with a NaN or infinite coordinate", None
    if "bbox_mode" not in annotation:  # Detectron2's transforms read it: no silent default
        return "has no bbox_mode (Detectron2's dataset dicts need one, e.g. BoxMode.XYWH_ABS)", None
    mode = annotation["bbox_mode"]
    try:
        mode = BoxMode(mode)
    except ValueError:
        return f"has bbox_mode {mode!r}, not a BoxMode", None
    if mode not in _SUPPORTED_BOX_MODES:
        return f"has bbox_mode {mode.name}; only XYWH_ABS and XYXY_ABS (absolute pixels) are supported", None
    x0, y0 = values[0], values[1]
    x1, y1 = (x0 + values[2], y0 + values[3]) if mode == BoxMode.XYWH_ABS else (values[2], values[3])
    if x1 <= x0 or y1 <= y0:
        return None, "degenerate"
    if image_size is None:
        return None, None
    height, width = image_size
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        return None, "outside"
    if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
        return None, None
    clipped = [cx0, cy0, cx1 - cx0, cy1 - cy0] if mode == BoxMode.XYWH_ABS else [cx0, cy0, cx1, cy1]
    return None, ("clip", clipped)


def _image_size(record: Dict[str, Any]) -> Tuple[Optional[Tuple[float, float]], Optional[str]]:
    if "height" not in record and "width" not in record:
        return None, None
    height, width = record.get("height"), record.get("width")
    ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (height, width))
    if not ok:
        return None, f"has height {height!r} and width {width!r}; both must be positive integers"
    return (float(height), float(width)), None


def _file_problem(file_name: str) -> Optional[str]:
    """Why a local image file cannot be used (None if it is there and not empty; remote paths are not checked)."""
    if "://" in file_name:
        return None
    try:
        size = os.path.getsize(file_name)
    except OSError:
        return "does not exist"
    return "is empty (0 bytes)" if size == 0 else None


def validate_dataset_dicts(
    dataset_dicts: List[Dict[str, Any]],
    dataset_name: str,
    *,
    num_classes: int,
    is_train: bool = True,
    check_files: bool = True,
    annotation_id_lookup: Optional[AnnotationIdLookup] = None,
) -> Tuple[List[Dict[str, Any]], ValidationReport]:
    """Check the dicts of one dataset and repair what the policy (module docstring) repairs.

    Args:
        dataset_dicts: Detectron2 dataset dicts; not modified (repaired images get new dicts).
        dataset_name: named in messages.
        num_classes: category ids must be in [0, num_classes).
        is_train: when False only the images are checked (a test loader drops the annotations).
        check_files: check that each local image file exists and is not empty.
        annotation_id_lookup: names annotations that carry no ``id`` in error messages (see
            :func:`coco_annotation_id_lookup`); else they are named by their position in the image's list.
    Returns:
        ``(dicts, report)``; ``dicts`` holds the repaired dicts in the original order.
    Raises:
        DatasetValidationError: listing every problem that is an error.
    """
    report = ValidationReport(dataset_name, num_images=len(dataset_dicts))
    problems: Dict[str, List[str]] = defaultdict(list)
    out: List[Dict[str, Any]] = []
    for index, record in enumerate(dataset_dicts):
        if not isinstance(record, dict):
            problems["image entries that are not dicts"].append(f"image #{index} is a {type(record).__name__}")
            continue
        label = _image_label(record, index)
        file_name = record.get("file_name", None)
        if not file_name:
            problems["images without a file_name"].append(label)
        elif check_files:
            why = _file_problem(os.fspath(file_name))
            if why:
                problems["image files missing or empty"].append(f"{label}: the file {why}")
        image_size, size_problem = _image_size(record)
        if size_problem:
            problems["bad image sizes"].append(f"{label} {size_problem}")
        if not is_train:
            out.append(record)
            continue
        if "annotations" not in record:
            problems["train images without an 'annotations' list"].append(
                f"{label} has no 'annotations' (give an empty list for an image without objects)"
            )
            out.append(record)
            continue
        annotations = record["annotations"]
        report.num_annotations += len(annotations)
        image_id = record.get("image_id", index)
        kept, changed = [], False
        for position, annotation in enumerate(annotations):
            problem, action = _check_annotation(annotation, num_classes, image_size)
            if problem:
                which = _annotation_label(annotation, position, image_id, annotation_id_lookup)
                problems["bad annotations"].append(f"{label}: {which} {problem}")
                continue
            if action is None:
                kept.append(annotation)
            elif action == "outside":
                report.dropped_outside[image_id] += 1
                changed = True
            elif action == "degenerate":
                report.dropped_degenerate[image_id] += 1
                changed = True
            else:
                report.clipped[image_id] += 1
                kept.append(dict(annotation, bbox=action[1]))
                changed = True
        if not kept:
            report.images_without_objects.append(image_id)
        out.append(dict(record, annotations=kept) if changed else record)
    if problems:
        raise DatasetValidationError(_problems_message(dataset_name, problems))
    return out, report


def _problems_message(dataset_name: str, problems: Dict[str, List[str]]) -> str:
    lines = [f"Dataset '{dataset_name}' cannot be used:"]
    for kind, items in problems.items():
        lines.append(f"  {len(items)} {kind}:")
        lines += [f"    {item}" for item in items[:MAX_LISTED]]
        if len(items) > MAX_LISTED:
            lines.append(f"    ... and {len(items) - MAX_LISTED} more")
    return "\n".join(lines)


def _unknown_category_message(dataset_name: str, json_file: str) -> Optional[str]:
    """Name the annotations of a COCO json file whose category_id is not among its categories (None if none)."""
    with PathManager.open(json_file, "r") as f:
        coco = json.load(f)
    category_ids = sorted(c["id"] for c in coco.get("categories", []))
    images = {image["id"]: image.get("file_name", "?") for image in coco.get("images", [])}
    bad = [a for a in coco.get("annotations", []) if a.get("category_id") not in set(category_ids)]
    if not bad:
        return None
    known = f"ids {_listed(category_ids)}" if category_ids else "the file has none"
    lines = [
        f"Dataset '{dataset_name}' ({json_file}): {len(bad)} annotations have a category_id that is not among the "
        f"file's categories ({known}):"
    ]
    for a in bad[:MAX_LISTED]:
        lines.append(
            f"  annotation id {a.get('id')} of image id {a.get('image_id')} ({images.get(a.get('image_id'), '?')}): "
            f"category_id {a.get('category_id')}"
        )
    if len(bad) > MAX_LISTED:
        lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    lines.append("Add the missing categories to 'categories', or fix or remove these annotations.")
    return "\n".join(lines)


def _coco_section_problems(coco: Dict[str, Any]) -> Dict[str, List[str]]:
    """What in a parsed COCO instances dict makes ``pycocotools.COCO`` or Detectron2's ``load_coco_json`` fail, by
    kind (entries named by their index and id)."""
    problems: Dict[str, List[str]] = defaultdict(list)
    sections = {}
    for key in ("images", "annotations", "categories"):
        value = coco.get(key, [])
        if not isinstance(value, list):
            problems["sections that are not lists"].append(f"'{key}' is a {type(value).__name__}")
            value = []
        sections[key] = value
    image_ids, category_ids, annotation_ids = set(), set(), set()
    for i, image in enumerate(sections["images"]):
        if not isinstance(image, dict):
            problems["images that are not objects"].append(f"images[{i}] is a {type(image).__name__}")
            continue
        image_id = image.get("id")
        if not _is_id(image_id):
            problems["images without an integer id"].append(f"images[{i}] has id {image_id!r}")
        else:
            image_ids.add(image_id)
        if not isinstance(image.get("file_name"), str):
            problems["images without a file_name string"].append(
                f"images[{i}] (id {image_id!r}) has file_name {image.get('file_name', '(none)')!r}"
            )
        missing = [k for k in ("height", "width") if k not in image]
        if missing:
            problems["images without height or width"].append(f"images[{i}] (id {image_id!r}) has no {missing}")
    for i, category in enumerate(sections["categories"]):
        if not isinstance(category, dict):
            problems["categories that are not objects"].append(f"categories[{i}] is a {type(category).__name__}")
            continue
        if not _is_id(category.get("id")):
            problems["categories without an integer id"].append(f"categories[{i}] has id {category.get('id')!r}")
        elif category["id"] in category_ids:
            problems["categories with the same id"].append(f"categories[{i}] repeats id {category['id']}")
        else:
            category_ids.add(category["id"])
        if "name" not in category:
            problems["categories without a name"].append(f"categories[{i}] (id {category.get('id')!r})")
    if not sections["categories"] and "categories" not in problems:
        problems["files without categories"].append("'categories' is missing or empty")
    for i, annotation in enumerate(sections["annotations"]):
        if not isinstance(annotation, dict):
            problems["annotations that are not objects"].append(f"annotations[{i}] is a {type(annotation).__name__}")
            continue
        annotation_id = annotation.get("id")
        where = f"annotations[{i}] (id {annotation_id!r})"
        if not _is_id(annotation_id):
            problems["annotations without an integer id"].append(f"annotations[{i}] has id {annotation_id!r}")
        elif annotation_id in annotation_ids:
            problems["annotations with the same id"].append(f"annotations[{i}] repeats id {annotation_id}")
        else:
            annotation_ids.add(annotation_id)
        if not _is_id(annotation.get("image_id")):
            problems["annotations without an integer image_id"].append(
                f"{where} has image_id {annotation.get('image_id', '(none)')!r}"
            )
        if not _is_id(annotation.get("category_id")):
            problems["annotations without an integer category_id"].append(
                f"{where} has category_id {annotation.get('category_id', '(none)')!r}"
            )
        if annotation.get("ignore", 0) != 0:
            problems["annotations with 'ignore' (not supported by Detectron2)"].append(where)
        bbox = annotation.get("bbox", None)
        if "bbox" in annotation and not (isinstance(bbox, list) and bbox):
            problems["annotations whose bbox is not a list of 4 numbers"].append(f"{where} has bbox {bbox!r}")
        why = _segmentation_problem(annotation.get("segmentation", None))
        if why:
            problems["annotations with an unreadable segmentation"].append(f"{where}: {why}")
        keypoints = annotation.get("keypoints", None)
        if keypoints and not (isinstance(keypoints, list) and all(_is_number(v) for v in keypoints)):
            problems["annotations whose keypoints are not a list of numbers"].append(f"{where}")
    return problems


def _segmentation_problem(segmentation: Any) -> Optional[str]:
    """Why Detectron2's ``load_coco_json`` cannot read a COCO segmentation (None if it can, or if there is none)."""
    if not segmentation:
        return None
    if isinstance(segmentation, dict):
        counts, size = segmentation.get("counts", None), segmentation.get("size", None)
        if not (isinstance(size, list) and len(size) == 2 and all(_is_id(v) and v > 0 for v in size)):
            return f"RLE size {size!r} is not [height, width]"
        if isinstance(counts, list):
            if not all(_is_id(v) and v >= 0 for v in counts) or sum(counts) != size[0] * size[1]:
                return f"uncompressed RLE counts do not add up to {size[0]} x {size[1]}"
            return None
        if not isinstance(counts, str):
            return f"RLE counts is a {type(counts).__name__}"
        return None
    if not isinstance(segmentation, list):
        return f"is a {type(segmentation).__name__}, not polygons or RLE"
    if not all(isinstance(poly, list) and all(_is_number(v) for v in poly) for poly in segmentation):
        return "polygons are not lists of numbers"
    return None


def _coco_json_problem(json_file: str) -> Optional[str]:
    """What is wrong with a COCO json file that Detectron2 could not load, in a few lines (None if nothing is
    found)."""
    try:
        with PathManager.open(json_file, "rb") as f:
            raw = f.read()
    except OSError as e:
        return f"cannot be read ({type(e).__name__}: {e})"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
    if not text.strip():
        return "is empty"
    try:
        coco = json.loads(text)
    except json.JSONDecodeError as e:
        return f"is not valid JSON ({e.msg}: line {e.lineno}, column {e.colno}): it is truncated or corrupt"
    except RecursionError:
        return "nests lists or objects deeper than Python's json parser can read"
    if not isinstance(coco, dict):
        return f"holds a JSON {type(coco).__name__}, not an object with 'images', 'annotations' and 'categories'"
    problems = _coco_section_problems(coco)
    if not problems:
        return None
    lines = []
    for kind, items in problems.items():
        lines.append(f"  {len(items)} {kind}: " + "; ".join(items[:MAX_LISTED])
                     + (f"; ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""))
    return "is not a COCO instances file Detectron2 can load:\n" + "\n".join(lines)


def _get_dataset_dicts(dataset_name: str):
    """DatasetCatalog.get; for a dataset registered from a COCO json file, any failure to load it becomes a
    ``DatasetValidationError`` naming the dataset, the file and what is wrong in it (an unknown category id: the
    annotations; malformed JSON: where; a missing or mistyped field: the entries), instead of a traceback from inside
    pycocotools or Detectron2's ``load_coco_json``."""
    try:
        return DatasetCatalog.get(dataset_name)
    except Exception as e:  # noqa: BLE001 - whatever the loader raised, the message below names the file
        json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
        if not json_file or dataset_name not in DatasetCatalog.list():
            raise
        message = None
        if isinstance(e, KeyError):
            try:
                message = _unknown_category_message(dataset_name, json_file)
            except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
                message = None
        if message is None:
            problem = _coco_json_problem(json_file)
            detail = str(e).splitlines()[0][:300] if str(e) else ""
            cause = f"{type(e).__name__}{': ' + detail if detail else ''}"
            if problem:
                message = f"Dataset '{dataset_name}': the COCO json file {json_file} {problem}\n(Detectron2: {cause})"
            else:
                message = f"Dataset '{dataset_name}': Detectron2 cannot load the COCO json file {json_file} ({cause})"
        raise DatasetValidationError(message) from e


def check_num_classes(cfg, dataset_name: str) -> int:
    """The dataset's class count; raises when it differs from ``MODEL.RETINANET.NUM_CLASSES``.

    Call it after the dataset was loaded: ``load_coco_json`` sets ``thing_classes`` then. Datasets without
    ``thing_classes`` in their metadata are checked against ``NUM_CLASSES`` only (category ids < NUM_CLASSES).
    """
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
    thing_classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    if thing_classes is not None and len(thing_classes) != num_classes:
        shown = _listed(list(thing_classes), limit=8)
        raise ValueError(
            f"MODEL.RETINANET.NUM_CLASSES is {num_classes} but dataset '{dataset_name}' has {len(thing_classes)} "
            f"classes (thing_classes: {shown}); set MODEL.RETINANET.NUM_CLASSES {len(thing_classes)}."
        )
    return num_classes


def load_checked_dataset_dicts(
    cfg, dataset_names: Union[str, Sequence[str]], *, is_train: bool
) -> List[Dict[str, Any]]:
    """The dataset dicts a data loader trains (``is_train``) or tests on, checked and repaired by the policy.

    Like Detectron2's ``get_detection_dataset_dicts`` (with ``filter_empty = DATALOADER.FILTER_EMPTY_ANNOTATIONS``
    for training, False for testing), plus the class count check and :func:`validate_dataset_dicts`.
    RetinaNet uses neither precomputed proposals nor keypoints: configs that ask for them are refused.
    """
    if cfg.MODEL.LOAD_PROPOSALS or cfg.MODEL.KEYPOINT_ON:
        raise ValueError("MODEL.LOAD_PROPOSALS and MODEL.KEYPOINT_ON must be False: RetinaNet uses neither")
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    if not names:
        raise ValueError(f"no dataset given (DATASETS.{'TRAIN' if is_train else 'TEST'} is empty)")
    all_dicts: List[Dict[str, Any]] = []
    for name in names:
        dicts = _get_dataset_dicts(name)
        if isinstance(dicts, torch.utils.data.Dataset):
            raise ValueError(f"dataset '{name}' is a torch Dataset; the plugin's loaders need a list of dataset dicts")
        num_classes = check_num_classes(cfg, name)
        json_file = MetadataCatalog.get(name).get("json_file", None)
        if not dicts:
            raise DatasetValidationError(f"Dataset '{name}' is empty" + (f" ({json_file} has no images)" if json_file else ""))
        lookup = coco_annotation_id_lookup(json_file) if json_file else None
        dicts, report = validate_dataset_dicts(
            dicts, name, num_classes=num_classes, is_train=is_train, annotation_id_lookup=lookup
        )
        report.log()
        all_dicts.extend(dicts)
    if is_train and not any(d.get("annotations") for d in all_dicts):
        files = [MetadataCatalog.get(n).get("json_file", None) for n in names]
        shown = f" (from {', '.join(map(str, filter(None, files)))})" if any(files) else ""
        raise DatasetValidationError(
            f"no image of {names}{shown} has an object: there is nothing to train on (a COCO file without "
            "'annotations', such as an image-info file, gives this)"
        )
    if is_train and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        all_dicts = filter_images_with_only_crowd_annotations(all_dicts)
        if not all_dicts:
            raise DatasetValidationError(
                f"no image of {names} has an object; set DATALOADER.FILTER_EMPTY_ANNOTATIONS False to train on them"
            )
    if is_train:
        thing_classes = MetadataCatalog.get(names[0]).get("thing_classes", None)
        if thing_classes is not None:
            utils.check_metadata_consistency("thing_classes", names)
            print_instances_class_histogram(all_dicts, thing_classes)
    return all_dicts


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------

_conversions_logged: Dict[str, int] = defaultdict(int)  # PIL mode -> conversions logged by this process
_MAX_CONVERSIONS_LOGGED = 10


def _pil_mode_for(image_format: Optional[str]) -> Optional[str]:
    if image_format in ("BGR", "RGB", "YUV-BT.601"):
        return "RGB"
    return image_format


def _log_conversion(where: str, mode: str, image_format: str) -> None:
    count = _conversions_logged[mode]
    _conversions_logged[mode] = count + 1
    if count >= _MAX_CONVERSIONS_LOGGED:
        return
    message = f"{where} is a {mode} image: converted to {image_format} (INPUT.FORMAT)"
    if mode.upper().endswith("A"):
        message += "; its alpha channel is dropped, not composited"
    if count + 1 == _MAX_CONVERSIONS_LOGGED:
        message += f"; further {mode} images are converted without a log line"
    logger.warning(message)


def read_image_checked(
    file_name: str,
    image_format: Optional[str] = "BGR",
    image_id: Any = None,
    *,
    expected_size: Optional[Tuple[int, int]] = None,
    exif_orientation: str = "auto",
) -> np.ndarray:
    """Read an image like Detectron2's ``read_image`` (EXIF orientation applied), with clear errors.

    Args:
        file_name: path (or PathManager URI) of the image.
        image_format: ``INPUT.FORMAT`` ("BGR", "RGB", "L", ...).
        image_id: named in errors and log lines.
        expected_size: (height, width) the annotations give; with ``exif_orientation`` "auto" it tells whether the
            annotation tool showed the image turned by its EXIF orientation (``image_quirks.orient_as_annotated``).
        exif_orientation: "auto", "apply" (Detectron2's behaviour) or "ignore".
    Returns:
        (H, W, C) uint8 array in ``image_format``; 16-bit grayscale is scaled to 8 bits.
    Raises:
        FileNotFoundError: the file does not exist (naming it and the image id).
        UnreadableImageError: it cannot be decoded (corrupt, truncated, not an image, over PIL's size limit) or is
            a float image.
    """
    where = f"image file {file_name}" + (f" (image id {image_id})" if image_id is not None else "")
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()  # decode now: a truncated file fails here rather than later
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{where} does not exist") from e
    except Image.DecompressionBombError as e:
        raise UnreadableImageError(size_limit_message(where, e)) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise UnreadableImageError(
            f"{where} cannot be decoded ({type(e).__name__}: {e}); replace the file or remove the image from the "
            "dataset"
        ) from e
    image = orient_as_annotated(image, expected_size, exif_orientation, where)
    if image.mode in _FLOAT_MODES:
        raise UnreadableImageError(
            f"{where} has {image.mode!r} pixels (floating point) of unknown range; the model takes 8-bit images: "
            "convert the file to 8 bits per channel"
        )
    if image.mode in SIXTEEN_BIT_MODES:
        try:
            image = sixteen_bit_to_8bit(image, where)
        except ValueError as e:
            raise UnreadableImageError(str(e)) from e
    target_mode = _pil_mode_for(image_format)
    if target_mode is not None and image.mode != target_mode:
        _log_conversion(where, image.mode, image_format)
    return utils.convert_PIL_to_numpy(image, image_format)


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` for detection (image and boxes), reading images with
    :func:`read_image_checked`: errors name the file and image id; grayscale/RGBA/... images are converted to
    ``INPUT.FORMAT`` with a log line; EXIF orientation follows what the annotations saw. Crowd boxes and boxes
    mostly cut off by an augmentation are kept as ignored boxes (:func:`training_instances`). Semantic segmentation
    and precomputed proposals are not supported.

    Extra arguments (from the config: ``MODEL.RETINANET_PLUGIN.CROWD_BOXES``, ``CROP_MIN_VISIBLE_FRACTION``,
    ``DATASETS.EXIF_ORIENTATION``): ``crowd_boxes`` "ignore" or "drop", ``min_visible_fraction``,
    ``exif_orientation`` "auto", "apply" or "ignore".
    """

    @configurable
    def __init__(self, is_train: bool, *, crowd_boxes: str = "ignore", min_visible_fraction: float = 0.0,
                 exif_orientation: str = "auto", **kwargs):
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
            dataset_dict.pop("annotations"), transforms, image_shape, crowd_boxes=self.crowd_boxes,
            min_visible_fraction=self.min_visible_fraction,
        )

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image_id = dataset_dict.get("image_id", None)
        has_size = "height" in dataset_dict and "width" in dataset_dict
        expected = (dataset_dict["height"], dataset_dict["width"]) if has_size else None
        image = read_image_checked(dataset_dict["file_name"], self.image_format, image_id, expected_size=expected,
                                   exif_orientation=self.exif_orientation)
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
