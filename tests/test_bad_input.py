"""Bad input gets a clear error or a documented, logged fix-up: datasets (files, images, boxes,
categories), the class count, checkpoints, and non-finite losses or weights during training.

Covered elsewhere: misspelled plugin keys, anchor size/ratio lengths and IoU threshold order
(tests/test_registration_and_config.py); Detectron2 RetinaNet checkpoints, and a different class
count through the conversion path (tests/test_checkpoint_conversion.py); training steps on images
without objects and on hundreds of objects (tests/test_components.py).
"""

import json
import logging
import math
import os
import uuid
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BoxMode
from detectron2.utils.events import get_event_storage

from retinanet_plugin import model_zoo
from retinanet_plugin.data import image_reading
from retinanet_plugin.data import (
    CheckedDatasetMapper,
    DatasetValidationError,
    UnreadableImageError,
    load_checked_dataset_dicts,
    validate_dataset_dicts,
)
from retinanet_plugin.engine import (
    CheckpointMismatchError,
    CheckpointReadError,
    NonFiniteLossError,
    NonFiniteWeightsError,
    RetinaNetPluginTrainer,
)
from retinanet_plugin.engine.finite_checks import first_non_finite_tensor
from retinanet_plugin.layers import focal_loss_op_available

IMAGE_SIZE = (48, 64)  # height, width of the tiny test images


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine two threads make these tiny steps ~10x
    slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_image(path, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    h, w = IMAGE_SIZE
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    pixels[10:30, 12:40] = (200, 40, 90)
    Image.fromarray(pixels).convert(mode).save(path)


def _write_coco(root, num_images=4, categories=("a", "b"), annotations=None):
    """Tiny COCO dataset in ``root``: ``num_images`` PNGs and one in-image box per image unless
    ``annotations``."""
    os.makedirs(root / "images", exist_ok=True)
    images = []
    for i in range(num_images):
        _write_image(root / "images" / f"{i}.png", seed=i)
        images.append(
            {"id": i + 1, "file_name": f"{i}.png", "height": IMAGE_SIZE[0], "width": IMAGE_SIZE[1]}
        )
    if annotations is None:
        annotations = [
            {
                "id": 100 + i,
                "image_id": i + 1,
                "category_id": 1 + i % len(categories),
                "bbox": [12, 10, 28, 20],
                "area": 560,
                "iscrowd": 0,
            }
            for i in range(num_images)
        ]
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)],
    }
    with open(root / "train.json", "w") as f:
        json.dump(coco, f)
    return root / "train.json", root / "images"


@pytest.fixture
def register():
    """register(json, image_root) -> a fresh dataset name; every name is unregistered after the
    test."""
    names = []

    def _register(json_file, image_root):
        name = f"bad_input_{uuid.uuid4().hex[:8]}"
        register_coco_instances(name, {}, str(json_file), str(image_root))
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _cfg(tmp_path, train, test=None, num_classes=2, **overrides):
    """The synthetic demo config on a tiny registered dataset: a few fast CPU iterations."""
    cfg = model_zoo.get_config("synthetic/retinanet_R18_synthetic.yaml")
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN",
            f'("{train}",)',
            "DATASETS.TEST",
            f'("{test or train}",)',
            "MODEL.RETINANET.NUM_CLASSES",
            str(num_classes),
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.MAX_ITER",
            "8",
            "SOLVER.CHECKPOINT_PERIOD",
            "2",
            "SOLVER.WARMUP_ITERS",
            "2",
            "SOLVER.STEPS",
            "(100,)",
            "INPUT.MIN_SIZE_TRAIN",
            "(64,)",
            "INPUT.MAX_SIZE_TRAIN",
            "96",
            "INPUT.MIN_SIZE_TEST",
            "64",
            "INPUT.MAX_SIZE_TEST",
            "96",
            "DATALOADER.NUM_WORKERS",
            "0",
            "OUTPUT_DIR",
            str(tmp_path / "out"),
        ]
    )
    if not focal_loss_op_available():
        cfg.MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL = "reference"
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def _record(file_name, image_id, annotations, size=IMAGE_SIZE):
    return {
        "file_name": str(file_name),
        "image_id": image_id,
        "height": size[0],
        "width": size[1],
        "annotations": annotations,
    }


