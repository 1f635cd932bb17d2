"""Inference backends for image files (``tools/predict.py --backend``), chosen once at construction.

Each backend has one method the prediction loop calls, ``predict(images)``: a list of (H, W, 3)
uint8 BGR images (what ``DefaultPredictor`` takes) -> one ``Instances`` per image (``pred_boxes``,
``scores``, ``pred_classes``, on the CPU, in the image's own coordinates). Calling a backend
(``backend(images)``) gives the same as ``[{"instances": ...}]``, the predictor interface that
``TiledPredictor`` wraps, so either backend can run tile by tile.

- :class:`PyTorchBackend`: ``BatchPredictor`` (eager PyTorch: ``DefaultPredictor``'s
  preprocessing, the model in eval mode), or a test's stand-in for it;
- :class:`OnnxRuntimeBackend`: the exported ONNX model (``tools/export_model.py --format onnx``,
  or exported when the backend is built) run by ONNX Runtime
  (:class:`~retinanet_plugin.export.OnnxRuntimeDetector`), after the same preprocessing
  (``BatchPredictor.prepare`` itself, without a model) and the same padding
  (``retinanet_plugin.export.batch_from_inputs``);
- :class:`PredictorBackend`: any predictor callable, e.g. ``TiledPredictor`` around one of the two
  (``--tile``, :func:`tiled_backend`).

:func:`build_backend` builds the one a name chooses. ONNX Runtime's detections equal eager PyTorch's
up to float rounding (within 1e-3 px on the synthetic val images, tests/test_predict_tool.py),
except where that rounding decides a near-tie at the score threshold or in NMS.

:func:`predict_stream` runs a backend on the batches of an
:class:`~retinanet_plugin.engine.image_stream.ImageStream` (the images decoded by its workers
while the model runs on the batch before), :func:`speed_report` says how fast, and
:func:`detection_fields` gives an image's detections as json-able lists.
"""

import json
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from detectron2.structures import Instances
from tqdm import tqdm

from ..data.synthetic_shapes import SyntheticShapesParams, render_synthetic_image
from ..export import (
    ExportableRetinaNet,
    OnnxRuntimeDetector,
    batch_from_inputs,
    export_onnx,
    padded_detections_to_instances,
    save_onnx,
)
from ..evaluation.dataset_ap import class_label, top_detections
from .batch_predictor import BatchPredictor, Preprocessing
from .image_stream import ImageStream, StreamedImage
from .tiled_inference import TiledPredictor

__all__ = [
    "BACKENDS",
    "OnnxRuntimeBackend",
    "PredictorBackend",
    "Preprocessing",
    "PyTorchBackend",
    "build_backend",
    "detection_fields",
    "predict_stream",
    "speed_report",
    "tiled_backend",
]

BACKENDS = ("pytorch", "onnxruntime")
# tools/export_model.py writes it beside the exported files
EXPORT_INFO = "export_info.json"


class PredictorBackend:
    """A backend from a predictor: a callable from a list of BGR images to ``[{"instances":
    Instances}]`` (``BatchPredictor``, a ``TiledPredictor`` around another backend, a test's
    stand-in)."""

    def __init__(self, predictor: Callable[[List[np.ndarray]], List[Dict]], name: str):
        self.predictor = predictor
        self.name = name

    def predict(self, images: Sequence[np.ndarray]) -> List[Instances]:
        return [output["instances"].to("cpu") for output in self.predictor(list(images))]

    def __call__(self, images: Sequence[np.ndarray]) -> List[Dict]:
        return [{"instances": instances} for instances in self.predict(images)]


class PyTorchBackend(PredictorBackend):
    """Eager PyTorch: ``make_predictor(cfg)``, by default ``BatchPredictor`` (the model of ``cfg``
    with ``MODEL.WEIGHTS``, in eval mode, ``DefaultPredictor``'s preprocessing)."""

    def __init__(self, cfg, make_predictor=BatchPredictor):
        super().__init__(make_predictor(cfg), "pytorch")


