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
from .dataset_ap import (
    class_label,
    coco_images_dict,
    coco_results_for_image,
    dataset_category_ids,
    evaluate_on_dataset,
    ground_truth_coco_dict,
    score_coco_results,
    top_detections,
)

__all__ = [
    "BACKENDS",
    "CocoBackend",
    "PluginCOCOEvaluator",
    "class_label",
    "coco_ap_summary",
    "coco_images_dict",
    "coco_results_for_image",
    "dataset_category_ids",
    "default_evaluation_folder",
    "evaluate_on_dataset",
    "evaluation_folder_name",
    "fast_coco_eval_available",
    "ground_truth_coco_dict",
    "resolve_coco_backend",
    "run_coco_eval",
    "score_coco_results",
    "top_detections",
]
