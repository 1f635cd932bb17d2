"""Training on random crops of a set size of large images (Detectron2's ``INPUT.CROP``, type
"absolute"): the crop keeps the boxes inside it (clipped to it), ignores boxes of which less than
``CROP_MIN_VISIBLE_FRACTION`` is left, and drops boxes outside it; through the trainer's data
loader.

The test image encodes each pixel's own coordinates in its colour, so the crop's position is read
back from the output pixels, and the expected boxes are computed from it independently of the
mapper.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from conftest import make_small_cfg
from retinanet_plugin.data.checked_mapper import CheckedDatasetMapper
from retinanet_plugin.engine import RetinaNetPluginTrainer
from retinanet_plugin.layers import focal_loss_op_available

H, W, CROP = 1500, 2000, 256


def _coordinate_image():
    ys, xs = np.mgrid[0:H, 0:W]
    # RGB
    return np.stack([xs % 256, ys % 256, (xs // 256) * 16 + ys // 256], axis=-1).astype(np.uint8)


def _offset(bgr_chw):
    r, g, b = int(bgr_chw[2, 0, 0]), int(bgr_chw[1, 0, 0]), int(bgr_chw[0, 0, 0])
    return (b // 16) * 256 + r, (b % 16) * 256 + g


@pytest.fixture(scope="module")
def large_image(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    Image.fromarray(_coordinate_image()).save(folder / "large.png", compress_level=1)
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(400):  # small objects all over the image
        w, h = rng.integers(20, 60, size=2)
        x, y = rng.integers(0, W - w), rng.integers(0, H - h)
        boxes.append([float(x), float(y), float(w), float(h)])
    coco = {
        "images": [{"id": 1, "file_name": "large.png", "height": H, "width": W}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 1 + i % 2,
                "bbox": b,
                "area": b[2] * b[3],
                "iscrowd": 0,
            }
            for i, b in enumerate(boxes)
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    (folder / "large.json").write_text(json.dumps(coco))
    yield folder, boxes
    name = f"coco:{folder / 'large.json'}"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _cfg(folder, **extra):
    overrides = {
        "MODEL.RETINANET.NUM_CLASSES": 2,
        "INPUT.CROP.ENABLED": True,
        "INPUT.CROP.TYPE": "absolute",
        "INPUT.CROP.SIZE": [CROP, CROP],
        "INPUT.MIN_SIZE_TRAIN": (CROP,),
        "INPUT.MAX_SIZE_TRAIN": CROP,
        "INPUT.RANDOM_FLIP": "none",
        "DATASETS.TRAIN": (f"coco:{folder / 'large.json'}",),
        "DATASETS.TEST": (),
        "DATALOADER.NUM_WORKERS": 0,
        "SOLVER.IMS_PER_BATCH": 2,
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS": False,
    }
    overrides.update(extra)
    cfg = make_small_cfg(**overrides)
    if not focal_loss_op_available():
        cfg.MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL = "reference"
    return cfg


def _expected(boxes, x0, y0, min_visible):
    objects, ignored = [], []
    for x, y, w, h in boxes:
        cx0, cy0 = max(x - x0, 0), max(y - y0, 0)
        cx1, cy1 = min(x + w - x0, CROP), min(y + h - y0, CROP)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        box = [cx0, cy0, cx1, cy1]
        (ignored if (cx1 - cx0) * (cy1 - cy0) < min_visible * w * h else objects).append(box)
    return sorted(objects), sorted(ignored)


def test_random_crops_keep_the_boxes_inside_and_ignore_slivers(large_image):
    folder, boxes = large_image
    cfg = _cfg(folder)
    from retinanet_plugin.engine.trainer import prepare_config

    cfg = prepare_config(cfg)
    mapper = CheckedDatasetMapper(cfg, is_train=True)
    record = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[0]
    np.random.seed(0)
    offsets, ignored_seen = set(), 0
    for _ in range(6):
        out = mapper(record)
        image, instances = out["image"], out["instances"]
        assert tuple(image.shape) == (3, CROP, CROP)
        x0, y0 = _offset(image)
        assert torch.equal(
            image.flip(0).permute(1, 2, 0),
            torch.from_numpy(_coordinate_image()[y0 : y0 + CROP, x0 : x0 + CROP]),
        )
        offsets.add((x0, y0))
        gt = instances.gt_boxes.tensor
        assert (gt >= 0).all() and (gt <= CROP).all()
        ignore = (
            instances.gt_ignore
            if instances.has("gt_ignore")
            else torch.zeros(len(instances), dtype=torch.bool)
        )
        objects, ignored = _expected(
            boxes, x0, y0, cfg.MODEL.RETINANET_PLUGIN.CROP_MIN_VISIBLE_FRACTION
        )
        assert sorted(gt[~ignore].tolist()) == objects and len(objects) > 0
        assert sorted(gt[ignore].tolist()) == ignored
        ignored_seen += len(ignored)
    # random positions; some objects were cut to slivers
    assert len(offsets) == 6 and ignored_seen > 0


def test_the_trainer_loader_trains_on_crops(large_image):
    folder, _ = large_image
    cfg = _cfg(folder, **{"MODEL.RETINANET_PLUGIN.CROP_MIN_VISIBLE_FRACTION": 0.0})
    batch = next(iter(RetinaNetPluginTrainer.build_train_loader(cfg)))
    assert len(batch) == 2
    for sample in batch:
        assert tuple(sample["image"].shape) == (3, CROP, CROP)
        assert len(sample["instances"]) > 0 and not sample["instances"].has("gt_ignore")
