"""Checks of Detectron2 dataset dicts (image entries and their annotations), with the repairs the
policy allows.

The policy is the table in :mod:`.checked_loading`. Here: the image entry (``file_name``, the file
on disk, ``height``/``width``) and each annotation (``category_id``, ``bbox``, ``bbox_mode``) are
checked; boxes partly outside their image are clipped, boxes entirely outside or with width or
height <= 0 dropped, and the fix-ups counted in a :class:`ValidationReport`. Box checks need the
image's ``height`` and ``width`` in the dict (COCO json always has them). Annotations are named by
their COCO ``id`` when the dict carries it, else by an :data:`AnnotationIdLookup` when given
(:func:`.coco_json_checks.coco_annotation_id_lookup`), else by their position in the image's list.
"""

import dataclasses
import logging
import math
import os
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from detectron2.structures import BoxMode

from .errors import MAX_LISTED, DatasetValidationError, listed

__all__ = ["AnnotationIdLookup", "ValidationReport", "is_number", "validate_dataset_dicts"]

logger = logging.getLogger(__name__)

_SUPPORTED_BOX_MODES = (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)

# (image id, position in the image's list, bbox) -> the annotation's id, or None
AnnotationIdLookup = Callable[[Any, int, Any], Optional[Any]]


@dataclasses.dataclass
class ValidationReport:
    """What :func:`validate_dataset_dicts` found and repaired in one dataset (image ids per
    fix-up)."""

    dataset_name: str
    num_images: int = 0
    num_annotations: int = 0
    images_without_objects: List[Any] = dataclasses.field(default_factory=list)
    clipped: Dict[Any, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    dropped_outside: Dict[Any, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    dropped_degenerate: Dict[Any, int] = dataclasses.field(default_factory=lambda: defaultdict(int))

    def log(self) -> None:
        """One WARNING line per kind of fix-up (count and image ids), one INFO line for images
        without objects."""
        for counts, what in (
            (self.clipped, "boxes partly outside their image were clipped to it"),
            (self.dropped_outside, "boxes entirely outside their image were dropped"),
            (self.dropped_degenerate, "boxes with width or height <= 0 were dropped"),
        ):
            if counts:
                logger.warning(
                    f"Dataset '{self.dataset_name}': {sum(counts.values())} {what}, in "
                    f"{len(counts)} images (image ids {listed(sorted(counts, key=str))})."
                )
        if self.images_without_objects:
            logger.info(
                f"Dataset '{self.dataset_name}': {len(self.images_without_objects)} of "
                f"{self.num_images} images have no objects (image ids "
                f"{listed(self.images_without_objects)})."
            )


def is_number(value: Any) -> bool:
    """An int or float (numpy's too), not a bool, a string or a complex number."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------------
# Names in messages
# --------------------------------------------------------------------------------------------------


def _image_label(record: Dict[str, Any], index: int) -> str:
    image_id = record.get("image_id", None)
    where = f"image id {image_id}" if image_id is not None else f"image #{index}"
    file_name = record.get("file_name", None)
    return f"{where} ({file_name})" if file_name else where


def _annotation_label(
    annotation: Any, position: int, image_id: Any, lookup: Optional[AnnotationIdLookup]
) -> str:
    if isinstance(annotation, dict) and "id" in annotation:
        return f"annotation id {annotation['id']}"
    found = None
    if lookup is not None and isinstance(annotation, dict):
        found = lookup(image_id, position, annotation.get("bbox"))
    return f"annotation id {found}" if found is not None else f"annotation #{position}"


def _problems_message(dataset_name: str, problems: Dict[str, List[str]]) -> str:
    lines = [f"Dataset '{dataset_name}' cannot be used:"]
    for kind, items in problems.items():
        lines.append(f"  {len(items)} {kind}:")
        lines += [f"    {item}" for item in items[:MAX_LISTED]]
        if len(items) > MAX_LISTED:
            lines.append(f"    ... and {len(items) - MAX_LISTED} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# One annotation
# --------------------------------------------------------------------------------------------------

Corners = Tuple[float, float, float, float]  # x0, y0, x1, y1 in absolute pixels


def _category_problem(category: Any, num_classes: int) -> Optional[str]:
    if isinstance(category, bool) or not isinstance(category, (int, np.integer)):
        return f"has category_id {category!r}, not an integer"
    if not 0 <= category < num_classes:
        return (
            f"has category_id {category}, outside [0, {num_classes}) (the dataset's {num_classes} "
            "classes; ids must be contiguous and 0-based: register COCO json files with "
            "register_coco_instances, which maps them)"
        )
    return None


def _read_box(
    annotation: Dict[str, Any],
) -> Tuple[Optional[str], Optional[Corners], Optional[BoxMode]]:
    """``(problem, None, None)``, or ``(None, corners, mode)`` for a bbox of 4 finite numbers in a
    supported mode."""
    bbox = annotation.get("bbox", None)
    if bbox is None:
        return "has no bbox", None, None
    try:
        items = list(bbox)
    except TypeError:
        return f"has bbox {bbox!r}, not 4 numbers", None, None
    # "1" is text, True is no number
    if isinstance(bbox, (str, bytes)) or not all(is_number(v) for v in items):
        return f"has bbox {bbox!r}, not 4 numbers", None, None
    values = [float(v) for v in items]
    if len(values) != 4:
        return f"has bbox {bbox!r}, not 4 numbers", None, None
    if not all(math.isfinite(v) for v in values):
        return f"has bbox {values} with a NaN or infinite coordinate", None, None
    if "bbox_mode" not in annotation:  # Detectron2's transforms read it: no silent default
        return (
            "has no bbox_mode (Detectron2's dataset dicts need one, e.g. BoxMode.XYWH_ABS)",
            None,
            None,
        )
    mode = annotation["bbox_mode"]
    try:
        mode = BoxMode(mode)
    except ValueError:
        return f"has bbox_mode {mode!r}, not a BoxMode", None, None
    if mode not in _SUPPORTED_BOX_MODES:
        return (
            f"has bbox_mode {mode.name}; only XYWH_ABS and XYXY_ABS (absolute pixels) are "
            "supported",
            None,
            None,
        )
    x0, y0 = values[0], values[1]
    x1, y1 = (
        (x0 + values[2], y0 + values[3]) if mode == BoxMode.XYWH_ABS else (values[2], values[3])
    )
    return None, (x0, y0, x1, y1), mode


def _box_repair(corners: Corners, mode: BoxMode, image_size: Optional[Tuple[float, float]]):
    """None (keep as is), ("clip", new_bbox), "outside" or "degenerate" (drop)."""
    x0, y0, x1, y1 = corners
    if x1 <= x0 or y1 <= y0:
        return "degenerate"
    if image_size is None:
        return None
    height, width = image_size
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        return "outside"
    if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
        return None
    clipped = [cx0, cy0, cx1 - cx0, cy1 - cy0] if mode == BoxMode.XYWH_ABS else [cx0, cy0, cx1, cy1]
    return "clip", clipped


def _check_annotation(annotation: Any, num_classes: int, image_size: Optional[Tuple[float, float]]):
    """Returns ``(problem, None)`` for an error, or ``(None, action)`` with action one of None (keep
    as is), ("clip", new_bbox), "outside" or "degenerate" (drop)."""
    if not isinstance(annotation, dict):
        return f"is a {type(annotation).__name__}, not a dict", None
    problem = _category_problem(annotation.get("category_id", None), num_classes)
    if problem:
        return problem, None
    problem, corners, mode = _read_box(annotation)
    if problem:
        return problem, None
    return None, _box_repair(corners, mode, image_size)


# --------------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------------


def _image_size(record: Dict[str, Any]) -> Tuple[Optional[Tuple[float, float]], Optional[str]]:
    if "height" not in record and "width" not in record:
        return None, None
    height, width = record.get("height"), record.get("width")
    ok = all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
        for v in (height, width)
    )
    if not ok:
        return None, f"has height {height!r} and width {width!r}; both must be positive integers"
    return (float(height), float(width)), None


def _file_problem(file_name: str) -> Optional[str]:
    """Why a local image file cannot be used (None if it is there and not empty; remote paths are
    not checked)."""
    if "://" in file_name:
        return None
    try:
        size = os.path.getsize(file_name)
    except OSError:
        return "does not exist"
    return "is empty (0 bytes)" if size == 0 else None


def _check_image_entry(
    record: Dict[str, Any], label: str, check_files: bool, problems: Dict[str, List[str]]
) -> Optional[Tuple[float, float]]:
    """Add the problems of the image's ``file_name`` and size to ``problems``; returns its (height,
    width)."""
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
    return image_size


def _repaired_annotations(
    record: Dict[str, Any],
    index: int,
    label: str,
    image_size: Optional[Tuple[float, float]],
    num_classes: int,
    annotation_id_lookup: Optional[AnnotationIdLookup],
    report: ValidationReport,
    problems: Dict[str, List[str]],
) -> Dict[str, Any]:
    """The record with its annotations checked and repaired (the same dict when nothing changed);
    errors go to ``problems``, fix-ups to ``report``."""
    if "annotations" not in record:
        problems["train images without an 'annotations' list"].append(
            f"{label} has no 'annotations' (give an empty list for an image without objects)"
        )
        return record
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
            continue
        changed = True
        if action == "outside":
            report.dropped_outside[image_id] += 1
        elif action == "degenerate":
            report.dropped_degenerate[image_id] += 1
        else:
            report.clipped[image_id] += 1
            kept.append(dict(annotation, bbox=action[1]))
    if not kept:
        report.images_without_objects.append(image_id)
    return dict(record, annotations=kept) if changed else record


# --------------------------------------------------------------------------------------------------
# One dataset
# --------------------------------------------------------------------------------------------------


def validate_dataset_dicts(
    dataset_dicts: List[Dict[str, Any]],
    dataset_name: str,
    *,
    num_classes: int,
    is_train: bool = True,
    check_files: bool = True,
    annotation_id_lookup: Optional[AnnotationIdLookup] = None,
) -> Tuple[List[Dict[str, Any]], ValidationReport]:
    """Check the dicts of one dataset and repair what the policy (:mod:`.checked_loading`) repairs.

    Args:
        dataset_dicts: Detectron2 dataset dicts; not modified (repaired images get new dicts).
        dataset_name: named in messages.
        num_classes: category ids must be in [0, num_classes).
        is_train: when False only the images are checked (a test loader drops the annotations).
        check_files: check that each local image file exists and is not empty.
        annotation_id_lookup: names annotations that carry no ``id`` in error messages (see
            :func:`.coco_json_checks.coco_annotation_id_lookup`); else they are named by their
            position in the image's list.
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
            problems["image entries that are not dicts"].append(
                f"image #{index} is a {type(record).__name__}"
            )
            continue
        label = _image_label(record, index)
        image_size = _check_image_entry(record, label, check_files, problems)
        if is_train:
            record = _repaired_annotations(
                record,
                index,
                label,
                image_size,
                num_classes,
                annotation_id_lookup,
                report,
                problems,
            )
        out.append(record)
    if problems:
        raise DatasetValidationError(_problems_message(dataset_name, problems))
    return out, report
