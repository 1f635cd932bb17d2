"""The synthetic shapes dataset on disk and in Detectron2's catalogs: a small, deterministic
COCO-format detection dataset of coloured shapes (drawn by :mod:`.shape_drawing`), generated on
first use.

Layout of a generated dataset (``root``)::

    manifest.json         generator version, parameters, json sizes; written last: marks it complete
    train.json, val.json  COCO "instances" files (images, annotations, categories)
    train/000000.jpg ...  images of the train split (``image_root`` of the train dataset)
    val/000000.jpg ...    images of the held-out val split, drawn from a separate random stream

Nothing is generated at import: :func:`register_synthetic_shapes` registers loader functions that
call :func:`ensure_synthetic_shapes` the first time the dataset is requested.
"""

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .shape_drawing import (
    SPLITS,
    SYNTHETIC_SHAPES_CLASSES,
    SYNTHETIC_SHAPES_NUM_CLASSES,
    SyntheticShapesParams,
    render_synthetic_image,
)

__all__ = [
    "SYNTHETIC_SHAPES_CLASSES",
    "SYNTHETIC_SHAPES_NUM_CLASSES",
    "SYNTHETIC_SHAPES_TRAIN",
    "SYNTHETIC_SHAPES_VAL",
    "SyntheticShapesParams",
    "default_synthetic_shapes_root",
    "ensure_synthetic_shapes",
    "is_synthetic_shapes_complete",
    "render_synthetic_image",
    "register_synthetic_shapes",
    "ensure_registered_synthetic_files",
]

logger = logging.getLogger(__name__)

SYNTHETIC_SHAPES_TRAIN = "retinanet_synthetic_shapes_train"
SYNTHETIC_SHAPES_VAL = "retinanet_synthetic_shapes_val"
DATASET_DIRNAME = "retinanet_synthetic_shapes"
# Bump whenever the drawing (shape_drawing) or the file layout changes: existing datasets with
# another version are regenerated.
GENERATOR_VERSION = 1
_GENERATOR_NAME = "retinanet_synthetic_shapes"
_MANIFEST = "manifest.json"
_OWN_ENTRIES = frozenset({_MANIFEST, "train", "val", "train.json", "val.json"})

_JPEG_QUALITY = 95


def default_synthetic_shapes_root() -> str:
    """``$DETECTRON2_DATASETS/retinanet_synthetic_shapes``, or
    ``./datasets/retinanet_synthetic_shapes``."""
    base = os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))
    return os.path.join(base, DATASET_DIRNAME)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _write_split(params: SyntheticShapesParams, split: str, folder: str) -> int:
    """Write the images and ``<split>.json`` of one split into ``folder``; returns the json size in
    bytes."""
    import cv2

    os.makedirs(os.path.join(folder, split))
    images, annotations = [], []
    for index in range(params.num_images(split)):
        image, objects = render_synthetic_image(params, split, index)
        file_name = f"{index:06d}.{params.image_format}"
        encode_args = (
            [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY] if params.image_format == "jpg" else []
        )
        ok, encoded = cv2.imencode("." + params.image_format, image, encode_args)
        if not ok:
            raise RuntimeError(f"cv2 could not encode synthetic image {split}/{file_name}")
        with open(os.path.join(folder, split, file_name), "wb") as f:
            f.write(encoded.tobytes())
        image_id = index + 1
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": image.shape[0],
                "width": image.shape[1],
            }
        )
        for obj in objects:
            annotations.append(dict(obj, id=len(annotations) + 1, image_id=image_id, iscrowd=0))
    coco = {
        "info": {
            "description": f"retinanet_plugin synthetic shapes, {split} split",
            "version": str(GENERATOR_VERSION),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(SYNTHETIC_SHAPES_CLASSES)
        ],
    }
    data = _json_bytes(coco)
    with open(os.path.join(folder, f"{split}.json"), "wb") as f:
        f.write(data)
    return len(data)


def _expected_manifest(params: SyntheticShapesParams) -> Dict[str, Any]:
    return {
        "generator": _GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "params": dataclasses.asdict(params),
    }