class OnnxRuntimeBackend:
    """The exported model (:class:`~retinanet_plugin.export.ExportableRetinaNet` as ONNX: whole
    inference, NMS included) in ONNX Runtime's CPU provider.

    Args:
        model: the ``.onnx`` file, or its bytes.
        cfg: the config whose preprocessing (``INPUT.MIN_SIZE_TEST``, ``MAX_SIZE_TEST``,
            ``FORMAT``) the images get.
        size_divisibility: what the batch is padded to a multiple of (the backbone's).

    Build it with :meth:`from_file` (a file ``tools/export_model.py`` wrote) or :meth:`exported`
    (the config's model exported now).
    """

    name = "onnxruntime"

    def __init__(self, model: Union[str, bytes], cfg, size_divisibility: int):
        self.detector = OnnxRuntimeDetector(model)
        self.preprocessing = Preprocessing(cfg)
        self.size_divisibility = int(size_divisibility)

    def predict(self, images: Sequence[np.ndarray]) -> List[Instances]:
        if not len(images):
            return []
        inputs = [self.preprocessing.prepare(image) for image in images]
        args = batch_from_inputs(inputs, self.size_divisibility)
        return padded_detections_to_instances(self.detector(*args), args[2])

    def __call__(self, images: Sequence[np.ndarray]) -> List[Dict]:
        return [{"instances": instances} for instances in self.predict(images)]

    @classmethod
    def from_file(cls, cfg, path: str, log=print) -> "OnnxRuntimeBackend":
        """The model of ``path``. Its padding and channel order come from the ``export_info.json``
        beside it (``tools/export_model.py``), checked against ``cfg``; without that file, from
        ``cfg`` (the backbone's ``size_divisibility``)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--onnx {path!r} does not exist")
        info = _export_info(path)
        if info is None:
            from detectron2.modeling import build_backbone

            size_divisibility = max(int(build_backbone(cfg).size_divisibility), 1)
        else:
            if info.get("input_format", cfg.INPUT.FORMAT) != cfg.INPUT.FORMAT:
                raise ValueError(
                    f"--onnx {path!r} takes {info['input_format']} images (its {EXPORT_INFO}), "
                    f"the config's INPUT.FORMAT is {cfg.INPUT.FORMAT}: use the config it was "
                    "exported from"
                )
            for key in ("min_size_test", "max_size_test"):
                if info.get(key, cfg.INPUT[key.upper()]) != cfg.INPUT[key.upper()]:
                    log(
                        f"warning: --onnx {path!r} was exported with INPUT.{key.upper()} "
                        f"{info[key]}, the images are resized with the config's "
                        f"{cfg.INPUT[key.upper()]}"
                    )
            size_divisibility = int(info["size_divisibility"])
        return cls(path, cfg, size_divisibility)

    @classmethod
    def exported(
        cls, cfg, path: str, make_predictor=BatchPredictor, log=print
    ) -> "OnnxRuntimeBackend":
        """The model of ``cfg`` (``MODEL.WEIGHTS``) exported to ONNX now, with the legacy
        (TorchScript-based) exporter, several times faster than the dynamo one and with the same
        detections (``retinanet_plugin.export.export_onnx``), on a sample batch of two embedded
        synthetic images; written to ``path`` (atomically) for reuse with ``--onnx``."""
        start = time.perf_counter()
        predictor = make_predictor(cfg)
        exportable = ExportableRetinaNet(predictor.model)
        params = SyntheticShapesParams(num_val=2)
        images = [render_synthetic_image(params, "val", i)[0] for i in range(2)]
        sample = tuple(
            t.to(predictor.model.device)
            for t in batch_from_inputs(
                [predictor.prepare(image) for image in images], exportable.size_divisibility
            )
        )
        serialized = export_onnx(predictor.model, sample, exporter="torchscript")
        save_onnx(serialized, path)
        log(
            f"exported the model to ONNX in {time.perf_counter() - start:.1f} s -> {path} "
            f"(next time: --onnx {path})"
        )
        return cls(serialized, cfg, exportable.size_divisibility)


def _export_info(onnx_path: str):
    """``export_info.json`` beside ``onnx_path`` when it describes that file, else None."""
    info_path = os.path.join(os.path.dirname(os.path.abspath(onnx_path)), EXPORT_INFO)
    if not os.path.isfile(info_path):
        return None
    with open(info_path) as f:
        info = json.load(f)
    entry = info.get("files", {}).get("onnx", {})
    if entry.get("file") != os.path.basename(onnx_path) or "size_divisibility" not in info:
        return None
    return info


def build_backend(
    cfg,
    name: str = "pytorch",
    *,
    onnx: str = "",
    export_path: str = "",
    tile: int = 0,
    tile_overlap: float = 0.25,
    max_detections: int = 1000,
    batch_size: int = 1,
    make_predictor=BatchPredictor,
    log=print,
):
    """The backend ``name`` (one of :data:`BACKENDS`), built once: ``"pytorch"``:
    :class:`PyTorchBackend`; ``"onnxruntime"``: :class:`OnnxRuntimeBackend` of the file ``onnx``
    (:meth:`~OnnxRuntimeBackend.from_file`), else of the config's model exported now to
    ``export_path`` (:meth:`~OnnxRuntimeBackend.exported`); test-time augmentation
    (``TEST.AUG.ENABLED``) in the first only. With ``tile`` (px), run tile by tile
    (:func:`tiled_backend`: ``tile_overlap``, ``max_detections``, ``batch_size`` tiles per
    forward)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}, not one of {BACKENDS}")
    if name == "onnxruntime" and cfg.TEST.AUG.ENABLED:
        log(
            "note: TEST.AUG.ENABLED: test-time augmentation is not part of the exported model; "
            "the onnxruntime backend runs without it (the pytorch backend runs with it)"
        )
    if name == "onnxruntime" and onnx:
        backend = OnnxRuntimeBackend.from_file(cfg, onnx, log=log)
    elif name == "onnxruntime":
        backend = OnnxRuntimeBackend.exported(cfg, export_path, make_predictor, log=log)
    else:
        backend = PyTorchBackend(cfg, make_predictor)
    if not tile:
        return backend
    return tiled_backend(
        cfg, backend, tile, tile_overlap, max_detections=max_detections, batch_size=batch_size
    )


