"""COCO AP of a predictor on a dataset's whole images (``tools/predict.py --evaluate``), at any
detection limit.

Detectron2's evaluation runs the model through the test loader, at the test size; this runs any
predictor (e.g. the tiled one, ``retinanet_plugin.engine.tiled_inference``) on each image as read
from its file, and evaluates with ``maxDets`` [1, 10, ``max_detections``]: a large image with
hundreds of objects needs more than COCO's 100.
"""

import json
import logging
from typing import Any, Callable, Dict, List

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.file_io import PathManager

from ..data.file_datasets import dataset_class_names
from ..data.checked_loading import load_checked_dataset_dicts
from ..data.image_reading import read_image_checked
from .coco_backend import coco_ap_summary, resolve_coco_backend, run_coco_eval

__all__ = ["evaluate_on_dataset", "ground_truth_coco_dict"]

logger = logging.getLogger(__name__)


def ground_truth_coco_dict(dataset_name: str) -> Dict[str, Any]:
    """The COCO dict to evaluate against: the dataset's json file when it has one, else its dicts
    converted (Detectron2's ``convert_to_coco_dict``: crowd boxes keep ``iscrowd``)."""
    json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
    if json_file:
        with PathManager.open(json_file, "r") as f:
            return json.load(f)
    return convert_to_coco_dict(dataset_name)


def evaluate_on_dataset(
    cfg,
    dataset_name: str,
    predictor: Callable,
    *,
    max_detections: int = 100,
    batch_size: int = 1,
    backend: str = "auto",
) -> Dict[str, Any]:
    """Run ``predictor`` (a list of BGR images -> ``[{"instances": Instances}]`` in image
    coordinates) on every image of ``dataset_name`` and return ``{"metrics": {AP, AP50, ...,
    AP-<class>}, "num_images", "num_detections", "max_detections", "backend"}``."""
    dicts = load_checked_dataset_dicts(cfg, dataset_name, is_train=False)
    class_names = dataset_class_names(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    to_dataset_id = {v: k for k, v in metadata.get("thing_dataset_id_to_contiguous_id", {}).items()}
    results: List[Dict[str, Any]] = []
    for first in range(0, len(dicts), batch_size):
        batch = dicts[first : first + batch_size]
        images = [
            read_image_checked(
                d["file_name"],
                "BGR",
                d.get("image_id"),
                expected_size=(d["height"], d["width"]),
                exif_orientation=cfg.DATASETS.get("EXIF_ORIENTATION", "auto"),
            )
            for d in batch
        ]
        for record, output in zip(batch, predictor(images)):
            instances = output["instances"].to("cpu")
            if len(instances) > max_detections:
                instances = instances[instances.scores.argsort(descending=True)[:max_detections]]
            for result in instances_to_coco_json(instances, record["image_id"]):
                result["category_id"] = to_dataset_id.get(
                    result["category_id"], result["category_id"]
                )
                results.append(result)
    chosen = resolve_coco_backend(backend)
    summary = {
        "num_images": len(dicts),
        "num_detections": len(results),
        "max_detections": max_detections,
        "backend": f"{chosen.name} {chosen.version}",
    }
    if not results:
        logger.warning(f"no detections on '{dataset_name}': AP is 0")
        summary["metrics"] = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
        return summary
    coco_eval = run_coco_eval(
        ground_truth_coco_dict(dataset_name), results, chosen, max_dets=max_detections
    )
    summary["metrics"] = coco_ap_summary(coco_eval, class_names)
    return summary
