"""What is wrong in a COCO instances json file that Detectron2 cannot load, said in a few lines.

Detectron2's ``load_coco_json`` (and pycocotools under it) fails on a broken file with a traceback
from deep inside, or, for an unknown category id, names only the id.
:func:`dataset_dicts_from_catalog` loads a registered dataset and turns such a failure into a
:class:`.DatasetValidationError` naming the dataset, the file and what is wrong in it: where the
JSON breaks (not UTF-8, malformed, not an object), or the entries (index, id) with a missing or
mistyped field, a repeated id, ``ignore``, an unreadable segmentation, an unknown category id.
:func:`coco_annotation_id_lookup` finds the ``id`` of a loaded annotation in its file, for messages.
"""

import json
from collections import defaultdict
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

from .dataset_dict_checks import AnnotationIdLookup, is_number
from .errors import MAX_LISTED, DatasetValidationError, listed

__all__ = ["coco_annotation_id_lookup", "dataset_dicts_from_catalog"]

Problems = Dict[str, List[str]]  # kind of problem -> the entries that have it


def coco_annotation_id_lookup(json_file: str) -> AnnotationIdLookup:
    """Find the COCO ``id`` of a loaded annotation (``load_coco_json`` does not keep it) from its
    image id, position in the image's list and bbox; the file is read on the first call only. None
    when no annotation matches."""
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


