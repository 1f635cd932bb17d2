"""COCO evaluation: Detectron2's ``COCOEvaluator`` on faster-coco-eval when it is installed (else
pycocotools), and AP summaries at any detection limit (``tools/predict.py --evaluate``)."""

from .coco_backend import (
    BACKENDS,
    CocoBackend,
    coco_ap_summary,
    fast_coco_eval_available,
    resolve_coco_backend,
    run_coco_eval,
)
from .coco_evaluator import PluginCOCOEvaluator, default_evaluation_folder, evaluation_folder_name
from .dataset_ap import evaluate_on_dataset, ground_truth_coco_dict

__all__ = [
    "BACKENDS",
    "CocoBackend",
    "PluginCOCOEvaluator",
    "coco_ap_summary",
    "default_evaluation_folder",
    "evaluate_on_dataset",
    "evaluation_folder_name",
    "fast_coco_eval_available",
    "ground_truth_coco_dict",
    "resolve_coco_backend",
    "run_coco_eval",
]