def _read_manifest(root: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(root, _MANIFEST), "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
        return manifest if isinstance(manifest, dict) else None
    except (OSError, ValueError):
        return None


def is_synthetic_shapes_complete(root: str, params: SyntheticShapesParams) -> bool:
    """True when ``root`` holds a dataset made by this generator version with ``params``, with no
    file missing."""
    manifest = _read_manifest(root)
    if manifest is None:
        return False
    expected = _expected_manifest(params)
    if any(manifest.get(key) != value for key, value in expected.items()):
        return False
    json_sizes = manifest.get("json_bytes", {})
    for split in SPLITS:
        json_path = os.path.join(root, f"{split}.json")
        if not os.path.isfile(json_path) or os.path.getsize(json_path) != json_sizes.get(split):
            return False
        for index in range(params.num_images(split)):
            image_path = os.path.join(root, split, f"{index:06d}.{params.image_format}")
            try:
                if os.path.getsize(image_path) == 0:
                    return False
            except OSError:
                return False
    return True


@contextlib.contextmanager
def _exclusive_lock(root: str) -> Iterator[None]:
    """Serialise generators of the same ``root`` across processes (a lock file beside it; no-op
    without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover  (not POSIX)
        yield
        return
    parent, name = os.path.split(os.path.abspath(root))
    with open(os.path.join(parent, f".{name}.lock"), "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _check_replaceable(root: str) -> None:
    """Refuse to delete a folder that this generator did not make."""
    manifest = _read_manifest(root)
    if manifest is not None and manifest.get("generator") == _GENERATOR_NAME:
        return
    foreign = sorted(set(os.listdir(root)) - _OWN_ENTRIES)
    if foreign:
        raise FileExistsError(
            f"{root} exists but does not look like a synthetic shapes dataset (it holds "
            f"{foreign[:5]}); refusing to replace it. Pass another root, or remove the folder."
        )


def ensure_synthetic_shapes(root: Optional[str] = None, **params: Any) -> str:
    """Make sure ``root`` holds the synthetic dataset generated with ``params``; returns ``root``.

    A complete dataset with the same generator version and parameters is reused untouched. Otherwise
    (missing, partial, corrupted, other parameters) the dataset is generated into a temporary folder
    beside ``root``, which then replaces ``root`` by a rename, so that readers never see
    half-written files.

    Args:
        root: dataset folder; default :func:`default_synthetic_shapes_root`.
        params: fields of :class:`SyntheticShapesParams` (e.g. ``num_train=20, seed=3``).
    """
    settings = SyntheticShapesParams(**params)
    root = os.path.abspath(root if root is not None else default_synthetic_shapes_root())
    if is_synthetic_shapes_complete(root, settings):
        return root
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    with _exclusive_lock(root):
        if is_synthetic_shapes_complete(root, settings):  # another process made it while we waited
            return root
        if os.path.isdir(root):
            _check_replaceable(root)
        elif os.path.lexists(root):
            raise FileExistsError(
                f"{root} exists and is not a folder; cannot generate the synthetic dataset there"
            )
        tmp = os.path.join(
            parent, f".{os.path.basename(root)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        old = None
        try:
            os.makedirs(tmp)
            logger.info(
                "Generating the synthetic shapes dataset (%d train + %d val images) in %s",
                settings.num_train,
                settings.num_val,
                root,
            )
            manifest = _expected_manifest(settings)
            manifest["json_bytes"] = {split: _write_split(settings, split, tmp) for split in SPLITS}
            with open(os.path.join(tmp, _MANIFEST), "wb") as f:
                f.write(_json_bytes(manifest))
            if os.path.isdir(root):
                old = os.path.join(parent, f".{os.path.basename(root)}.old-{uuid.uuid4().hex[:8]}")
                os.rename(root, old)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    return root


# --------------------------------------------------------------------------------------------------
# Detectron2 registration
# --------------------------------------------------------------------------------------------------

# dataset name -> (root, params) of the current registration; read by
# ensure_registered_synthetic_files
_REGISTERED: Dict[str, Tuple[str, Dict[str, Any]]] = {}


def _load_split(name: str, split: str, root: str, params: Dict[str, Any]) -> List[Dict[str, Any]]:
    from detectron2.data.datasets import load_coco_json

    ensure_synthetic_shapes(root, **params)
    return load_coco_json(os.path.join(root, f"{split}.json"), os.path.join(root, split), name)


def register_synthetic_shapes(root: Optional[str] = None, **params: Any) -> Dict[str, str]:
    """Register ``retinanet_synthetic_shapes_{train,val}`` in Detectron2's catalogs; nothing is
    generated here.

    The DatasetCatalog functions generate the files on first use (:func:`ensure_synthetic_shapes`),
    then load them with ``load_coco_json``. Metadata: ``thing_classes``, ``json_file``,
    ``image_root``, ``evaluator_type="coco"`` (for COCOEvaluator),
    ``thing_dataset_id_to_contiguous_id``. Calling it again replaces the previous registration (e.g.
    to point at another root or use other ``params``).

    Args:
        root: dataset folder; default :func:`default_synthetic_shapes_root` (resolved now).
        params: fields of :class:`SyntheticShapesParams`.
    Returns:
        {split: dataset name}.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    SyntheticShapesParams(**params)  # validate now rather than at first use
    root = os.path.abspath(root if root is not None else default_synthetic_shapes_root())
    names = {"train": SYNTHETIC_SHAPES_TRAIN, "val": SYNTHETIC_SHAPES_VAL}
    for split, name in names.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(
            name,
            lambda name=name, split=split, params=dict(params): _load_split(
                name, split, root, params
            ),
        )
        MetadataCatalog.get(name).set(
            json_file=os.path.join(root, f"{split}.json"),
            image_root=os.path.join(root, split),
            evaluator_type="coco",
            thing_classes=list(SYNTHETIC_SHAPES_CLASSES),
            thing_dataset_id_to_contiguous_id={
                i + 1: i for i in range(SYNTHETIC_SHAPES_NUM_CLASSES)
            },
            thing_colors=[
                [220, 20, 60],
                [0, 120, 255],
                [0, 170, 30],
                [250, 170, 30],
                [160, 60, 220],
            ],
        )
        _REGISTERED[name] = (root, dict(params))
    return names


def ensure_registered_synthetic_files(dataset_name: str) -> bool:
    """Generate the files of ``dataset_name`` if it is a registered synthetic dataset; False for
    other names."""
    if dataset_name not in _REGISTERED:
        return False
    root, params = _REGISTERED[dataset_name]
    ensure_synthetic_shapes(root, **params)
    return True
