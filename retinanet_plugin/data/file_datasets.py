"""Datasets named by their files in ``DATASETS.TRAIN`` / ``DATASETS.TEST``, registered on first use.

- ``coco:JSON`` or ``coco:JSON:IMAGE_ROOT``: a COCO instances file; the image root defaults to the
  json's folder. Registered with Detectron2's ``register_coco_instances`` (class names from the
  json's categories, evaluated against the json itself).
- ``voc:FOLDER`` or ``voc:FOLDER:SPLIT``: Pascal VOC XML files (``retinanet_plugin.data.voc``: VOC's
  layout or a flat LabelImg/CVAT folder; a split names ``ImageSets/Main/SPLIT.txt``). Class names
  come from the XML: the sorted object names of all the ``voc:`` datasets of the config (train and
  test alike, so a test folder that lacks a class still numbers the classes as training did), or
  ``DATASETS.VOC_CLASSES`` when it is set.

Relative paths are taken from the working directory. The name stays the string as written, so
command-line overrides such as ``DATASETS.TRAIN "('voc:/data/trees/train',)"`` work with every tool
that takes a config. :func:`register_datasets_of_config` registers those of a config
(``config_from_file`` and the trainer call it), and :func:`apply_num_classes_from_data` sets
``MODEL.RETINANET.NUM_CLASSES`` from the training data when
``MODEL.RETINANET_PLUGIN.NUM_CLASSES_FROM_DATA`` is True.
"""

import logging
import os
import threading
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .voc import VocAnnotationError, find_voc_images, voc_class_names, voc_dataset_dicts

__all__ = [
    "FILE_DATASET_PREFIXES",
    "apply_num_classes_from_data",
    "dataset_class_names",
    "is_file_dataset_name",
    "parse_file_dataset_name",
    "register_datasets_of_config",
    "register_file_datasets",
    "unregister_file_datasets",
]

logger = logging.getLogger(__name__)

FILE_DATASET_PREFIXES = ("coco:", "voc:")
_lock = threading.Lock()
_voc_groups: Dict[
    str, Tuple[Tuple[str, ...], Tuple[str, ...]]
] = {}  # name -> (group names, given classes)
_voc_cache: Dict[Tuple[str, Optional[str]], list] = {}  # (folder, split) -> parsed images


def is_file_dataset_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(FILE_DATASET_PREFIXES)


def parse_file_dataset_name(name: str) -> Tuple[str, str, Optional[str]]:
    """``(kind, path, extra)``: ("coco", JSON, IMAGE_ROOT or None) or ("voc", FOLDER, SPLIT or
    None), paths made absolute. A path that itself holds ':' is read whole when it exists."""
    kind, _, rest = name.partition(":")
    if not rest:
        raise ValueError(f"dataset name {name!r}: give a path after '{kind}:' ({_forms()})")
    if kind == "coco":
        if rest.endswith(".json") or os.path.isfile(rest) or ":" not in rest:
            path, extra = rest, None
        else:
            path, extra = rest.rsplit(":", 1)
            if not path.endswith(".json") and not os.path.isfile(path):
                raise ValueError(
                    f"dataset name {name!r}: {path!r} is not a .json file ({_forms()})"
                )
        path = os.path.abspath(os.path.expanduser(path))
        root = os.path.abspath(os.path.expanduser(extra)) if extra else os.path.dirname(path)
        return "coco", path, root
    if kind == "voc":
        if os.path.isdir(rest) or ":" not in rest:
            path, extra = rest, None
        else:
            path, extra = rest.rsplit(":", 1)
        return "voc", os.path.abspath(os.path.expanduser(path)), extra or None
    raise ValueError(f"dataset name {name!r}: unknown kind {kind!r} ({_forms()})")


def _forms() -> str:
    return "forms: coco:JSON, coco:JSON:IMAGE_ROOT, voc:FOLDER, voc:FOLDER:SPLIT"


def _voc_images(folder: str, split: Optional[str]) -> list:
    key = (folder, split)
    if key not in _voc_cache:
        images, unannotated = find_voc_images(folder, split)
        if unannotated:
            logger.warning(
                f"voc:{folder}: {len(unannotated)} images have no .xml file beside them and are "
                "not used (e.g. "
                f"{', '.join(os.path.basename(p) for p in unannotated[:5])}); an image without "
                "objects needs an XML "
                "file without <object>"
            )
        _voc_cache[key] = images
    return _voc_cache[key]


def _voc_classes(name: str) -> List[str]:
    group, given = _voc_groups[name]
    if given:
        return list(given)
    images = []
    for member in group:
        _, folder, split = parse_file_dataset_name(member)
        images += _voc_images(folder, split)
    classes = voc_class_names(images)
    if not classes:
        raise VocAnnotationError(
            f"{', '.join(group)}: no XML file has an <object>: there are no classes"
        )
    return classes


def _load_voc(name: str) -> list:
    _, folder, split = parse_file_dataset_name(name)
    classes = _voc_classes(name)
    metadata = MetadataCatalog.get(name)
    if metadata.get("thing_classes", None) is None:
        metadata.thing_classes = classes
        logger.info(
            f"Dataset '{name}': classes {classes}"
            + (
                ""
                if _voc_groups[name][1]
                else " (the object names of " + ", ".join(_voc_groups[name][0]) + ")"
            )
        )
    return voc_dataset_dicts(_voc_images(folder, split), classes, name)


