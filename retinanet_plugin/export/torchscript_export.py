"""TorchScript by tracing (through Detectron2's ``TracingAdapter``) of
:class:`ExportableRetinaNet`."""

import warnings
from typing import Sequence

import torch
from torch import Tensor, nn

from detectron2.export import TracingAdapter

from ..utils import atomic_write
from .exportable_model import ExportableRetinaNet


def ignore_known_tracer_warnings() -> None:
    """Inside a ``warnings.catch_warnings()`` block: drop the TracerWarnings of two shape checks
    that read a tensor as a Python bool and are right for every input (Detectron2's ``Boxes`` [N, 4]
    check, GroupNorm's "more than one value per channel" check). Any other TracerWarning still
    shows: it would mean a value frozen into the graph."""
    warnings.filterwarnings(
        "ignore", category=torch.jit.TracerWarning, module=r"detectron2\.structures\.boxes"
    )
    warnings.filterwarnings(
        "ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.functional"
    )


def export_torchscript(model: nn.Module, sample_inputs: Sequence[Tensor]) -> torch.jit.ScriptModule:
    """Trace ``model`` (a ``RetinaNetPlugin`` in eval mode) into TorchScript.

    The trace records the data-dependent steps (threshold, NMS, top-D) as graph operations and the
    shapes as traced values, so the result runs on any batch size and any padded image size, not
    only the sample's.

    Args:
        sample_inputs: (images, image_sizes, output_sizes) as :class:`ExportableRetinaNet` takes
            them.
    Returns:
        a ScriptModule with the inputs and outputs of :class:`ExportableRetinaNet`.
    """
    adapter = TracingAdapter(ExportableRetinaNet(model), tuple(sample_inputs))
    with torch.no_grad(), warnings.catch_warnings():
        ignore_known_tracer_warnings()
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.trace` is deprecated", category=FutureWarning
        )
        return torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)


def save_torchscript(module: torch.jit.ScriptModule, path: str) -> None:
    """Write ``module`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.jit.save(module, f))


def load_torchscript(path: str, device: str = "cpu") -> torch.jit.ScriptModule:
    return torch.jit.load(path, map_location=device)