def _ann(bbox, category_id=0, mode=BoxMode.XYWH_ABS, **extra):
    return dict(
        {"bbox": bbox, "bbox_mode": mode, "category_id": category_id, "iscrowd": 0}, **extra
    )


# ==================================================================================================
# Datasets
# ==================================================================================================


def test_missing_and_empty_image_files_are_named_when_the_loaders_are_built(tmp_path, register):
    json_file, image_root = _write_coco(tmp_path)
    os.remove(image_root / "2.png")
    (image_root / "3.png").write_bytes(b"")
    name = register(json_file, image_root)
    cfg = _cfg(tmp_path, name)
    for is_train in (True, False):
        with pytest.raises(DatasetValidationError) as error:
            load_checked_dataset_dicts(cfg, name, is_train=is_train)
        message = str(error.value)
        assert f"Dataset '{name}'" in message and "2 image files missing or empty" in message
        assert f"image id 3 ({image_root / '2.png'}): the file does not exist" in message
        assert f"image id 4 ({image_root / '3.png'}): the file is empty (0 bytes)" in message


def test_corrupt_truncated_and_vanished_images_are_named_when_read(tmp_path):
    mapper = CheckedDatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    garbage, truncated, vanished = (
        tmp_path / "garbage.jpg",
        tmp_path / "truncated.jpg",
        tmp_path / "vanished.png",
    )
    garbage.write_bytes(b"this is not an image" * 50)
    _write_image(truncated)  # a PNG named .jpg is fine for PIL; cut it in half
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for path, image_id in ((garbage, 7), (truncated, 8)):
        with pytest.raises(UnreadableImageError) as error:
            mapper(_record(path, image_id, []))
        assert f"image file {path} (image id {image_id}) cannot be decoded" in str(error.value)
    with pytest.raises(
        FileNotFoundError, match=rf"image file {vanished} \(image id 9\) does not exist"
    ):
        mapper(_record(vanished, 9, []))


def test_boxes_outside_the_image_or_degenerate_are_clipped_or_dropped_and_logged(tmp_path, caplog):
    _write_image(tmp_path / "a.png")
    h, w = IMAGE_SIZE
    annotations = [
        _ann([10, 10, 20, 20], id=1),  # fine
        _ann([-6, 30, 20, 30], id=2),  # partly outside (left, bottom): clipped to [0, 30, 14, 18]
        _ann(
            [50, 5, 60, 55], mode=BoxMode.XYXY_ABS, id=3
        ),  # XYXY, partly outside (right): clipped to x1 = 60
        _ann([w + 5, 10, 10, 10], id=4),  # entirely outside: dropped
        _ann([20, 20, 0, 10], id=5),  # zero width: dropped
        _ann([30, 20, -10, 10], id=6),  # negative width: dropped
    ]
    dicts = [
        _record(tmp_path / "a.png", 11, annotations),
        _record(tmp_path / "a.png", 12, [_ann([5, 5, 8, -3])]),
    ]
    original = json.dumps(dicts, default=str)
    with caplog.at_level(logging.INFO, logger="retinanet_plugin"):
        checked, report = validate_dataset_dicts(dicts, "boxes", num_classes=2)
        report.log()
    assert json.dumps(dicts, default=str) == original, "the caller's dicts must not be modified"
    assert [a["bbox"] for a in checked[0]["annotations"]] == [
        [10, 10, 20, 20],
        [0.0, 30.0, 14.0, 18.0],
        [50.0, 5.0, 60.0, 48.0],
    ]
    assert checked[1]["annotations"] == []
    log = caplog.text
    assert (
        "Dataset 'boxes': 2 boxes partly outside their image were clipped to it, in 1 images "
        "(image ids 11)" in log
    )
    assert "1 boxes entirely outside their image were dropped, in 1 images (image ids 11)" in log
    assert "3 boxes with width or height <= 0 were dropped, in 2 images (image ids 11, 12)" in log
    assert "1 of 2 images have no objects (image ids 12)" in log

    # why negative sizes are dropped rather than passed on: Detectron2's transforms (even a resize
    # to the same size, as every training config has) take the min/max of the corners, so width -10
    # silently becomes +10
    plain = DatasetMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge((48,), 200, "choice")],
        image_format="BGR",
    )
    flipped = plain(_record(tmp_path / "a.png", 13, [_ann([30, 20, -10, 10])]))[
        "instances"
    ].gt_boxes.tensor
    assert flipped.tolist() == [[20.0, 20.0, 30.0, 30.0]]
    mapper = CheckedDatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    boxes = mapper(checked[0])["instances"].gt_boxes.tensor
    assert boxes.tolist() == [[10, 10, 30, 30], [0, 30, 14, 48], [50, 5, 60, 48]]


