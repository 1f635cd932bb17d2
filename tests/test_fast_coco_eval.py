"""faster-coco-eval gives pycocotools' AP, and the trainer's evaluator uses it (falling back to
pycocotools).

Equality is checked on every COCO metric (the 12 ``stats``: AP at IoU .5:.95/.5/.75, by area, AR at
1/10/100) and on every per-category AP, within 1e-4, on two problems: the synthetic val set's ground
truth (100 images, rendered in memory, as ``val.json`` holds them) with generated detections, and a
generated set of 2,000 images with 100 detections each (``benchmarks/coco_eval_data.py``: crowd
regions, non-contiguous category ids, all area ranges, tied scores).
``benchmarks/bench_coco_eval.py`` measures the time.
"""

import logging

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from retinanet_plugin.data.synthetic_shapes import (
    SYNTHETIC_SHAPES_CLASSES,
    SyntheticShapesParams,
    render_synthetic_image,
)
from retinanet_plugin.evaluation import (
    PluginCOCOEvaluator,
    coco_ap_summary,
    coco_backend,
    run_coco_eval,
)
from retinanet_plugin.evaluation.coco_backend import resolve_coco_backend

import sane_random_weights  # noqa: F401  (makes the benchmarks package importable)
from benchmarks.coco_eval_data import detections_from_ground_truth, generated_detection_problem

pytestmark = pytest.mark.skipif(
    not coco_backend.fast_coco_eval_available(), reason="faster-coco-eval not installed"
)
TOLERANCE = 1e-4


def synthetic_val_coco():
    """The synthetic val split's COCO dict (images, annotations, categories as ``val.json`` has
    them)."""
    params = SyntheticShapesParams()
    images, annotations = [], []
    for index in range(params.num_images("val")):
        image, objects = render_synthetic_image(params, "val", index)
        images.append(
            {
                "id": index + 1,
                "file_name": f"{index:06d}.jpg",
                "height": image.shape[0],
                "width": image.shape[1],
            }
        )
        for obj in objects:
            annotations.append(dict(obj, id=len(annotations) + 1, image_id=index + 1, iscrowd=0))
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(SYNTHETIC_SHAPES_CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def assert_same_ap(gt, results):
    fast = run_coco_eval(gt, results, resolve_coco_backend("faster_coco_eval"))
    slow = run_coco_eval(gt, results, resolve_coco_backend("pycocotools"))
    fast_stats, slow_stats = np.asarray(fast.stats), np.asarray(slow.stats)
    assert fast_stats.shape == slow_stats.shape == (12,)
    assert np.max(np.abs(fast_stats - slow_stats)) <= TOLERANCE, (fast_stats, slow_stats)
    names = [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    fast_summary, slow_summary = coco_ap_summary(fast, names), coco_ap_summary(slow, names)
    assert fast_summary.keys() == slow_summary.keys() and len(fast_summary) == 6 + len(names)
    for key in fast_summary:
        assert abs(fast_summary[key] - slow_summary[key]) <= 100 * TOLERANCE, key
    # the summary read from the precision array is what summarize() reports
    assert (
        abs(slow_summary["AP"] - 100 * slow_stats[0]) <= 1e-9
        and abs(slow_summary["APl"] - 100 * slow_stats[5]) <= 1e-9
    )
    return slow_stats


def test_same_ap_on_the_synthetic_val_set():
    gt = synthetic_val_coco()
    results = detections_from_ground_truth(gt, detections_per_image=100, seed=1)
    assert len(results) == 100 * len(gt["images"])
    stats = assert_same_ap(gt, results)
    assert 0.1 < stats[0] < 0.9 and 0.1 < stats[1] < 0.95  # neither trivial nor perfect


def test_same_ap_on_2000_generated_images_with_100_detections_each():
    gt, results = generated_detection_problem(num_images=2000, detections_per_image=100, seed=0)
    assert len(gt["images"]) == 2000 and len(results) == 200_000
    scores = np.asarray([r["score"] for r in results])
    assert len(np.unique(scores)) < 0.95 * len(scores)  # tied scores are part of the problem
    assert any(a["iscrowd"] for a in gt["annotations"])
    stats = assert_same_ap(gt, results)
    assert 0.1 < stats[0] < 0.9
    assert all(0 < s < 1 for s in stats[3:6])  # small, medium and large objects all present


@pytest.fixture
def val_dataset():
    """The synthetic val ground truth registered as an in-memory dataset (no image files needed)."""
    gt = synthetic_val_coco()
    name = "fast_coco_eval_synthetic_val"
    by_image = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    from detectron2.structures import BoxMode

    dicts = [
        {
            "file_name": im["file_name"],
            "image_id": im["id"],
            "height": im["height"],
            "width": im["width"],
            "annotations": [
                {
                    "bbox": a["bbox"],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": a["category_id"] - 1,
                    "iscrowd": 0,
                }
                for a in by_image.get(im["id"], [])
            ],
        }
        for im in gt["images"]
    ]
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=list(SYNTHETIC_SHAPES_CLASSES))
    yield name, gt
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _evaluate(evaluator, gt, results):
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    evaluator.reset()
    for image in gt["images"]:
        rs = by_image.get(image["id"], [])
        instances = Instances((image["height"], image["width"]))
        xywh = torch.tensor([r["bbox"] for r in rs], dtype=torch.float32).reshape(-1, 4)
        instances.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
        instances.scores = torch.tensor([r["score"] for r in rs], dtype=torch.float32)
        instances.pred_classes = torch.tensor([r["category_id"] - 1 for r in rs], dtype=torch.int64)
        evaluator.process([{"image_id": image["id"]}], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


def test_the_trainer_evaluates_with_faster_coco_eval_and_class_names(
    val_dataset, tmp_path, small_cfg
):
    from retinanet_plugin.engine import RetinaNetPluginTrainer

    name, gt = val_dataset
    cfg = small_cfg(OUTPUT_DIR=str(tmp_path))
    evaluator = RetinaNetPluginTrainer.build_evaluator(cfg, name)
    assert (
        isinstance(evaluator, PluginCOCOEvaluator)
        and evaluator.coco_backend.name == "faster_coco_eval"
    )
    results = detections_from_ground_truth(gt, detections_per_image=30, seed=2)
    fast = _evaluate(evaluator, gt, results)
    slow = _evaluate(
        PluginCOCOEvaluator(name, output_dir=str(tmp_path / "slow"), backend="pycocotools"),
        gt,
        results,
    )
    # class names reach the AP table
    assert {f"AP-{c}" for c in SYNTHETIC_SHAPES_CLASSES} <= set(fast)
    assert fast.keys() == slow.keys()
    for key in fast:
        assert abs(fast[key] - slow[key]) <= 100 * TOLERANCE, key
    assert 10 < fast["AP"] < 90


def test_without_faster_coco_eval_pycocotools_is_used_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setattr(coco_backend, "_faster_coco_eval", lambda: None)
    monkeypatch.setattr(coco_backend, "_fallback_logged", False)
    with caplog.at_level(logging.INFO, logger="retinanet_plugin"):
        first, second = resolve_coco_backend(), resolve_coco_backend("auto")
    assert first.name == second.name == "pycocotools"
    lines = [
        r.getMessage()
        for r in caplog.records
        if "faster-coco-eval is not installed" in r.getMessage()
    ]
    assert len(lines) == 1 and "pycocotools" in lines[0]
    with pytest.raises(ImportError, match="pip install faster-coco-eval==1.8.0"):
        resolve_coco_backend("faster_coco_eval")
    with pytest.raises(ValueError, match="must be one of"):
        resolve_coco_backend("fast")