def register_file_datasets(names: Sequence[str], voc_classes: Sequence[str] = ()) -> List[str]:
    """Register the file-given datasets among ``names`` that are not registered yet (others are left
    alone) and return the names registered now. ``voc_classes``: the class list of the ``voc:``
    datasets (empty: the sorted object names of all of ``names``' ``voc:`` datasets)."""
    from detectron2.data.datasets import register_coco_instances

    names = [n for n in names if is_file_dataset_name(n)]
    voc_group = tuple(dict.fromkeys(n for n in names if n.startswith("voc:")))  # train and test
    registered = []
    with _lock:
        for name in names:
            kind, path, extra = parse_file_dataset_name(name)
            if name in DatasetCatalog.list():
                if (
                    kind == "voc"
                    and name in _voc_groups
                    and voc_classes
                    and tuple(voc_classes) != _voc_groups[name][1]
                ):
                    raise ValueError(
                        f"Dataset '{name}' is already registered with classes "
                        f"{list(_voc_groups[name][1]) or 'from its XML'}"
                        f"; DATASETS.VOC_CLASSES now says {list(voc_classes)}"
                    )
                continue
            if kind == "coco":
                register_coco_instances(name, {}, path, extra)
            else:
                _voc_groups[name] = (voc_group, tuple(voc_classes))
                DatasetCatalog.register(name, lambda name=name: _load_voc(name))
                MetadataCatalog.get(name).set(evaluator_type="coco", voc_folder=path)
            registered.append(name)
    return registered


def unregister_file_datasets(names: Sequence[str]) -> None:
    """Remove file-given datasets from Detectron2's catalogs and forget what was read for them (the
    next registration reads the files again); names not registered are skipped."""
    with _lock:
        for name in names:
            if not is_file_dataset_name(name):
                continue
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
            if name in MetadataCatalog.list():
                MetadataCatalog.remove(name)
            if _voc_groups.pop(name, None) is not None:
                _, folder, split = parse_file_dataset_name(name)
                _voc_cache.pop((folder, split), None)


def register_datasets_of_config(cfg) -> List[str]:
    """Register the file-given datasets of ``cfg.DATASETS.TRAIN`` and ``TEST`` (see the module
    docstring)."""
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    return register_file_datasets(names, voc_classes=tuple(cfg.DATASETS.get("VOC_CLASSES", ())))


def dataset_class_names(name: str) -> Optional[List[str]]:
    """A registered dataset's ``thing_classes``; datasets that set them when loaded (COCO json, VOC)
    are loaded for it. None when the dataset has none."""
    metadata = MetadataCatalog.get(name)
    classes = metadata.get("thing_classes", None)
    if classes is None and name in DatasetCatalog.list():
        # names the file if a COCO json won't load
        from .coco_json_checks import (
            dataset_dicts_from_catalog,
        )

        dataset_dicts_from_catalog(name)
        classes = metadata.get("thing_classes", None)
    return list(classes) if classes is not None else None


def apply_num_classes_from_data(cfg) -> Optional[int]:
    """With ``MODEL.RETINANET_PLUGIN.NUM_CLASSES_FROM_DATA``, set ``MODEL.RETINANET.NUM_CLASSES``
    (in place, on an unfrozen config) to the number of classes of ``DATASETS.TRAIN`` and return it;
    None when the setting is off. The training datasets must have the same classes; a test dataset
    with another number of classes stays an error when its loader is built (``check_num_classes``),
    naming both numbers."""
    if not cfg.MODEL.RETINANET_PLUGIN.get("NUM_CLASSES_FROM_DATA", False):
        return None
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError(
            "MODEL.RETINANET_PLUGIN.NUM_CLASSES_FROM_DATA is True but DATASETS.TRAIN is empty"
        )
    classes = {}
    for name in names:
        found = dataset_class_names(name)
        if found is None:
            raise ValueError(
                f"MODEL.RETINANET_PLUGIN.NUM_CLASSES_FROM_DATA: dataset '{name}' has no "
                "thing_classes in its metadata; "
                "set MODEL.RETINANET.NUM_CLASSES instead"
            )
        classes[name] = found
    first = names[0]
    for name in names[1:]:
        if classes[name] != classes[first]:
            raise ValueError(
                "MODEL.RETINANET_PLUGIN.NUM_CLASSES_FROM_DATA: the training datasets have "
                "different classes: "
                f"'{first}' {classes[first]}, '{name}' {classes[name]}"
            )
    count = len(classes[first])
    if cfg.MODEL.RETINANET.NUM_CLASSES != count:
        logger.info(
            f"MODEL.RETINANET.NUM_CLASSES = {count} (was {cfg.MODEL.RETINANET.NUM_CLASSES}): the "
            "classes of "
            f"'{first}' ({', '.join(classes[first][:10])}{' ...' if count > 10 else ''})"
        )
    cfg.MODEL.RETINANET.NUM_CLASSES = count
    return count
