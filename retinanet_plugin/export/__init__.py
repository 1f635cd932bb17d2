"""Deployment exports of ``RetinaNetPlugin``: TorchScript (traced through Detectron2's
``TracingAdapter``), ``torch.export`` programs and ONNX, each of the whole inference
(post-processing included), for a batch of images; and TorchScript by scripting
(:func:`script_model`), with the model's own list-of-dicts interface.

All three take and return what :class:`ExportableRetinaNet` does: a padded batch [N, 3, H, W] with
each image's size and output size, and fixed-size detections [N, D, ...] with a count per image.
:func:`pad_images` builds the batch, :func:`padded_detections_to_instances` turns the outputs into
Detectron2 ``Instances``.
"""

from .exportable_model import ExportableRetinaNet
from .image_batch import batch_from_inputs, pad_images
from .onnx_export import INPUT_NAMES, ONNX_EXPORTERS, OnnxRuntimeDetector, export_onnx, save_onnx
from .padded_detections import (
    OUTPUT_NAMES,
    padded_detections_to_instances,
    resize_padded_detections,
)
from .program_export import (
    export_program,
    load_program,
    min_image_side,
    program_dynamic_shapes,
    save_program,
)
from .torchscript_export import export_torchscript, load_torchscript, save_torchscript
from .torchscript_scripting import DETECTION_FIELDS, script_model, scripted_detections

EXPORT_FORMATS = ("torchscript", "export", "onnx")

__all__ = [
    "DETECTION_FIELDS",
    "EXPORT_FORMATS",
    "ExportableRetinaNet",
    "batch_from_inputs",
    "INPUT_NAMES",
    "ONNX_EXPORTERS",
    "OUTPUT_NAMES",
    "OnnxRuntimeDetector",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "load_program",
    "load_torchscript",
    "min_image_side",
    "pad_images",
    "padded_detections_to_instances",
    "program_dynamic_shapes",
    "resize_padded_detections",
    "save_onnx",
    "save_program",
    "save_torchscript",
    "script_model",
    "scripted_detections",
]
