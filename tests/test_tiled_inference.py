"""Sliced inference (``tools/predict.py --tile SIZE --tile-overlap FRACTION``) and its evaluation
mode (``--evaluate``).

The large-image case is constructed so that it is honest and deterministic without training a model:
a 2048 px image with 160 objects of 12-20 px and 6 of 60-100 px, and a stand-in detector that, like
a real one, finds objects of at least ``MIN_SIDE`` px at its input resolution: it gets each image
(or tile) through the same test-time resize as ``DefaultPredictor``
(``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST)``, 512 here), finds the coloured blobs in
the resized pixels, and reports their boxes in the input's coordinates (blobs cut by the input's
edge are reported cut, as a detector would see them). Whole-image inference at the test size shrinks
the small objects to 3-5 px, so they are missed; in 512 px tiles they keep their size and are found.
The tiling, the mapping back to image coordinates, the merge across tiles and the AP of the
evaluation mode are the plugin's code under test.
"""

import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances

from conftest import REPO_ROOT
from retinanet_plugin.engine.tiled_inference import (
    TiledPredictor,
    cross_tile_nms,
    merge_tile_detections,
    tile_grid,
)
from script_module import load_script  # a helper beside the tests

SYNTHETIC = os.path.join(REPO_ROOT, "configs", "synthetic", "retinanet_R18_synthetic.yaml")
SIZE, TILE, MIN_SIDE = 2048, 512, 8
COLORS = {0: (40, 40, 230), 1: (40, 230, 40)}  # BGR: class 0 red, class 1 green


class BlobDetector:
    """Finds red and green blobs of at least MIN_SIDE px at the predictor's input resolution."""

    def __init__(self, cfg):
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.calls = 0

    def __call__(self, images):
        self.calls += len(images)
        return [{"instances": self._detect(image)} for image in images]

    def _detect(self, image):
        h, w = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image)
        sy, sx = h / resized.shape[0], w / resized.shape[1]
        boxes, classes, scores = [], [], []
        for k, color in COLORS.items():
            mask = (np.abs(resized.astype(int) - color).sum(axis=2) < 120).astype(np.uint8)
            count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
            for x, y, bw, bh, _ in stats[1:count]:
                if bw >= MIN_SIDE and bh >= MIN_SIDE:
                    boxes.append([x * sx, y * sy, (x + bw) * sx, (y + bh) * sy])
                    classes.append(k)
                    scores.append(0.5 + 0.4 * min(1.0, bw * bh / 400.0))
        instances = Instances((h, w))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.tensor(scores, dtype=torch.float32)
        instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
        return instances


@pytest.fixture(scope="module")
def large_image(tmp_path_factory):
    """The 2048 px image (PNG) and its COCO json; objects on a jittered grid, many across tile
    edges."""
    folder = tmp_path_factory.mktemp("tiled")
    rng = np.random.default_rng(0)
    image = np.full((SIZE, SIZE, 3), 30, dtype=np.uint8)
    annotations = []
    cells = [(cx, cy) for cy in range(13) for cx in range(13)]
    large_cells = {cells[i] for i in rng.choice(166, size=6, replace=False)}
    for cx, cy in cells[:166]:
        side = int(rng.integers(60, 101)) if (cx, cy) in large_cells else int(rng.integers(12, 21))
        x = cx * 157 + int(rng.integers(0, 157 - side))
        y = cy * 157 + int(rng.integers(0, 157 - side))
        k = int(rng.integers(0, 2))
        image[y : y + side, x : x + side] = COLORS[k]
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": 1,
                "category_id": k + 1,
                "bbox": [x, y, side, side],
                "area": side * side,
                "iscrowd": 0,
            }
        )
    cv2.imwrite(str(folder / "large.png"), image)
    coco = {
        "images": [{"id": 1, "file_name": "large.png", "height": SIZE, "width": SIZE}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}],
    }
    (folder / "large.json").write_text(json.dumps(coco))
    yield folder, image, annotations
    name = f"coco:{folder / 'large.json'}"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _load_predict_tool():
    return load_script("tools/predict.py")