def test_malformed_annotations_are_errors_naming_annotation_and_image(tmp_path):
    _write_image(tmp_path / "a.png")
    bad = [
        _ann([1, 2, 3], id=21),
        _ann([1, float("nan"), 3, 4], id=22),
        _ann([1, 2, 3, 4], category_id=2, id=23),  # num_classes 2: ids 0 and 1 only
        _ann([1, 2, 3, 4], category_id=-1, id=24),
        _ann([0.1, 0.1, 0.5, 0.5], mode=BoxMode.XYWH_REL, id=25),
        {"category_id": 0, "id": 26},
        _ann([1, 2, 3, 4], category_id=1.0),  # no id: named by its position
        {"category_id": 0, "id": 27, "bbox": [1, 2, 3, 4]},  # no bbox_mode
    ]
    with pytest.raises(DatasetValidationError) as error:
        validate_dataset_dicts([_record(tmp_path / "a.png", 5, bad)], "malformed", num_classes=2)
    message = str(error.value)
    where = f"image id 5 ({tmp_path / 'a.png'})"
    assert "Dataset 'malformed' cannot be used:" in message and "8 bad annotations" in message
    for expected in (
        "annotation id 21 has bbox [1, 2, 3], not 4 numbers",
        "annotation id 22 has bbox [1.0, nan, 3.0, 4.0] with a NaN or infinite coordinate",
        "annotation id 23 has category_id 2, outside [0, 2)",
        "annotation id 24 has category_id -1, outside [0, 2)",
        "annotation id 25 has bbox_mode XYWH_REL; only XYWH_ABS and XYXY_ABS",
        "annotation id 26 has no bbox",
        "annotation #6 has category_id 1.0, not an integer",
        "annotation id 27 has no bbox_mode",
    ):
        assert f"{where}: {expected}" in message


