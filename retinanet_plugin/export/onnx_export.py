"""ONNX of :class:`ExportableRetinaNet` (NMS included, as ONNX ``NonMaxSuppression``) and an ONNX
Runtime runner."""

import io
import warnings
from typing import Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..utils import atomic_write
from .exportable_model import ExportableRetinaNet
from .padded_detections import OUTPUT_NAMES
from .program_export import (
    check_sample_inputs,
    ignore_known_export_warnings,
    program_dynamic_shapes,
)
from .torchscript_export import ignore_known_tracer_warnings

INPUT_NAMES = ("images", "image_sizes", "output_sizes")
ONNX_EXPORTERS = ("dynamo", "torchscript")
LEGACY_OPSET = 17


def export_onnx(
    model: nn.Module, sample_inputs: Sequence[Tensor], exporter: str = "dynamo"
) -> bytes:
    """The serialised ONNX model of ``model`` (a ``RetinaNetPlugin`` in eval mode), whole inference
    included.

    Args:
        sample_inputs: (images, image_sizes, output_sizes) as :class:`ExportableRetinaNet` takes
            them.
        exporter: ``"dynamo"``, PyTorch's current exporter (``torch.export``, then ONNX);
            ``"torchscript"``, the legacy exporter from a trace (deprecated by PyTorch, but several
            times faster to run). Both give a graph with a dynamic batch size, height and width, and
            the same detections.
    """
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"exporter must be one of {ONNX_EXPORTERS}, got {exporter!r}")
    exportable = ExportableRetinaNet(model)
    args = tuple(sample_inputs)
    with torch.no_grad(), warnings.catch_warnings():
        if exporter == "dynamo":
            check_sample_inputs(exportable, args)
            ignore_known_export_warnings()
            program = torch.onnx.export(
                exportable,
                args,
                dynamo=True,
                dynamic_shapes=program_dynamic_shapes(exportable),
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                verbose=False,
            )
            return program.model_proto.SerializeToString()
        ignore_known_tracer_warnings()
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript-based ONNX export"
        )
        buffer = io.BytesIO()
        batch = {0: "batch"}
        torch.onnx.export(
            exportable,
            args,
            buffer,
            dynamo=False,
            opset_version=LEGACY_OPSET,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={
                "images": {0: "batch", 2: "height", 3: "width"},
                **{n: batch for n in INPUT_NAMES[1:]},
                **{n: batch for n in OUTPUT_NAMES},
            },
        )
        return buffer.getvalue()


def save_onnx(serialized: bytes, path: str) -> None:
    """Write a serialised ONNX model to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(serialized))


class OnnxRuntimeDetector:
    """Runs an exported ONNX model with ONNX Runtime; takes and returns what
    :class:`ExportableRetinaNet` does."""

    def __init__(
        self, model: Union[str, bytes], providers: Sequence[str] = ("CPUExecutionProvider",)
    ):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(model, providers=list(providers))

    def __call__(
        self, images: Tensor, image_sizes: Tensor, output_sizes: Tensor
    ) -> Tuple[Tensor, ...]:
        feeds = {
            name: np.ascontiguousarray(value.detach().cpu().numpy())
            for name, value in zip(INPUT_NAMES, (images, image_sizes, output_sizes))
        }
        return tuple(torch.from_numpy(x) for x in self.session.run(list(OUTPUT_NAMES), feeds))
