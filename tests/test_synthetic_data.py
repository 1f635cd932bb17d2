"""The embedded synthetic shapes dataset: deterministic, atomic and idempotent generation, tight
boxes, coverage of classes and sizes, Detectron2 registration and evaluation, and the dataset file
checks."""

import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_train_loader,
)
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import BoxMode, Boxes, Instances

from retinanet_plugin.data import check_dataset_files
from retinanet_plugin.data import synthetic_shapes as shapes
from retinanet_plugin.data.synthetic_shapes import (
    SYNTHETIC_SHAPES_CLASSES,
    SYNTHETIC_SHAPES_NUM_CLASSES,
    SYNTHETIC_SHAPES_TRAIN,
    SYNTHETIC_SHAPES_VAL,
    SyntheticShapesParams,
    ensure_synthetic_shapes,
    register_synthetic_shapes,
    render_synthetic_image,
)

SMALL = dict(num_train=20, num_val=20)
# plain backgrounds, no noise, lossless files: every pixel that differs from the background belongs
# to a shape
CLEAN = dict(SMALL, gradient_probability=0.0, max_noise_std=0.0, image_format="png")


def _load(root, split):
    with open(os.path.join(root, f"{split}.json")) as f:
        return json.load(f)


def _boxes(coco):
    return np.array([a["bbox"] for a in coco["annotations"]], dtype=np.float64).reshape(-1, 4)


@pytest.fixture
def small_registration(tmp_path):
    """The synthetic datasets registered on a 20 + 20 image dataset in tmp_path; the default one
    restored after."""
    root = str(tmp_path / "shapes")
    register_synthetic_shapes(root, **SMALL)
    yield root
    register_synthetic_shapes()


def test_same_seed_gives_identical_files_and_val_is_held_out(tmp_path):
    a = ensure_synthetic_shapes(str(tmp_path / "a"), **SMALL)
    b = ensure_synthetic_shapes(str(tmp_path / "b"), **SMALL)
    c = ensure_synthetic_shapes(str(tmp_path / "c"), seed=1, **SMALL)
    for split in ("train", "val"):
        for name in (f"{split}.json", f"{split}/000007.jpg"):
            with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
                assert fa.read() == fb.read(), name
        assert _load(a, split) != _load(c, split), "another seed must give another dataset"
    # val comes from its own random stream: no val image repeats a train image
    train_bytes = {
        open(os.path.join(a, "train", f), "rb").read() for f in os.listdir(os.path.join(a, "train"))
    }
    assert not train_bytes & {
        open(os.path.join(a, "val", f), "rb").read() for f in os.listdir(os.path.join(a, "val"))
    }


def test_complete_dataset_is_reused_and_damaged_or_stale_ones_are_regenerated(
    tmp_path, monkeypatch
):
    root = ensure_synthetic_shapes(str(tmp_path / "shapes"), **SMALL)
    image = os.path.join(root, "train", "000003.jpg")
    before = [os.stat(os.path.join(root, p)).st_mtime_ns for p in ("manifest.json", "val.json")] + [
        os.stat(image).st_ino
    ]

    def must_not_render(*args, **kwargs):
        raise AssertionError("a complete dataset was regenerated")

    with monkeypatch.context() as m:
        m.setattr(shapes, "render_synthetic_image", must_not_render)
        assert ensure_synthetic_shapes(root, **SMALL) == root
    after = [os.stat(os.path.join(root, p)).st_mtime_ns for p in ("manifest.json", "val.json")] + [
        os.stat(image).st_ino
    ]
    assert before == after

    reference = _load(root, "val")
    os.remove(image)  # a missing image
    ensure_synthetic_shapes(root, **SMALL)
    assert os.path.getsize(image) > 0
    with open(os.path.join(root, "val.json"), "r+b") as f:  # a truncated json
        f.truncate(100)
    ensure_synthetic_shapes(root, **SMALL)
    assert _load(root, "val") == reference
    os.remove(os.path.join(root, "manifest.json"))  # no manifest: never finished
    ensure_synthetic_shapes(root, **SMALL)
    assert _load(root, "val") == reference
    ensure_synthetic_shapes(root, num_train=20, num_val=7)  # other parameters: stale
    assert (
        len(_load(root, "val")["images"]) == 7 and len(os.listdir(os.path.join(root, "val"))) == 7
    )
    assert sorted(os.listdir(tmp_path)) == [".shapes.lock", "shapes"], (
        "temporary folders left behind"
    )


