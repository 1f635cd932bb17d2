"""Test-time augmentation (``TEST.AUG``: ``RetinaNetPluginWithTTA``,
``RetinaNetPluginTrainer.test_with_TTA``): detections from every scale and mirror image mapped back
to the image's pixels and merged; with one scale and no flip, the model's own detections."""

import json

import pytest
import torch
from conftest import make_small_cfg
from detectron2.data import transforms as T
from detectron2.layers import batched_nms
from detectron2.modeling import DatasetMapperTTA, build_model
from inference_checks import assert_same_detections, eval_detections, sample_images
from PIL import Image
from sane_random_weights import make_weights_sane  # a helper beside the tests
from tta_helpers import SQUARE, BrightBoxDetector, square_image

from retinanet_plugin.evaluation import evaluation_folder_name
from retinanet_plugin.modeling import RetinaNetPluginWithTTA


def _tta_cfg(min_sizes, flip, max_size=1000):
    cfg = make_small_cfg()
    cfg.TEST.AUG.MIN_SIZES = min_sizes
    cfg.TEST.AUG.MAX_SIZE = max_size
    cfg.TEST.AUG.FLIP = flip
    return cfg


def test_every_scale_and_mirror_image_maps_back_to_the_image():
    """The input image is half the original's size: its detections at each scale, mirrored or
    not, land on the original's box, and NMS merges them into one (the best-scored)."""
    detector = BrightBoxDetector()
    tta = RetinaNetPluginWithTTA(_tta_cfg((60, 120), flip=True), detector)
    image = torch.from_numpy(square_image()).permute(2, 0, 1)
    (output,) = tta([{"image": image, "height": 120, "width": 180}])
    assert sorted(detector.seen) == [(60, 90), (60, 90), (120, 180), (120, 180)]
    instances = output["instances"]
    assert instances.image_size == (120, 180)
    assert len(instances) == 1, instances.pred_boxes
    expected = torch.tensor([[2.0 * c for c in SQUARE]])
    torch.testing.assert_close(instances.pred_boxes.tensor, expected, atol=2.0, rtol=0)
    assert instances.scores.item() == pytest.approx(0.12)


def test_one_scale_without_flip_gives_the_model_own_detections():
    """The scale is the same along both sides (96 -> 144, 128 -> 192), so mapping back keeps the
    overlaps between the model's detections."""
    cfg = _tta_cfg((144,), flip=False, max_size=400)
    model = build_model(cfg)
    torch.manual_seed(0)
    images = sample_images(3, sizes=((96, 128), (128, 96)))
    make_weights_sane(model, [{"image": i} for i in images], torch.Generator().manual_seed(2))
    resize = T.ResizeShortestEdge(144, 400)
    plain_inputs, tta_inputs = [], []
    for image in images:
        h, w = image.shape[-2:]
        array = image.permute(1, 2, 0).to(torch.uint8).numpy()
        resized = T.apply_augmentations([resize], array)[0]
        plain_inputs.append(
            {"image": torch.from_numpy(resized.transpose(2, 0, 1).copy()), "height": h, "width": w}
        )
        tta_inputs.append({"image": torch.from_numpy(array.transpose(2, 0, 1).copy())})
    # one image per call, as the augmentation runs them (a padded batch moves the detections
    # near the padding)
    expected = [eval_detections(model, [inputs])[0] for inputs in plain_inputs]
    actual = eval_detections(RetinaNetPluginWithTTA(cfg, model), tta_inputs)
    # the model's NMS saw its boxes before they were clipped to the image, the merge sees them
    # clipped: it can drop a few more overlapping ones at the border
    kept = [batched_nms(d.pred_boxes.tensor, d.scores, d.pred_classes, 0.5) for d in expected]
    assert_same_detections([d[k] for d, k in zip(expected, kept)], actual, 1e-3, 0.0)


def test_the_trainer_evaluates_with_tta_on_images_read_at_their_own_size(tmp_path, monkeypatch):
    from retinanet_plugin.engine import RetinaNetPluginTrainer

    given = []  # the image sizes the augmentation starts from
    augment = DatasetMapperTTA.__call__
    monkeypatch.setattr(
        DatasetMapperTTA,
        "__call__",
        lambda self, d: given.append(tuple(d["image"].shape[-2:])) or augment(self, d),
    )

    images, annotations = [], []
    for i, (height, width) in enumerate(((60, 90), (120, 180))):
        Image.fromarray(square_image(60, 90)).resize((width, height), Image.NEAREST).save(
            tmp_path / f"{i}.png"
        )
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": height, "width": width})
        scale = height / 60
        x0, y0, x1, y1 = (c * scale for c in SQUARE)
        annotations.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
            }
        )
    categories = [{"id": 1, "name": "box"}]
    (tmp_path / "val.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    cfg = _tta_cfg((48, 96), flip=True)
    cfg.DATASETS.TEST = (f"coco:{tmp_path / 'val.json'}",)
    cfg.MODEL.RETINANET.NUM_CLASSES = 1
    cfg.INPUT.MIN_SIZE_TEST = 30  # test_with_TTA sets it aside: the loader must not resize
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    detector = BrightBoxDetector()
    results = RetinaNetPluginTrainer.test_with_TTA(cfg, detector)
    assert list(results) == ["bbox_TTA"]
    assert results["bbox_TTA"]["AP"] > 99
    assert sorted(given) == [(60, 90), (120, 180)]
    assert sorted(set(detector.seen)) == [(48, 72), (96, 144)]
    folder = tmp_path / "out" / "inference_TTA" / evaluation_folder_name(cfg.DATASETS.TEST[0])
    assert (folder / "coco_instances_results.json").is_file()


def test_batch_predictor_predicts_with_tta_and_keeps_prepare_for_export(tmp_path):
    """With TEST.AUG.ENABLED, BatchPredictor's calls are RetinaNetPluginWithTTA on the image at its
    own size (as uint8, the way the test loader gives it), while prepare() still resizes to
    INPUT.MIN_SIZE_TEST for the plain model (what export and ONNX Runtime use)."""
    from retinanet_plugin.engine import BatchPredictor

    cfg = _tta_cfg((96, 144), flip=True, max_size=400)
    cfg.TEST.AUG.ENABLED = True
    cfg.INPUT.MIN_SIZE_TEST = 112
    model = build_model(cfg)
    torch.manual_seed(0)
    (image,) = sample_images(4, sizes=((120, 160),))
    make_weights_sane(model, [{"image": image}], torch.Generator().manual_seed(2))
    cfg.MODEL.WEIGHTS = str(tmp_path / "weights.pth")
    torch.save({"model": model.state_dict()}, cfg.MODEL.WEIGHTS)
    predictor = BatchPredictor(cfg)
    bgr = image.permute(1, 2, 0).to(torch.uint8).numpy()
    (output,) = predictor([bgr])
    chw = torch.from_numpy(bgr.transpose(2, 0, 1).copy())
    expected = eval_detections(
        RetinaNetPluginWithTTA(cfg, predictor.model), [{"image": chw, "height": 120, "width": 160}]
    )
    assert_same_detections(expected, [output["instances"]], 0.0, 0.0)
    assert predictor.prepare(bgr)["image"].shape[-2:] == (112, 149)
