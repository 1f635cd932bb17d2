"""COCO AP of a predictor on a dataset's whole images (``tools/predict.py --evaluate``), at any
detection limit.

Detectron2's evaluation runs the model through the test loader, at the test size; this runs any
predictor (e.g. the tiled one, ``retinanet_plugin.engine.tiled_inference``) on each image as read
from its file, and evaluates with ``maxDets`` [1, 10, ``max_detections``]: a large image with
hundreds of objects needs more than COCO's 100.

The pieces, shared with ``tools/predict.py``: :func:`dataset_category_ids` (the model's class
indices -> the dataset's category ids), :func:`top_detections` (the best ``max_detections`` of an
image), :func:`coco_results_for_image` (one image's detections as COCO results, with the dataset's
ids), :func:`score_coco_results` (the AP summary of a dataset's results) and, for images that are
not a dataset's, :func:`coco_images_dict` (the COCO dataset without annotations that their results
load against).
"""

import json
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances
from detectron2.utils.file_io import PathManager

from ..data.checked_loading import load_checked_dataset_dicts
from ..data.file_datasets import dataset_class_names
from ..data.image_reading import read_image_checked
from .coco_backend import coco_ap_summary, resolve_coco_backend, run_coco_eval

__all__ = [
    "class_label",
    "coco_images_dict",
    "coco_results_for_image",
    "dataset_category_ids",
    "evaluate_on_dataset",
    "ground_truth_coco_dict",
    "score_coco_results",
    "top_detections",
]

logger = logging.getLogger(__name__)


def ground_truth_coco_dict(dataset_name: str) -> Dict[str, Any]:
    """The COCO dict to evaluate against: the dataset's json file when it has one, else its dicts
    converted (Detectron2's ``convert_to_coco_dict``: crowd boxes keep ``iscrowd``)."""
    json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
    if json_file:
        with PathManager.open(json_file, "r") as f:
            return json.load(f)
    return convert_to_coco_dict(dataset_name)


def dataset_category_ids(metadata) -> Dict[int, int]:
    """Contiguous class index -> the dataset's category id, from the metadata's
    ``thing_dataset_id_to_contiguous_id`` (as Detectron2's ``COCOEvaluator`` maps them back);
    empty (the ids are the indices) when the metadata is None or has no such mapping."""
    if metadata is None:
        return {}
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None) or {}
    return {int(contiguous): int(dataset_id) for dataset_id, contiguous in mapping.items()}


def top_detections(instances: Instances, max_detections: int) -> Instances:
    """``instances`` with at most ``max_detections`` detections: the best scored ones."""
    if len(instances) > max_detections:
        instances = instances[instances.scores.argsort(descending=True)[:max_detections]]
    return instances


def coco_results_for_image(
    instances: Instances, image_id: Any, to_dataset_id: Dict[int, int]
) -> List[Dict[str, Any]]:
    """One image's detections as COCO results (Detectron2's ``instances_to_coco_json``:
    ``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``), the category ids mapped to
    the dataset's through ``to_dataset_id`` (:func:`dataset_category_ids`; unmapped: unchanged)."""
    results = instances_to_coco_json(instances, image_id)
    for result in results:
        result["category_id"] = to_dataset_id.get(result["category_id"], result["category_id"])
    return results


def class_label(class_names: Optional[Sequence[str]], index: int) -> str:
    """The name of class ``index``: ``class_names[index]``, else the index as text."""
    return class_names[index] if class_names and index < len(class_names) else str(index)


def coco_images_dict(
    images: Sequence[Dict[str, Any]],
    num_classes: int,
    class_names: Optional[Sequence[str]],
    to_dataset_id: Dict[int, int],
) -> Dict[str, Any]:
    """Images (``id``, ``file_name``, ``height``, ``width``) as a COCO dataset without annotations,
    with ``num_classes`` categories (``id``: the dataset's, through ``to_dataset_id``; ``name``:
    :func:`class_label`): ``COCO(file).loadRes(results)`` loads the images' results, and ground
    truth can be added."""
    categories = [
        {"id": to_dataset_id.get(c, c), "name": class_label(class_names, c)}
        for c in range(num_classes)
    ]
    return {"images": list(images), "annotations": [], "categories": categories}


def score_coco_results(
    dataset_name: str,
    results: List[Dict[str, Any]],
    max_detections: int,
    backend: str = "auto",
    *,
    warn: Callable[[str], None] = logger.warning,
) -> Dict[str, Any]:
    """COCO AP of ``results`` (all the images' :func:`coco_results_for_image`) against
    ``dataset_name``'s ground truth, at ``max_detections`` per image, with the COCO backend
    ``backend`` names (``resolve_coco_backend``): ``{"num_detections", "max_detections",
    "backend", "metrics": {AP, AP50, ..., AP-<class>}}``. Without any detection, AP 0 (and
    ``warn`` says so). ``results`` gain the fields the evaluation adds."""
    chosen = resolve_coco_backend(backend)
    summary = {
        "num_detections": len(results),
        "max_detections": max_detections,
        "backend": f"{chosen.name} {chosen.version}",
    }
    if not results:
        warn(f"no detections on '{dataset_name}': AP is 0")
        summary["metrics"] = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
        return summary
    coco_eval = run_coco_eval(
        ground_truth_coco_dict(dataset_name), results, chosen, max_dets=max_detections
    )
    summary["metrics"] = coco_ap_summary(coco_eval, dataset_class_names(dataset_name))
    return summary


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
    to_dataset_id = dataset_category_ids(MetadataCatalog.get(dataset_name))
    exif_orientation = cfg.DATASETS.get("EXIF_ORIENTATION", "auto")
    results: List[Dict[str, Any]] = []
    for first in range(0, len(dicts), batch_size):
        batch = dicts[first : first + batch_size]
        images = [
            read_image_checked(
                d["file_name"],
                "BGR",
                d.get("image_id"),
                expected_size=(d["height"], d["width"]),
                exif_orientation=exif_orientation,
            )
            for d in batch
        ]
        for record, output in zip(batch, predictor(images)):
            instances = top_detections(output["instances"].to("cpu"), max_detections)
            results += coco_results_for_image(instances, record["image_id"], to_dataset_id)
    scored = score_coco_results(dataset_name, results, max_detections, backend)
    return {"num_images": len(dicts), **scored}
