"""Detectron2's ``COCOEvaluator`` on the COCO API that :func:`resolve_coco_backend` picks.

Detectron2 chooses between pycocotools' ``COCOeval`` and its own compiled ``COCOeval_opt``; the
latter needs ``detectron2._C``, which does not load here, so Detectron2 alone evaluates in Python.
:class:`PluginCOCOEvaluator` is Detectron2's evaluator unchanged (the same inputs, result files,
tables and metric names) except that, while it loads the ground truth and while it evaluates, the
``COCO`` and ``COCOeval`` names that Detectron2's module calls refer to the chosen backend's
classes.
"""

import contextlib
import logging
import os
import re
from typing import Iterator, Optional

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as d2_coco_evaluation

from .coco_backend import CocoBackend, resolve_coco_backend

__all__ = ["PluginCOCOEvaluator", "evaluation_folder_name"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _coco_api_of(backend: CocoBackend) -> Iterator[None]:
    """Within the block, Detectron2's coco_evaluation module uses ``backend``'s COCO and
    COCOeval."""
    if backend.name == "pycocotools":
        yield
        return
    saved = d2_coco_evaluation.COCO, d2_coco_evaluation.COCOeval
    d2_coco_evaluation.COCO, d2_coco_evaluation.COCOeval = backend.COCO, backend.COCOeval
    try:
        yield
    finally:
        d2_coco_evaluation.COCO, d2_coco_evaluation.COCOeval = saved


class PluginCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator(dataset_name, ..., use_fast_impl=False)`` computing AP with ``backend``:
    "auto" (faster-coco-eval when installed, else pycocotools with one log line), "faster_coco_eval"
    or "pycocotools"."""

    def __init__(
        self,
        dataset_name: str,
        tasks=None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        backend: str = "auto",
        **kwargs,
    ):
        kwargs.pop("use_fast_impl", None)
        self._coco_backend = resolve_coco_backend(backend)
        with _coco_api_of(self._coco_backend):
            super().__init__(
                dataset_name, tasks, distributed, output_dir, use_fast_impl=False, **kwargs
            )
        logger.info(
            f"COCO evaluation of '{dataset_name}' with {self._coco_backend.name} "
            f"{self._coco_backend.version}"
        )

    @property
    def coco_backend(self) -> CocoBackend:
        return self._coco_backend

    def _eval_predictions(self, predictions, img_ids=None):
        with _coco_api_of(self._coco_backend):
            super()._eval_predictions(predictions, img_ids)


def evaluation_folder_name(dataset_name: str) -> str:
    """A folder name for a dataset's evaluation files: datasets given by files
    (``coco:/data/x.json``) have slashes and colons in their names."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_name).strip("_.")
    return name or "dataset"


def default_evaluation_folder(output_dir: str, dataset_name: str, kind: str = "inference") -> str:
    """``output_dir/<kind>/<dataset>``: where an evaluation of ``kind`` ("inference", or
    "inference_TTA" with test-time augmentation) writes its files."""
    return os.path.join(output_dir, kind, evaluation_folder_name(dataset_name))
