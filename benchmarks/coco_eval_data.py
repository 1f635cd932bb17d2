"""A generated COCO detection problem for comparing COCO APIs: ground truth and detections,
deterministic per seed.

Ground truth: images of 320-1024 px, 0-20 objects each (5% of images empty), box scales log-uniform
from 6 px to most of the image (COCO's small, medium and large areas all occur), aspect ratios
1:3-3:1, ``area`` below the box area as for COCO's segment areas (so the box area and the area range
can disagree), 3% crowd regions (iscrowd 1), categories with non-contiguous ids.

Detections (``detections_per_image`` per image): jittered copies of most objects (0-3 each, IoUs
from ~0.2 to ~1, 10% with a wrong category), near-misses and random boxes for the rest; float32
scores that rise with the overlap, so AP is neither 0 nor 1; a tenth of the scores rounded to 2
decimals, so that exact ties occur within and across images (both APIs must order tied scores
alike).
"""

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

CATEGORY_IDS = (1, 2, 3, 5, 8, 13, 21, 34)  # not contiguous, as in COCO


def _random_boxes(rng: np.random.Generator, count: int, width: int, height: int) -> np.ndarray:
    """[count, 4] XYWH boxes inside a width x height image, log-uniform scale 6 px .. 0.8 x the
    short side."""
    scale = np.exp(rng.uniform(np.log(6.0), np.log(0.8 * min(width, height)), size=count))
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), size=count))
    w = np.minimum(scale * np.sqrt(aspect), width - 1.0)
    h = np.minimum(scale / np.sqrt(aspect), height - 1.0)
    x = rng.uniform(0, 1, size=count) * (width - w)
    y = rng.uniform(0, 1, size=count) * (height - h)
    return np.stack([x, y, w, h], axis=1)


def _jittered(
    rng: np.random.Generator, boxes: np.ndarray, amount: np.ndarray, width: int, height: int
) -> np.ndarray:
    x, y, w, h = boxes.T
    nx = np.clip(x + rng.normal(0, 1, len(boxes)) * amount * w, 0, width - 1)
    ny = np.clip(y + rng.normal(0, 1, len(boxes)) * amount * h, 0, height - 1)
    nw = np.maximum(1.0, w * np.exp(rng.normal(0, 1, len(boxes)) * amount))
    nh = np.maximum(1.0, h * np.exp(rng.normal(0, 1, len(boxes)) * amount))
    return np.stack([nx, ny, np.minimum(nw, width - nx), np.minimum(nh, height - ny)], axis=1)


def _image_detections(
    rng: np.random.Generator,
    boxes: np.ndarray,
    categories: np.ndarray,
    width: int,
    height: int,
    count: int,
    category_ids: Sequence[int],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` detections for one image's objects: (boxes [count, 4], categories, float32
    scores)."""
    copies = (
        rng.choice([0, 1, 1, 1, 2, 3], size=len(boxes)) if len(boxes) else np.zeros(0, dtype=int)
    )
    source = np.repeat(np.arange(len(boxes)), copies)
    amount = rng.choice([0.02, 0.05, 0.1, 0.2, 0.4], size=len(source))
    true_boxes = _jittered(rng, boxes[source], amount, width, height)
    true_categories = np.where(
        rng.random(len(source)) < 0.1,
        rng.choice(category_ids, size=len(source)),
        categories[source],
    )
    true_scores = np.clip(1.0 - 2.0 * amount + rng.normal(0, 0.15, len(source)), 0.01, 1.0)
    rest = max(0, count - len(source))
    near = (rng.random(rest) < 0.3) & (len(boxes) > 0)
    near_source = rng.integers(0, max(1, len(boxes)), size=rest)
    if len(boxes):
        near_boxes = _jittered(rng, boxes[near_source], np.full(rest, 0.6), width, height)
        near_categories = categories[near_source]
    else:
        near_boxes, near_categories = np.zeros((rest, 4)), np.zeros(rest, dtype=int)
    random_boxes = _random_boxes(rng, rest, width, height)
    rest_boxes = np.where(near[:, None], near_boxes, random_boxes)
    rest_categories = np.where(near, near_categories, rng.choice(category_ids, size=rest))
    rest_scores = rng.uniform(0.01, 0.5, size=rest)
    out_boxes = np.concatenate([true_boxes, rest_boxes])[:count]
    out_categories = np.concatenate([true_categories, rest_categories])[:count]
    scores = np.concatenate([true_scores, rest_scores])[:count].astype(np.float32)
    tied = rng.random(len(scores)) < 0.1
    scores[tied] = np.round(scores[tied], 2)
    return np.round(out_boxes, 2), out_categories, scores


def _results(
    image_id: int, boxes: np.ndarray, categories: np.ndarray, scores: np.ndarray
) -> List[Dict[str, Any]]:
    return [
        {"image_id": image_id, "category_id": int(c), "bbox": b, "score": float(s)}
        for b, c, s in zip(boxes.tolist(), categories.tolist(), scores.tolist())
    ]


def generated_detection_problem(
    num_images: int = 2000, detections_per_image: int = 100, seed: int = 0
) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """``(gt, results)``: a COCO instances dict and a list of COCO result dicts (``image_id``,
    ``category_id``, ``bbox``, ``score``), ``detections_per_image`` for every image."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    category_ids = np.asarray(CATEGORY_IDS)
    for image_id in range(1, num_images + 1):
        width, height = int(rng.integers(320, 1025)), int(rng.integers(320, 1025))
        images.append(
            {"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": width, "height": height}
        )
        count = 0 if rng.random() < 0.05 else int(rng.integers(1, 21))
        boxes = _random_boxes(rng, count, width, height)
        categories = rng.choice(category_ids, size=count)
        crowd = rng.random(count) < 0.03
        areas = boxes[:, 2] * boxes[:, 3] * rng.uniform(0.5, 1.0, size=count)
        for box, category, is_crowd, area in zip(
            boxes.tolist(), categories.tolist(), crowd.tolist(), areas.tolist()
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category),
                    "bbox": box,
                    "area": area,
                    "iscrowd": int(is_crowd),
                }
            )
        results += _results(
            image_id,
            *_image_detections(
                rng, boxes, categories, width, height, detections_per_image, category_ids
            ),
        )
    gt = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": int(c), "name": f"class_{c}"} for c in CATEGORY_IDS],
    }
    return gt, results


def detections_from_ground_truth(
    gt: Dict[str, Any], detections_per_image: int = 100, seed: int = 0
) -> List[Dict[str, Any]]:
    """Detections for an existing COCO dict (e.g. the synthetic val set), ``detections_per_image``
    per image, generated from its boxes as in :func:`generated_detection_problem`."""
    rng = np.random.default_rng(seed)
    category_ids = np.asarray([c["id"] for c in gt["categories"]])
    by_image: Dict[int, List[Dict[str, Any]]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    results = []
    for image in gt["images"]:
        objects = by_image.get(image["id"], [])
        boxes = np.asarray([a["bbox"] for a in objects], dtype=np.float64).reshape(-1, 4)
        categories = np.asarray([a["category_id"] for a in objects], dtype=np.int64)
        results += _results(
            image["id"],
            *_image_detections(
                rng,
                boxes,
                categories,
                image["width"],
                image["height"],
                detections_per_image,
                category_ids,
            ),
        )
    return results