def tiled_backend(
    cfg, backend, tile: int, overlap: float, *, max_detections: int, batch_size: int = 1
) -> PredictorBackend:
    """``backend`` run tile by tile (``TiledPredictor``: ``tile`` px tiles overlapping by
    ``overlap``, a fraction of ``tile``, ``batch_size`` tiles per ``predict``, their detections
    merged by class-aware NMS at the config's ``MODEL.RETINANET.NMS_THRESH_TEST``, at most
    ``max_detections`` per image)."""
    tiled = TiledPredictor(
        backend,
        tile,
        overlap,
        nms_thresh=cfg.MODEL.RETINANET.NMS_THRESH_TEST,
        max_detections=max_detections,
        batch_size=batch_size,
    )
    return PredictorBackend(tiled, f"{backend.name}, tiles of {tile} px")


def predict_stream(
    backend, stream: ImageStream, max_detections: int, progress: bool = True
) -> Iterator[Tuple[StreamedImage, Instances]]:
    """(StreamedImage, Instances) for each image of ``stream``, in order: the images decoded by the
    stream's workers while ``backend.predict`` runs on the batch before, at most
    ``max_detections`` detections per image (the best), with a progress bar on stderr (tqdm; none
    when ``progress`` is false)."""
    bar = tqdm(total=len(stream), unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for batch in stream:
            outputs = backend.predict([item.image for item in batch])
            for item, instances in zip(batch, outputs):
                yield item, top_detections(instances, max_detections)
            bar.update(stream.consumed - bar.n)
    finally:
        bar.close()


def speed_report(stream: ImageStream, backend, seconds: float) -> str:
    """One line on a finished :func:`predict_stream`: images predicted, time and rate, the backend,
    the images per step and workers of ``stream``, and (when it skips unreadable files) how many it
    skipped."""
    count = stream.consumed - len(stream.skipped)
    skipped = f", {len(stream.skipped)} skipped" if stream.skip_unreadable else ""
    return (
        f"{count} images in {seconds:.1f} s ({count / max(seconds, 1e-9):.2f} images/s; "
        f"{backend.name}, {stream.batch_size} per step, {stream.workers} workers{skipped})"
    )


def detection_fields(
    instances: Instances, class_names: Optional[Sequence[str]] = None
) -> Dict[str, Any]:
    """An image's detections as json-able lists: ``boxes_xyxy``, ``scores``, ``classes`` and
    ``labels`` (the class names, ``class_label``)."""
    classes = instances.pred_classes.tolist()
    return {
        "boxes_xyxy": instances.pred_boxes.tensor.tolist(),
        "scores": instances.scores.tolist(),
        "classes": classes,
        "labels": [class_label(class_names, c) for c in classes],
    }