def test_interrupted_generation_leaves_nothing_and_foreign_folders_are_not_replaced(
    tmp_path, monkeypatch
):
    original = shapes._write_split

    def fail_on_val(params, split, folder):
        if split == "val":
            raise OSError("disk full")
        return original(params, split, folder)

    monkeypatch.setattr(shapes, "_write_split", fail_on_val)
    with pytest.raises(OSError, match="disk full"):
        ensure_synthetic_shapes(str(tmp_path / "shapes"), **SMALL)
    assert sorted(os.listdir(tmp_path)) == [".shapes.lock"]
    monkeypatch.setattr(shapes, "_write_split", original)

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        ensure_synthetic_shapes(str(foreign), **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_boxes_are_tight_around_the_drawn_pixels(tmp_path):
    root = ensure_synthetic_shapes(str(tmp_path / "clean"), **CLEAN)
    params = SyntheticShapesParams(**CLEAN)
    for split in ("train", "val"):
        coco = _load(root, split)
        by_image = {im["id"]: [] for im in coco["images"]}
        for ann in coco["annotations"]:
            by_image[ann["image_id"]].append(ann)
        for index, info in enumerate(coco["images"]):
            image = cv2.imread(os.path.join(root, split, info["file_name"]), cv2.IMREAD_COLOR)
            assert image.shape == (info["height"], info["width"], 3)
            rendered, objects = render_synthetic_image(params, split, index)
            np.testing.assert_array_equal(rendered, image)  # the file is what the generator drew
            anns = by_image[info["id"]]
            assert [o["bbox"] for o in objects] == [a["bbox"] for a in anns]
            inside_any = np.zeros(image.shape[:2], dtype=bool)
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert w > 0 and h > 0 and x >= 0 and y >= 0
                assert x + w <= info["width"] and y + h <= info["height"]
                assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
                inside_any[y : y + h, x : x + w] = True
            outside = image[~inside_any]
            background = outside[0]
            # nothing is drawn outside the boxes: the plain background is all that is left there
            assert (outside == background).all(), (
                f"{split} image {index}: drawn pixels outside every box"
            )
            drawn = (image != background).any(axis=2)
            for ann in anns:
                x, y, w, h = ann["bbox"]
                patch = drawn[y : y + h, x : x + w]
                # tight: each side of the box touches a drawn pixel, and the shape fills a good part
                # of it
                assert (
                    patch[0].any() and patch[-1].any() and patch[:, 0].any() and patch[:, -1].any()
                )
                assert patch.mean() > 0.25, (
                    f"{split} image {index}: box {ann['bbox']} is mostly background"
                )


def test_classes_sizes_aspects_and_empty_images_are_covered(tmp_path):
    root = ensure_synthetic_shapes(str(tmp_path / "shapes"), **SMALL)
    for split in ("train", "val"):
        coco = _load(root, split)
        assert [c["id"] for c in coco["categories"]] == list(
            range(1, SYNTHETIC_SHAPES_NUM_CLASSES + 1)
        )
        assert [c["name"] for c in coco["categories"]] == list(SYNTHETIC_SHAPES_CLASSES)
        assert {a["category_id"] for a in coco["annotations"]} == set(
            range(1, SYNTHETIC_SHAPES_NUM_CLASSES + 1)
        )
        with_objects = {a["image_id"] for a in coco["annotations"]}
        assert len(coco["images"]) - len(with_objects) == 2  # round(20 * 0.08)
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        boxes = _boxes(coco)
        # default image sides are 256-384 px, so objects larger than 256 px fit
        assert np.sqrt(boxes[:, 2] * boxes[:, 3]).min() < 32, "no small object (sqrt(w*h) < 32 px)"
        assert boxes[:, 2:].max() > 256, "no large object (side > 256 px)"
        aspect = boxes[:, 2] / boxes[:, 3]
        assert (
            aspect.min() < 0.5
            and aspect.max() > 2.0
            and aspect.min() >= 0.3
            and aspect.max() <= 3.4
        )


def test_registration_is_lazy_and_can_be_repeated(tmp_path):
    root = str(tmp_path / "lazy")
    try:
        names = register_synthetic_shapes(root, **SMALL)
        names = register_synthetic_shapes(root, **SMALL)
        assert names == {"train": SYNTHETIC_SHAPES_TRAIN, "val": SYNTHETIC_SHAPES_VAL}
        assert not os.path.exists(root), "registration must not generate anything"
        meta = MetadataCatalog.get(SYNTHETIC_SHAPES_VAL)
        assert meta.json_file == os.path.join(root, "val.json") and meta.image_root == os.path.join(
            root, "val"
        )
        assert meta.evaluator_type == "coco" and meta.thing_classes == list(
            SYNTHETIC_SHAPES_CLASSES
        )
    finally:
        register_synthetic_shapes()
    assert MetadataCatalog.get(SYNTHETIC_SHAPES_VAL).json_file != os.path.join(root, "val.json")


def test_registered_datasets_load_into_a_detectron2_train_loader(small_registration):
    dicts = DatasetCatalog.get(SYNTHETIC_SHAPES_TRAIN)
    assert os.path.isfile(os.path.join(small_registration, "manifest.json"))
    assert len(dicts) == SMALL["num_train"]
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and d["height"] > 0 and d["width"] > 0
        for ann in d["annotations"]:
            assert (
                ann["bbox_mode"] == BoxMode.XYWH_ABS
                and 0 <= ann["category_id"] < SYNTHETIC_SHAPES_NUM_CLASSES
            )
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    loader = build_detection_train_loader(
        dataset=dicts, mapper=mapper, total_batch_size=2, num_workers=0
    )
    batches = iter(loader)
    samples = [
        sample for _ in range(4) for sample in next(batches)
    ]  # empty images stay in: the model trains on them
    assert len(samples) == 8 and any(len(s["instances"]) > 0 for s in samples)
    for sample in samples:
        instances = sample["instances"]
        assert sample["image"].shape[1:] == instances.image_size
        boxes = instances.gt_boxes.tensor
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= instances.image_size[1]).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= instances.image_size[0]).all()
        assert len(instances) == 0 or instances.gt_classes.max() < SYNTHETIC_SHAPES_NUM_CLASSES