def _evaluate(folder, *tile_args):
    predict = _load_predict_tool()
    out = folder / ("tiled" if tile_args else "whole")
    summary = predict.main(
        [
            "--config-file",
            SYNTHETIC,
            "--evaluate",
            f"coco:{folder / 'large.json'}",
            "--output",
            str(out),
            *tile_args,
            "--max-detections",
            "1000",
            "INPUT.MIN_SIZE_TEST",
            str(TILE),
            "INPUT.MAX_SIZE_TEST",
            str(TILE),
            "MODEL.RETINANET.NUM_CLASSES",
            "2",
            "DATASETS.TRAIN",
            "()",
            "DATASETS.TEST",
            "()",
        ],
        make_predictor=BlobDetector,
    )
    assert json.loads((out / "metrics.json").read_text())["metrics"] == summary["metrics"]
    return summary


def test_tiling_finds_the_small_objects_that_whole_image_inference_misses(large_image):
    folder, _, annotations = large_image
    whole = _evaluate(folder)
    tiled = _evaluate(folder, "--tile", str(TILE), "--tile-overlap", "0.25")
    assert whole["num_detections"] == 6  # only the large objects survive the resize to 512 px
    assert whole["metrics"]["AP"] < 5 and whole["metrics"]["APs"] < 1
    assert (
        tiled["metrics"]["AP50"] > 99
        and tiled["metrics"]["AP"] > 90
        and tiled["metrics"]["APs"] > 90
    )
    assert tiled["metrics"]["AP-red"] > 90 and tiled["metrics"]["AP-green"] > 90
    # no duplicates from the overlaps, no cut pieces left
    assert tiled["num_detections"] == len(annotations)


def test_without_the_merge_the_overlaps_give_duplicates_and_pieces(large_image):
    """Control for the merge: the same tiles with no cut-box removal and no NMS give more boxes than
    objects."""
    folder, image, annotations = large_image
    cfg = _load_predict_tool().setup_cfg(
        type(
            "Args",
            (),
            {
                "config_file": SYNTHETIC,
                "opts": ["INPUT.MIN_SIZE_TEST", str(TILE), "INPUT.MAX_SIZE_TEST", str(TILE)],
            },
        )()
    )
    unmerged = TiledPredictor(
        BlobDetector(cfg), TILE, 0.25, nms_thresh=1.0, cut_cover=2.0, max_detections=10_000
    )
    merged = TiledPredictor(BlobDetector(cfg), TILE, 0.25, nms_thresh=0.5, max_detections=10_000)
    assert len(unmerged([image])[0]["instances"]) > len(annotations) + 20
    result = merged([image])[0]["instances"]
    assert len(result) == len(annotations) and merged.predictor.calls == 25  # 5 x 5 tiles
    boxes = sorted(tuple(round(v) for v in b) for b in result.pred_boxes.tensor.tolist())
    expected = sorted(
        (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])
        for a in annotations
    )
    assert boxes == expected  # mapped back to image coordinates exactly


def test_tile_grid_covers_the_image_with_the_overlap():
    tiles = tile_grid(1000, 1300, 512, 0.25)
    xs = sorted({t[0] for t in tiles})
    assert xs == [0, 384, 768, 788] and sorted({t[1] for t in tiles}) == [0, 384, 488]
    assert all(x1 - x0 == 512 and y1 - y0 == 512 for x0, y0, x1, y1 in tiles)
    covered = np.zeros((1000, 1300), dtype=bool)
    for x0, y0, x1, y1 in tiles:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert tile_grid(300, 200, 512, 0.5) == [
        (0, 0, 200, 300)
    ]  # smaller than a tile: one tile, the image
    with pytest.raises(ValueError, match=r"--tile-overlap must be in \[0, 1\)"):
        tile_grid(100, 100, 50, 1.0)


def _instances(size, boxes, classes, scores):
    inst = Instances(size)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.pred_classes = torch.tensor(classes)
    inst.scores = torch.tensor(scores)
    return inst