def test_malformed_coco_annotations_are_named_by_their_json_id(tmp_path, register):
    annotations = [  # load_coco_json drops the annotation ids: the error looks them up in the file
        {"id": 31, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
        {"id": 32, "image_id": 1, "category_id": 2, "bbox": [1, 2, 3], "area": 25, "iscrowd": 0},
        {
            "id": 33,
            "image_id": 2,
            "category_id": 2,
            "bbox": [4, 4, float("inf"), 5],
            "area": 25,
            "iscrowd": 0,
        },
    ]
    json_file, image_root = _write_coco(tmp_path, num_images=2, annotations=annotations)
    name = register(json_file, image_root)
    with pytest.raises(DatasetValidationError) as error:
        load_checked_dataset_dicts(_cfg(tmp_path, name), name, is_train=True)
    message = str(error.value)
    assert (
        f"image id 1 ({image_root / '0.png'}): annotation id 32 has bbox [1, 2, 3], not 4 numbers"
        in message
    )
    assert (
        f"image id 2 ({image_root / '1.png'}): annotation id 33 has bbox [4.0, 4.0, inf, 5.0]"
        in message
    )


def test_unknown_coco_category_names_annotation_image_and_json(tmp_path, register):
    annotations = [
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
        {"id": 12, "image_id": 2, "category_id": 7, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
    ]
    json_file, image_root = _write_coco(tmp_path, num_images=2, annotations=annotations)
    name = register(json_file, image_root)
    # what Detectron2 alone says: the category id, neither the annotation nor the image
    with pytest.raises(KeyError) as plain:
        DatasetCatalog.get(name)
    assert "category_id=7" in str(plain.value) and "annotation" not in str(plain.value)
    with pytest.raises(DatasetValidationError) as error:
        load_checked_dataset_dicts(_cfg(tmp_path, name), name, is_train=True)
    message = str(error.value)
    assert (
        f"Dataset '{name}' ({json_file}): 1 annotations have a category_id that is not among"
        in message
    )
    assert "annotation id 12 of image id 2 (1.png): category_id 7" in message


def test_empty_annotation_list_is_an_image_without_objects(tmp_path, register):
    json_file, image_root = _write_coco(
        tmp_path,
        annotations=[
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [12, 10, 28, 20],
                "area": 560,
                "iscrowd": 0,
            },
        ],
    )
    name = register(json_file, image_root)
    # the synthetic config keeps them
    dicts = load_checked_dataset_dicts(_cfg(tmp_path, name), name, is_train=True)
    assert [len(d["annotations"]) for d in dicts] == [1, 0, 0, 0]
    sample = CheckedDatasetMapper(is_train=True, augmentations=[], image_format="BGR")(dicts[1])
    assert len(sample["instances"]) == 0 and sample["instances"].image_size == IMAGE_SIZE
    # with Detectron2's default, FILTER_EMPTY_ANNOTATIONS True, they are left out of training
    cfg = _cfg(tmp_path, name, **{"DATALOADER.FILTER_EMPTY_ANNOTATIONS": "True"})
    assert len(load_checked_dataset_dicts(cfg, name, is_train=True)) == 1


def test_train_image_without_annotations_key_is_an_error(tmp_path):
    _write_image(tmp_path / "a.png")
    record = {"file_name": str(tmp_path / "a.png"), "image_id": 3, "height": 48, "width": 64}
    with pytest.raises(
        DatasetValidationError, match=r"image id 3 \(.*a\.png\) has no 'annotations'"
    ):
        validate_dataset_dicts([record], "no_annotations", num_classes=2)
    checked, _ = validate_dataset_dicts([record], "no_annotations", num_classes=2, is_train=False)
    assert checked == [record]  # a test image needs none


def test_grayscale_palette_and_rgba_images_are_converted_with_a_log_line(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(image_reading, "_conversions_logged", defaultdict(int))
    rgb = np.zeros((8, 10, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 100, 200
    Image.fromarray(rgb[..., 1]).save(tmp_path / "gray.png")  # mode L
    rgba = np.dstack([rgb, np.full((8, 10), 7, dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    # 16-bit grayscale
    Image.fromarray(np.full((8, 10), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    mapper = CheckedDatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    with caplog.at_level(logging.WARNING, logger="retinanet_plugin"):
        gray = mapper(_record(tmp_path / "gray.png", 1, [], size=(8, 10)))["image"]
        color = mapper(_record(tmp_path / "rgba.png", 2, [], size=(8, 10)))["image"]
        palette = mapper(_record(tmp_path / "palette.png", 3, [], size=(8, 10)))["image"]
    assert gray.shape == color.shape == palette.shape == (3, 8, 10)
    assert gray[:, 0, 0].tolist() == [100, 100, 100]
    assert color[:, 0, 0].tolist() == [200, 100, 10]  # BGR, alpha dropped
    assert palette.dtype == torch.uint8 and palette.shape == (3, 8, 10)
    log = caplog.text
    assert (
        f"image file {tmp_path / 'gray.png'} (image id 1) is a L image: converted to BGR "
        "(INPUT.FORMAT)" in log
    )
    assert f"{tmp_path / 'rgba.png'} (image id 2) is a RGBA image: converted to BGR" in log
    assert "its alpha channel is dropped, not composited" in log
    assert f"{tmp_path / 'palette.png'} (image id 3) is a P image" in log
    # 16-bit grayscale is scaled to 8 bits (value >> 8), not rejected: tests/test_image_quirks.py
    deep = mapper(_record(tmp_path / "deep.png", 4, [], size=(8, 10)))["image"]
    assert deep[:, 0, 0].tolist() == [40000 >> 8] * 3
    Image.fromarray(np.full((8, 10), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")  # mode F
    with pytest.raises(
        UnreadableImageError, match=r"float\.tif \(image id 5\) has 'F' pixels \(floating point\)"
    ):
        mapper(_record(tmp_path / "float.tif", 5, [], size=(8, 10)))


def test_num_classes_must_match_the_dataset(tmp_path, register):
    name = register(*_write_coco(tmp_path, categories=("a", "b")))
    cfg = _cfg(tmp_path, name, num_classes=3)
    expected = (
        f"MODEL.RETINANET.NUM_CLASSES is 3 but dataset '{name}' has 2 classes (thing_classes: a, b)"
    )
    with pytest.raises(ValueError) as error:
        RetinaNetPluginTrainer.build_train_loader(cfg)
    assert str(error.value) == f"{expected}; set MODEL.RETINANET.NUM_CLASSES 2."
    with pytest.raises(ValueError) as error:
        RetinaNetPluginTrainer.build_test_loader(cfg, name)
    assert str(error.value).startswith(expected)


def test_the_trainer_loaders_check_and_repair(tmp_path, register):
    annotations = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [-10, 10, 30, 20],
            "area": 1,
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 2,
            "category_id": 2,
            "bbox": [12, 10, 0, 20],
            "area": 0,
            "iscrowd": 0,
        },
    ]
    name = register(*_write_coco(tmp_path, num_images=2, annotations=annotations))
    cfg = _cfg(tmp_path, name, **{"INPUT.MIN_SIZE_TRAIN": "(48,)", "INPUT.RANDOM_FLIP": "none"})
    batch = next(iter(RetinaNetPluginTrainer.build_train_loader(cfg)))
    boxes = {b["image_id"]: b["instances"].gt_boxes.tensor.tolist() for b in batch}
    assert boxes == {1: [[0.0, 10.0, 20.0, 30.0]], 2: []}
    test_batch = next(iter(RetinaNetPluginTrainer.build_test_loader(cfg, name)))
    assert test_batch[0]["image"].shape[0] == 3 and "instances" not in test_batch[0]


# ==================================================================================================
# Checkpoints
# ==================================================================================================


@pytest.fixture
def two_and_three_classes(tmp_path, register):
    """Names of two registered datasets on the same images: 2 classes and 3 classes."""
    two = register(*_write_coco(tmp_path / "two", categories=("a", "b")))
    three = register(*_write_coco(tmp_path / "three", categories=("a", "b", "c")))
    return two, three


def _save(trainer, iteration):
    trainer.iter = iteration
    trainer.checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
    return os.path.join(trainer.cfg.OUTPUT_DIR, f"model_{iteration:07d}.pth")


def test_truncated_corrupt_or_missing_weights_are_named(tmp_path, two_and_three_classes):
    two, _ = two_and_three_classes
    path = _save(RetinaNetPluginTrainer(_cfg(tmp_path / "a", two)), 1)
    truncated, corrupt = tmp_path / "truncated.pth", tmp_path / "corrupt.pth"
    data = open(path, "rb").read()
    truncated.write_bytes(data[: len(data) // 3])
    corrupt.write_bytes(os.urandom(4096))
    for bad, why in ((truncated, "cannot be read: it is truncated or corrupt"), (corrupt, "")):
        trainer = RetinaNetPluginTrainer(_cfg(tmp_path / "b", two, **{"MODEL.WEIGHTS": str(bad)}))
        with pytest.raises(CheckpointReadError, match=f"checkpoint file {bad} {why}"):
            trainer.resume_or_load(resume=False)
    trainer = RetinaNetPluginTrainer(
        _cfg(tmp_path / "c", two, **{"MODEL.WEIGHTS": str(tmp_path / "nowhere.pth")})
    )
    with pytest.raises(
        FileNotFoundError, match=f"checkpoint file {tmp_path / 'nowhere.pth'} does not exist"
    ):
        trainer.resume_or_load(resume=False)


def test_weights_of_another_class_count_load_all_but_the_class_layer(
    tmp_path, two_and_three_classes, caplog
):
    two, three = two_and_three_classes
    source = RetinaNetPluginTrainer(_cfg(tmp_path / "two", two, num_classes=2))
    path = _save(source, 3)
    trainer = RetinaNetPluginTrainer(
        _cfg(tmp_path / "three", three, num_classes=3, **{"MODEL.WEIGHTS": path})
    )
    fresh = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="retinanet_plugin"):
        trainer.resume_or_load(resume=False)
    assert (
        f"{path} has 2 classes but MODEL.RETINANET.NUM_CLASSES is 3: head.cls_score" in caplog.text
    )
    assert "every other weight is loaded" in caplog.text
    loaded, saved = trainer.model.state_dict(), source.model.state_dict()
    for key, value in loaded.items():
        expected = fresh[key] if key.startswith("head.cls_score.") else saved[key]
        assert torch.equal(value, expected), key
    assert trainer.start_iter == 0


def test_resuming_with_another_class_count_is_an_error(tmp_path, two_and_three_classes):
    two, three = two_and_three_classes
    _save(RetinaNetPluginTrainer(_cfg(tmp_path, two, num_classes=2)), 3)
    trainer = RetinaNetPluginTrainer(_cfg(tmp_path, three, num_classes=3))  # same OUTPUT_DIR
    with pytest.raises(CheckpointMismatchError) as error:
        trainer.resume_or_load(resume=True)
    message = str(error.value)
    assert f"cannot resume from {tmp_path / 'out' / 'model_0000003.pth'}" in message
    assert "The checkpoint has 2 classes and MODEL.RETINANET.NUM_CLASSES is 3" in message


def test_resume_falls_back_from_an_unreadable_last_checkpoint(
    tmp_path, two_and_three_classes, caplog
):
    two, _ = two_and_three_classes
    cfg = _cfg(tmp_path, two)
    trainer = RetinaNetPluginTrainer(cfg)
    older = _save(trainer, 3)
    newer = _save(trainer, 7)
    os.utime(older, (1_000_000, 1_000_000))  # older on disk too
    data = open(newer, "rb").read()
    open(newer, "wb").write(data[:1000])
    resumed = RetinaNetPluginTrainer(cfg)
    with caplog.at_level(logging.WARNING, logger="retinanet_plugin"):
        resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    assert (
        f"Cannot resume from the last checkpoint: checkpoint file {newer} cannot be read"
        in caplog.text
    )
    assert f"Resuming from {older} instead, the newest readable checkpoint" in caplog.text

    open(older, "wb").write(b"")
    with pytest.raises(CheckpointReadError) as error:
        RetinaNetPluginTrainer(cfg).resume_or_load(resume=True)
    assert "no readable checkpoint" in str(error.value)
    assert newer in str(error.value) and older in str(error.value)


# ==================================================================================================
# Non-finite losses and weights
# ==================================================================================================


def _checkpoints(cfg):
    return sorted(f for f in os.listdir(cfg.OUTPUT_DIR) if f.endswith(".pth"))


def test_nan_loss_stops_training_naming_term_and_iteration_and_keeps_the_last_checkpoint(
    tmp_path, register
):
    cfg = _cfg(tmp_path, register(*_write_coco(tmp_path)))
    trainer = RetinaNetPluginTrainer(cfg)
    trainer.resume_or_load(resume=False)
    losses = trainer.model.losses

    def nan_at_iteration_5(*args, **kwargs):
        out = losses(*args, **kwargs)
        if get_event_storage().iter == 5:
            out["loss_cls"] = out["loss_cls"] * float("nan")
        return out

    trainer.model.losses = nan_at_iteration_5
    with pytest.raises(
        NonFiniteLossError, match=r"^loss_cls is nan at iteration 5 \(finite terms: loss_box_reg = "
    ):
        trainer.train()
    assert _checkpoints(cfg) == ["model_0000001.pth", "model_0000003.pth"]
    assert open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")).read() == "model_0000003.pth"
    assert first_non_finite_tensor(trainer.model) is None  # the NaN step was never applied


def test_overflowing_gradients_never_reach_a_checkpoint(tmp_path, register):
    cfg = _cfg(tmp_path, register(*_write_coco(tmp_path)))
    trainer = RetinaNetPluginTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.model.head.cls_score.bias.register_hook(
        lambda grad: grad * float("inf") if get_event_storage().iter == 3 else grad
    )
    with pytest.raises(NonFiniteWeightsError) as error:
        trainer.train()
    message = str(error.value)
    assert (
        "head.cls_score.bias holds NaN or infinite values after the optimizer step of iteration 3"
        in message
    )
    last = os.path.join(cfg.OUTPUT_DIR, "model_0000001.pth")
    assert f"the last good checkpoint, {last}, is unchanged" in message
    assert _checkpoints(cfg) == ["model_0000001.pth"]
    assert open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")).read() == "model_0000001.pth"
    weights = torch.load(last, map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if torch.is_floating_point(v))
    # the loss itself stayed finite
    assert math.isfinite(trainer.storage.history("total_loss").latest())
