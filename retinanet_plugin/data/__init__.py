"""Datasets of the plugin. Importing this package registers ``retinanet_synthetic_shapes_{train,val}`` (lazily:
the files are generated the first time Detectron2 asks for the data, under
``$DETECTRON2_DATASETS/retinanet_synthetic_shapes``, default ``./datasets/retinanet_synthetic_shapes``)."""

from .dataset_checks import check_dataset_files
from .synthetic_shapes import (
    SYNTHETIC_SHAPES_CLASSES,
    SYNTHETIC_SHAPES_NUM_CLASSES,
    SYNTHETIC_SHAPES_TRAIN,
    SYNTHETIC_SHAPES_VAL,
    SyntheticShapesParams,
    default_synthetic_shapes_root,
    ensure_synthetic_shapes,
    register_synthetic_shapes,
)
from .validation import (
    CheckedDatasetMapper,
    DatasetValidationError,
    UnreadableImageError,
    load_checked_dataset_dicts,
    read_image_checked,
    validate_dataset_dicts,
)

register_synthetic_shapes()

__all__ = [
    "CheckedDatasetMapper",
    "DatasetValidationError",
    "UnreadableImageError",
    "SYNTHETIC_SHAPES_CLASSES",
    "SYNTHETIC_SHAPES_NUM_CLASSES",
    "SYNTHETIC_SHAPES_TRAIN",
    "SYNTHETIC_SHAPES_VAL",
    "SyntheticShapesParams",
    "check_dataset_files",
    "default_synthetic_shapes_root",
    "ensure_synthetic_shapes",
    "load_checked_dataset_dicts",
    "read_image_checked",
    "register_synthetic_shapes",
    "validate_dataset_dicts",
]
