"""``torch.export`` of :class:`ExportableRetinaNet`, with a dynamic batch size and image size."""

import warnings
from typing import Dict, Sequence

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram

from ..utils import atomic_write
from .exportable_model import ExportableRetinaNet


def ignore_known_export_warnings() -> None:
    """Inside a ``warnings.catch_warnings()`` block: drop torchvision's own deprecation notice,
    raised while ``torch.export`` traces its ``nms`` (it names an API torchvision calls, nothing the
    user can change)."""
    warnings.filterwarnings(
        "ignore", message="`create_unbacked_symint` is deprecated", category=FutureWarning
    )


def min_image_side(exportable: ExportableRetinaNet) -> int:
    """The smallest padded height / width an exported program takes: the first multiple of the
    batch's ``size_divisibility`` above the coarsest feature stride, so that every level has at
    least 2 x 2 cells (``torch.export`` specialises sizes of 1, so a level of 1 cell would need a
    graph of its own)."""
    div = exportable.size_divisibility
    max_stride = max(shape.stride for shape in exportable.model.backbone.output_shape().values())
    return (max_stride // div + 1) * div


def program_dynamic_shapes(exportable: ExportableRetinaNet) -> Dict[str, Dict[int, object]]:
    """Batch size >= 1; height and width any multiple of ``size_divisibility`` from
    :func:`min_image_side`."""
    div = exportable.size_divisibility
    min_blocks = min_image_side(exportable) // div
    batch = Dim("batch", min=1)
    blocks_h, blocks_w = Dim("blocks_h", min=min_blocks), Dim("blocks_w", min=min_blocks)
    return {
        "images": {0: batch, 2: div * blocks_h, 3: div * blocks_w},
        "image_sizes": {0: batch},
        "output_sizes": {0: batch},
    }


def check_sample_inputs(exportable: ExportableRetinaNet, sample_inputs: Sequence[Tensor]) -> None:
    """``torch.export`` needs a sample batch of >= 2 images, each side >= :func:`min_image_side`."""
    images = sample_inputs[0]
    smallest = min_image_side(exportable)
    if images.shape[0] < 2:
        raise ValueError(
            "export needs a sample batch of at least 2 images (a batch of 1 would fix the batch "
            "size)"
        )
    if min(images.shape[-2:]) < smallest:
        raise ValueError(
            f"the sample batch's padded size {tuple(images.shape[-2:])} is below {smallest} px, "
            "the smallest size the exported program takes"
        )


def export_program(model: nn.Module, sample_inputs: Sequence[Tensor]) -> ExportedProgram:
    """``torch.export.export`` of ``model`` (a ``RetinaNetPlugin`` in eval mode), whole inference
    included.

    The data-dependent steps (threshold, NMS) become unbacked sizes inside the graph; the outputs
    have fixed sizes [N, D, ...]. ``program.module()(images, image_sizes, output_sizes)`` runs it.
    """
    exportable = ExportableRetinaNet(model)
    check_sample_inputs(exportable, sample_inputs)
    with torch.no_grad(), warnings.catch_warnings():
        ignore_known_export_warnings()
        return torch.export.export(
            exportable,
            tuple(sample_inputs),
            dynamic_shapes=program_dynamic_shapes(exportable),
            strict=False,
        )


def save_program(program: ExportedProgram, path: str) -> None:
    """Write ``program`` to ``path`` (a .pt2 archive) atomically."""
    atomic_write(path, lambda f: torch.export.save(program, f))


def load_program(path: str) -> ExportedProgram:
    return torch.export.load(path)