def _unknown_category_message(dataset_name: str, json_file: str) -> Optional[str]:
    """Name the annotations of a COCO json file whose category_id is not among its categories (None
    if none)."""
    with PathManager.open(json_file, "r") as f:
        coco = json.load(f)
    category_ids = sorted(c["id"] for c in coco.get("categories", []))
    images = {image["id"]: image.get("file_name", "?") for image in coco.get("images", [])}
    bad = [a for a in coco.get("annotations", []) if a.get("category_id") not in set(category_ids)]
    if not bad:
        return None
    known = f"ids {listed(category_ids)}" if category_ids else "the file has none"
    lines = [
        f"Dataset '{dataset_name}' ({json_file}): {len(bad)} annotations have a category_id that "
        f"is not among the file's categories ({known}):"
    ]
    for a in bad[:MAX_LISTED]:
        image_id = a.get("image_id")
        lines.append(
            f"  annotation id {a.get('id')} of image id {image_id} ({images.get(image_id, '?')}): "
            f"category_id {a.get('category_id')}"
        )
    if len(bad) > MAX_LISTED:
        lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    lines.append("Add the missing categories to 'categories', or fix or remove these annotations.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The sections of a parsed file
# --------------------------------------------------------------------------------------------------


def _section_entries(
    section: str, entries: List[Any], problems: Problems, unique_ids: bool
) -> Iterator[Tuple[int, Dict[str, Any], Any]]:
    """(index, entry, id) of each object of ``section`` ("images", ...); entries that are not
    objects, ids that are not integers and (with ``unique_ids``) repeated ids are recorded."""
    seen: Set[Any] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems[f"{section} that are not objects"].append(
                f"{section}[{i}] is a {type(entry).__name__}"
            )
            continue
        entry_id = entry.get("id")
        if not _is_id(entry_id):
            problems[f"{section} without an integer id"].append(
                f"{section}[{i}] has id {entry_id!r}"
            )
        elif unique_ids and entry_id in seen:
            problems[f"{section} with the same id"].append(f"{section}[{i}] repeats id {entry_id}")
        else:
            seen.add(entry_id)
        yield i, entry, entry_id


def _image_problems(images: List[Any], problems: Problems) -> None:
    for i, image, image_id in _section_entries("images", images, problems, unique_ids=False):
        if not isinstance(image.get("file_name"), str):
            problems["images without a file_name string"].append(
                f"images[{i}] (id {image_id!r}) has file_name {image.get('file_name', '(none)')!r}"
            )
        missing = [k for k in ("height", "width") if k not in image]
        if missing:
            problems["images without height or width"].append(
                f"images[{i}] (id {image_id!r}) has no {missing}"
            )


def _category_problems(categories: List[Any], problems: Problems) -> None:
    entries = _section_entries("categories", categories, problems, unique_ids=True)
    for i, category, category_id in entries:
        if "name" not in category:
            problems["categories without a name"].append(f"categories[{i}] (id {category_id!r})")
    if not categories and "categories" not in problems:
        problems["files without categories"].append("'categories' is missing or empty")


def _annotation_entry_problems(annotation: Dict[str, Any], where: str, problems: Problems) -> None:
    """The problems of one annotation's fields other than its ``id``."""
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
        problems["annotations whose bbox is not a list of 4 numbers"].append(
            f"{where} has bbox {bbox!r}"
        )
    why = _segmentation_problem(annotation.get("segmentation", None))
    if why:
        problems["annotations with an unreadable segmentation"].append(f"{where}: {why}")
    keypoints = annotation.get("keypoints", None)
    if keypoints and not (isinstance(keypoints, list) and all(is_number(v) for v in keypoints)):
        problems["annotations whose keypoints are not a list of numbers"].append(f"{where}")


def _annotation_problems(annotations: List[Any], problems: Problems) -> None:
    entries = _section_entries("annotations", annotations, problems, unique_ids=True)
    for i, annotation, annotation_id in entries:
        _annotation_entry_problems(annotation, f"annotations[{i}] (id {annotation_id!r})", problems)


def _coco_section_problems(coco: Dict[str, Any]) -> Problems:
    """What in a parsed COCO instances dict makes ``pycocotools.COCO`` or Detectron2's
    ``load_coco_json`` fail, by kind (entries named by their index and id)."""
    problems: Problems = defaultdict(list)
    sections = {}
    for key in ("images", "annotations", "categories"):
        value = coco.get(key, [])
        if not isinstance(value, list):
            problems["sections that are not lists"].append(f"'{key}' is a {type(value).__name__}")
            value = []
        sections[key] = value
    _image_problems(sections["images"], problems)
    _category_problems(sections["categories"], problems)
    _annotation_problems(sections["annotations"], problems)
    return problems


def _segmentation_problem(segmentation: Any) -> Optional[str]:
    """Why Detectron2's ``load_coco_json`` cannot read a COCO segmentation (None if it can, or if
    there is none)."""
    if not segmentation:
        return None
    if isinstance(segmentation, dict):
        counts, size = segmentation.get("counts", None), segmentation.get("size", None)
        if not (
            isinstance(size, list) and len(size) == 2 and all(_is_id(v) and v > 0 for v in size)
        ):
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
    if not all(isinstance(poly, list) and all(is_number(v) for v in poly) for poly in segmentation):
        return "polygons are not lists of numbers"
    return None


# --------------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------------


def _coco_json_problem(json_file: str) -> Optional[str]:
    """What is wrong with a COCO json file that Detectron2 could not load, in a few lines (None if
    nothing is found)."""
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
        return (
            f"is not valid JSON ({e.msg}: line {e.lineno}, column {e.colno}): it is truncated or "
            "corrupt"
        )
    except RecursionError:
        return "nests lists or objects deeper than Python's json parser can read"
    if not isinstance(coco, dict):
        return (
            f"holds a JSON {type(coco).__name__}, not an object with 'images', 'annotations' and "
            "'categories'"
        )
    problems = _coco_section_problems(coco)
    if not problems:
        return None
    lines = []
    for kind, items in problems.items():
        more = f"; ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
        lines.append(f"  {len(items)} {kind}: " + "; ".join(items[:MAX_LISTED]) + more)
    return "is not a COCO instances file Detectron2 can load:\n" + "\n".join(lines)


def _load_failure_message(dataset_name: str, json_file: str, error: Exception) -> str:
    """The message that replaces ``error``, raised by Detectron2 while it loaded ``json_file``."""
    message = None
    if isinstance(error, KeyError):
        try:
            message = _unknown_category_message(dataset_name, json_file)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            message = None
    if message is not None:
        return message
    problem = _coco_json_problem(json_file)
    detail = str(error).splitlines()[0][:300] if str(error) else ""
    cause = f"{type(error).__name__}{': ' + detail if detail else ''}"
    if problem:
        return (
            f"Dataset '{dataset_name}': the COCO json file {json_file} {problem}\n"
            f"(Detectron2: {cause})"
        )
    return (
        f"Dataset '{dataset_name}': Detectron2 cannot load the COCO json file {json_file} ({cause})"
    )


def dataset_dicts_from_catalog(dataset_name: str):
    """``DatasetCatalog.get``; for a dataset registered from a COCO json file, any failure to load
    it becomes a ``DatasetValidationError`` naming the dataset, the file and what is wrong in it (an
    unknown category id: the annotations; malformed JSON: where; a missing or mistyped field: the
    entries), instead of a traceback from inside pycocotools or Detectron2's ``load_coco_json``."""
    try:
        return DatasetCatalog.get(dataset_name)
    except Exception as e:  # noqa: BLE001 - whatever the loader raised, the message names the file
        json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
        if not json_file or dataset_name not in DatasetCatalog.list():
            raise
        raise DatasetValidationError(_load_failure_message(dataset_name, json_file, e)) from e
