"""BatchPredictor (and tools/predict.py --batch-size): DefaultPredictor's preprocessing and
detections, for a list of images run through the model in one forward.

What is true, and tested: one image alone gets exactly DefaultPredictor's detections; images of one
size in a batch get them up to float rounding; in a batch of different sizes, the images whose
padded size is the batch's get them too, while the smaller ones are padded further out, which
changes the features near their bottom and right borders, so their detections can differ (measured
and printed, not asserted equal). Results never depend on an image's position in the batch.
"""

import importlib.util
import json
import os

import cv2
import pytest
import torch
from detectron2.engine import DefaultPredictor

from retinanet_plugin import model_zoo
from retinanet_plugin.engine import BatchPredictor

# helpers beside the tests
from test_export import (
    CONFIG,
    detection_differences,
    synthetic_predictor,
    val_images,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# float32 rounding: a batch pads images to one size and its convolutions sum in another order;
# 2.5e-4 px is 1e-6 of the 256 px the boxes reach
TOLERANCE = {"boxes": 2.5e-4, "scores": 1e-6}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Random weights that give tens of detections per synthetic image (see
    tests/test_export.py)."""
    path = tmp_path_factory.mktemp("batch_predictor") / "model.pth"
    torch.save({"model": synthetic_predictor().model.state_dict()}, str(path))
    return str(path)


def make_cfg(checkpoint, **changes):
    cfg = model_zoo.get_config(CONFIG)
    cfg.MODEL.WEIGHTS = checkpoint
    for key, value in changes.items():
        cfg.merge_from_list([key, value])
    return cfg


@pytest.fixture(scope="module")
def predictors(checkpoint):
    cfg = make_cfg(checkpoint)
    return DefaultPredictor(cfg), BatchPredictor(cfg)


@pytest.fixture(scope="module")
def images():
    """Val images 0, 2 and 3 (resized and padded alone: 192 x 192, 192 x 256, 192 x 192), and three
    crops of one size (every val image is at least 256 x 256)."""
    val = val_images(4)
    return {"sizes": [val[0], val[2], val[3]], "crops": [image[:256, :320] for image in val[:3]]}


@pytest.fixture(scope="module")
def expected(predictors, images):
    """DefaultPredictor's detections of each image, alone."""
    default, _ = predictors
    return {key: [default(image)["instances"] for image in group] for key, group in images.items()}


def instances(outputs):
    return [o["instances"] for o in outputs]


def within_tolerance(diff):
    return diff["boxes"] <= TOLERANCE["boxes"] and diff["scores"] <= TOLERANCE["scores"]


def test_one_image_gets_exactly_the_default_predictor_detections(predictors, images, expected):
    _, batched = predictors
    for image, alone in zip(images["sizes"][:2], expected["sizes"]):
        assert len(alone) >= 20
        diff = detection_differences([alone], instances(batched([image])))
        assert diff == {"boxes": 0.0, "scores": 0.0, "count": len(alone)}


def test_images_of_one_size_in_a_batch_get_the_default_predictor_detections(
    predictors, images, expected
):
    _, batched = predictors
    diff = detection_differences(expected["crops"], instances(batched(images["crops"])))
    print(
        f"\nsame size, batch of 3: max |box diff| {diff['boxes']:.3g} px, max |score diff| "
        f"{diff['scores']:.3g}"
    )
    assert within_tolerance(diff), diff


def test_images_of_different_sizes(predictors, images, expected):
    _, batched = predictors
    images, expected = images["sizes"], expected["sizes"]
    prepared = [batched.prepare(image)["image"] for image in images]
    divisibility = batched.model.backbone.size_divisibility
    padded = [tuple(-(-s // divisibility) * divisibility for s in p.shape[-2:]) for p in prepared]
    batch_size = tuple(max(p[i] for p in padded) for i in range(2))
    # both kinds of image are in the batch
    assert 0 < sum(p == batch_size for p in padded) < len(images)
    outputs = instances(batched(images))
    for image, pad, alone, output in zip(images, padded, expected, outputs):
        assert output.image_size == image.shape[:2]
        if pad == batch_size:  # padded as alone: the same detections
            assert within_tolerance(detection_differences([alone], [output]))
        # padded further than alone: report how much changed (a random-weight model reacts strongly)
        else:
            print(
                f"\nimage padded to {pad} alone, {batch_size} in the batch: {len(alone)} -> "
                f"{len(output)} "
                "detections"
            )
    order = [2, 0, 1]  # The position in the batch does not matter.
    reordered = instances(batched([images[i] for i in order]))
    assert within_tolerance(detection_differences([outputs[i] for i in order], reordered))


def test_rgb_models_get_the_default_predictor_detections(checkpoint):
    cfg = make_cfg(checkpoint, **{"INPUT.FORMAT": "RGB"})
    image = val_images(1)[0]
    expected, actual = (
        DefaultPredictor(cfg)(image)["instances"],
        BatchPredictor(cfg)([image])[0]["instances"],
    )
    diff = detection_differences([expected], [actual])
    assert diff == {"boxes": 0.0, "scores": 0.0, "count": len(expected)} and len(expected), diff


def test_bad_input_is_named(predictors, tmp_path):
    _, batched = predictors
    image = val_images(1)[0]
    with pytest.raises(TypeError, match="takes a list of images"):
        batched(image)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) numpy array"):
        batched([image[:, :, 0]])
    assert batched([]) == []
    missing = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        BatchPredictor(make_cfg(missing))


def test_predict_tool_gives_the_same_detections_for_any_batch_size(checkpoint, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "predict", os.path.join(REPO_ROOT, "tools", "predict.py")
    )
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(val_images(3)):
        # one size: batching changes nothing
        cv2.imwrite(str(folder / f"{i}.png"), image[:256, :320])
    records = {}
    for batch_size in (1, 2):
        out = tmp_path / f"out{batch_size}"
        predict.main(
            [
                "--config-file",
                model_zoo.get_config_file(CONFIG),
                "--input",
                str(folder),
                "--output",
                str(out),
                "--batch-size",
                str(batch_size),
                "--confidence-threshold",
                "0.05",
                "MODEL.WEIGHTS",
                checkpoint,
            ]
        )
        records[batch_size] = json.loads((out / "detections.json").read_text())
        assert len(list(out.glob("*_pred.png"))) == 3
    assert [r["file"] for r in records[1]] == [r["file"] for r in records[2]]
    for a, b in zip(records[1], records[2]):
        assert a["classes"] == b["classes"] and len(a["classes"]) >= 20
        assert (
            max(abs(x - y) for p, q in zip(a["boxes_xyxy"], b["boxes_xyxy"]) for x, y in zip(p, q))
            <= TOLERANCE["boxes"]
        )
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        predict.main(
            [
                "--config-file",
                model_zoo.get_config_file(CONFIG),
                "--input",
                str(folder),
                "--output",
                str(tmp_path / "bad"),
                "--batch-size",
                "0",
                "MODEL.WEIGHTS",
                checkpoint,
            ]
        )
