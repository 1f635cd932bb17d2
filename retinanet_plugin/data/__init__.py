"""Datasets of the plugin. Importing this package registers ``retinanet_synthetic_shapes_{train,val}`` (lazily:
the files are generated the first time Detectron2 asks for the data, under
``$DETECTRON2_DATASETS/retinanet_synthetic_shapes``, default ``./datasets/retinanet_synthetic_shapes``).
Datasets given by files in a config (``coco:JSON[:IMAGE_ROOT]``, ``voc:FOLDER[:SPLIT]``) are registered on first
use (:mod:`.file_datasets`)."""

from .dataset_checks import check_dataset_files
from .file_datasets import (
    apply_num_classes_from_data,
    dataset_class_names,
    register_datasets_of_config,
    register_file_datasets,
)
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
    "apply_num_classes_from_data",
    "dataset_class_names",
    "register_datasets_of_config",
    "register_file_datasets",
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