def _evaluate(dicts, shift_class=None):
    """bbox AP of the ground truth of ``dicts`` used as predictions; boxes of ``shift_class`` moved
    by their width."""
    evaluator = COCOEvaluator(
        SYNTHETIC_SHAPES_VAL, tasks=("bbox",), distributed=False, use_fast_impl=False
    )
    evaluator.reset()
    for d in dicts:
        boxes = torch.tensor(
            [
                BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                for a in d["annotations"]
            ],
            dtype=torch.float32,
        ).reshape(-1, 4)
        classes = torch.tensor([a["category_id"] for a in d["annotations"]], dtype=torch.int64)
        if shift_class is not None:
            moved = classes == shift_class
            widths = boxes[moved, 2] - boxes[moved, 0]
            boxes[moved, 0] += widths
            boxes[moved, 2] += widths
        instances = Instances((d["height"], d["width"]))
        instances.pred_boxes = Boxes(boxes)
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = classes
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


def test_coco_evaluator_scores_the_ground_truth_100_ap(small_registration):
    dicts = DatasetCatalog.get(SYNTHETIC_SHAPES_VAL)
    perfect = _evaluate(dicts)
    assert perfect["AP"] == pytest.approx(100.0) and perfect["AP50"] == pytest.approx(100.0)
    for name in SYNTHETIC_SHAPES_CLASSES:
        assert perfect[f"AP-{name}"] == pytest.approx(100.0)
    wrong = _evaluate(dicts, shift_class=SYNTHETIC_SHAPES_CLASSES.index("ring"))
    assert wrong["AP-ring"] == pytest.approx(0.0) and wrong["AP"] == pytest.approx(80.0)


def test_check_dataset_files_names_the_missing_path_and_detectron2_datasets(tmp_path, monkeypatch):
    meta = MetadataCatalog.get("coco_2017_val")
    if os.path.isabs(meta.json_file) and os.path.exists(meta.json_file):
        pytest.skip("COCO is installed under DETECTRON2_DATASETS on this machine")
    # the builtin paths are relative to the working directory by default
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", "/nonexistent/d2_data")
    with pytest.raises(FileNotFoundError) as error:
        check_dataset_files(("coco_2017_val",))
    message = str(error.value)
    assert "coco_2017_val" in message and meta.json_file in message and meta.image_root in message
    assert "DETECTRON2_DATASETS" in message and "'/nonexistent/d2_data'" in message

    with pytest.raises(KeyError, match="coco_2017_val"):
        check_dataset_files(["coco_2017_vall"])


def test_check_dataset_files_generates_the_synthetic_dataset(small_registration):
    assert not os.path.exists(small_registration)
    check_dataset_files([SYNTHETIC_SHAPES_TRAIN, SYNTHETIC_SHAPES_VAL])
    assert os.path.isfile(os.path.join(small_registration, "manifest.json"))
    os.remove(os.path.join(small_registration, "val.json"))
    check_dataset_files(SYNTHETIC_SHAPES_VAL)  # damaged files are regenerated rather than reported
    assert os.path.isfile(os.path.join(small_registration, "val.json"))