def test_merge_is_class_aware_and_drops_cut_pieces_covered_by_another_tile():
    left, right = (0, 0, 100, 100), (60, 0, 160, 100)  # overlapping by 40 px; image 100 x 160
    per_tile = [
        # left tile: an object whole in the overlap (70..90), a piece cut by its right edge (80..100
        # of 80..110)
        (
            left,
            _instances(
                (100, 100),
                [[70, 10, 90, 30], [80, 50, 100, 70], [70, 10, 90, 30]],
                [0, 0, 1],
                [0.9, 0.8, 0.7],
            ),
        ),
        # right tile (offset 60): the same whole object, and the cut one whole (80..110 -> 20..50)
        (right, _instances((100, 100), [[10, 10, 30, 30], [20, 50, 50, 70]], [0, 0], [0.85, 0.9])),
    ]
    merged = merge_tile_detections(per_tile, (100, 160), nms_thresh=0.5)
    got = sorted(
        zip(merged.pred_classes.tolist(), [tuple(b) for b in merged.pred_boxes.tensor.tolist()])
    )
    assert got == [(0, (70, 10, 90, 30)), (0, (80, 50, 110, 70)), (1, (70, 10, 90, 30))]


def test_only_boxes_of_another_tile_suppress():
    """Two boxes of one tile overlapping above the threshold both stay (the model's NMS kept them);
    a duplicate from the other tile goes; with every box in a tile of its own the merge is plain
    class-aware NMS."""
    left, right = (0, 0, 100, 100), (60, 0, 160, 100)
    per_tile = [
        # two class-0 boxes overlapping at IoU 0.82, both kept by the model (the box-cut rule
        # leaves them: neither touches the inner edge at x = 100)
        (left, _instances((100, 100), [[60, 10, 80, 30], [62, 10, 82, 30]], [0, 0], [0.9, 0.8])),
        # the first again from the right tile (IoU 1 with it), lower score
        (right, _instances((100, 100), [[0, 10, 20, 30]], [0], [0.7])),
    ]
    merged = merge_tile_detections(per_tile, (100, 160), nms_thresh=0.5)
    assert merged.scores.tolist() == pytest.approx([0.9, 0.8])

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(300, 2, generator=generator) * 200
    boxes = torch.cat([corners, corners + 10 + torch.rand(300, 2, generator=generator) * 40], 1)
    scores = torch.rand(300, generator=generator)
    classes = torch.randint(0, 3, (300,), generator=generator)
    expected = batched_nms(boxes, scores, classes, 0.5)
    actual = cross_tile_nms(boxes, scores, classes, torch.arange(300), 0.5, max_pairs=64 * 110)
    assert 0 < len(actual) < 300 and torch.equal(actual, expected)


def test_one_tile_as_large_as_the_image_gives_the_models_own_detections():
    from retinanet_plugin import model_zoo
    from retinanet_plugin.engine import BatchPredictor
    from retinanet_plugin.data.synthetic_shapes import SyntheticShapesParams, render_synthetic_image

    cfg = model_zoo.get_config("synthetic/retinanet_R18_synthetic.yaml")
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = (
        0.0  # random weights: keep the candidates, 100 after NMS
    )
    torch.manual_seed(0)
    predictor = BatchPredictor(cfg)
    image = render_synthetic_image(SyntheticShapesParams(), "val", 0)[0]
    alone = predictor([image])[0]["instances"]
    tiled = TiledPredictor(predictor, max(image.shape[:2]), 0.25, nms_thresh=0.5)([image])[0][
        "instances"
    ]
    assert len(alone) >= 10
    order = alone.scores.argsort(descending=True)
    assert torch.equal(tiled.pred_classes, alone.pred_classes[order])
    assert torch.allclose(tiled.pred_boxes.tensor, alone.pred_boxes.tensor[order])
    assert torch.allclose(tiled.scores, alone.scores[order])
    # four tiles: every box in image coordinates, some from the right and bottom tiles
    h, w = image.shape[:2]
    quarters = TiledPredictor(predictor, max(h, w) // 2 + 16, 0.1)([image])[0]["instances"]
    boxes = quarters.pred_boxes.tensor
    assert len(quarters) > 0 and (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all()
    assert (boxes[:, 0] > w / 2).any() and (boxes[:, 1] > h / 2).any()
