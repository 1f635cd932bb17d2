"""Datasets of the plugin, and the checks of every dataset it trains or tests on.

Importing this package registers ``retinanet_synthetic_shapes_{train,val}`` (lazily: the files are
generated the first time Detectron2 asks for the data, under
``$DETECTRON2_DATASETS/retinanet_synthetic_shapes``, default
``./datasets/retinanet_synthetic_shapes``). Datasets given by files in a config
(``coco:JSON[:IMAGE_ROOT]``, ``voc:FOLDER[:SPLIT]``) are registered on first use
(:mod:`.file_datasets`).

Modules:

- datasets: :mod:`.synthetic_shapes` (files and registration; images drawn by
  :mod:`.shape_drawing`), :mod:`.file_datasets` (``coco:`` / ``voc:`` names), :mod:`.voc` (Pascal
  VOC XML);
- checks when a loader is built: :mod:`.catalog_checks` (names registered, files on disk),
  :mod:`.checked_loading` (the policy table; the dataset dicts a loader gets),
  :mod:`.dataset_dict_checks` (images and boxes of the dicts), :mod:`.coco_json_checks` (COCO json
  files Detectron2 cannot load), :mod:`.errors` (the error they raise);
- reading images for training: :mod:`.checked_mapper` (the ``DatasetMapper``),
  :mod:`.image_reading`, :mod:`.image_quirks` (EXIF, 16-bit, huge images),
  :mod:`.training_instances` (crowd and cut-off boxes).
"""

from .catalog_checks import check_dataset_files
from .checked_loading import load_checked_dataset_dicts
from .checked_mapper import CheckedDatasetMapper
from .dataset_dict_checks import validate_dataset_dicts
from .errors import DatasetValidationError
from .file_datasets import (
    apply_num_classes_from_data,
    dataset_class_names,
    register_datasets_of_config,
    register_file_datasets,
    unregister_file_datasets,
)
from .image_reading import UnreadableImageError, read_image_checked
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
from .voc import VocAnnotationError

register_synthetic_shapes()

__all__ = [
    "apply_num_classes_from_data",
    "dataset_class_names",
    "register_datasets_of_config",
    "register_file_datasets",
    "unregister_file_datasets",
    "CheckedDatasetMapper",
    "DatasetValidationError",
    "UnreadableImageError",
    "VocAnnotationError",
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
