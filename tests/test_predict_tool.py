"""tools/predict.py on folders of images: decoding in worker processes (the same detections as
reading in the main process), the progress bar, the COCO results json (loads with pycocotools
against the dataset json; with --evaluate, evaluates to the AP the tool prints), unreadable files
(an error naming the file, or skipped with a warning), and the ONNX Runtime backend (the same
detections as eager PyTorch, up to float rounding).

The model is the synthetic config with the sane random weights of tests/test_export.py (tens of
detections per image); the AP checks use a stand-in predictor that "detects" the ground truth of
each image (found by its pixels), with one confident false positive per image, so that the AP is
neither 0 nor 100 and depends on the category ids being mapped back to the dataset's.
"""

import copy
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from retinanet_plugin import model_zoo
from retinanet_plugin.data.image_reading import UnreadableImageError, read_image_checked
from retinanet_plugin.data.synthetic_shapes import (
    SYNTHETIC_SHAPES_CLASSES,
    SyntheticShapesParams,
    render_synthetic_image,
)
from retinanet_plugin.engine.image_stream import ImageSource, ImageStream
from retinanet_plugin.engine.prediction_backends import (
    OnnxRuntimeBackend,
    PyTorchBackend,
    build_backend,
)

# helpers beside the tests
from script_module import load_script
from test_export import (
    CONFIG,
    ONNXRUNTIME_TOLERANCE,
    detection_differences,
    synthetic_predictor,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = model_zoo.get_config_file(CONFIG)
NUM_IMAGES = 4
# The dataset's category ids: not the contiguous class indices (mapped back as COCOEvaluator does).
CATEGORY_IDS = [3, 5, 7, 9, 11]

predict = load_script("tools/predict.py")


# ------------------------------------------------------------------------------------------------
# fixtures
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Random weights that give tens of detections per synthetic image (tests/test_export.py)."""
    path = tmp_path_factory.mktemp("predict_tool") / "model.pth"
    torch.save({"model": synthetic_predictor().model.state_dict()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """NUM_IMAGES synthetic val images as PNG files (0.png ...) and a COCO json of them: image id
    = position + 1 (as the tool numbers plain files), category ids CATEGORY_IDS."""
    folder = tmp_path_factory.mktemp("predict_tool_dataset")
    images, annotations = [], []
    params = SyntheticShapesParams()
    for i in range(NUM_IMAGES):
        image, objects = render_synthetic_image(params, "val", i)
        cv2.imwrite(str(folder / f"{i}.png"), image)
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": image.shape[0]})
        images[-1]["width"] = image.shape[1]
        for obj in objects:
            category = CATEGORY_IDS[obj["category_id"] - 1]
            annotations.append(
                dict(obj, id=len(annotations) + 1, image_id=i + 1, category_id=category, iscrowd=0)
            )
    categories = [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, SYNTHETIC_SHAPES_CLASSES)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "val.json").write_text(json.dumps(coco))
    name = f"coco:{folder / 'val.json'}"
    yield folder, name, coco
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def run_tool(*args, make_predictor=None):
    argv = ["--config-file", CONFIG_FILE, *map(str, args)]
    if make_predictor is None:
        return predict.main(argv)
    return predict.main(argv, make_predictor=make_predictor)


def read_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def eager_run(checkpoint, dataset, tmp_path_factory):
    """The tool with eager PyTorch, images read in the main process (--workers 0), 2 per batch."""
    folder, _, _ = dataset
    out = tmp_path_factory.mktemp("eager_run")
    run_tool(
        "--input", folder, "--output", out, "--workers", 0, "--batch-size", 2, "--no-draw",
        "--confidence-threshold", 0.05, "--no-progress", "MODEL.WEIGHTS", checkpoint,
    )  # fmt: skip
    return out


class GroundTruthPredictor:
    """A stand-in for the model: each image's ground-truth boxes (found by its pixels) with
    decreasing scores, plus two false positives: one of class 0 scored above them all, one of
    class 1 scored below the tool's default --confidence-threshold (0.5)."""

    def __init__(self, cfg):
        params = SyntheticShapesParams()
        self.truth = {}
        for i in range(NUM_IMAGES):
            image, objects = render_synthetic_image(params, "val", i)
            self.truth[image.tobytes()] = objects

    def __call__(self, images):
        outputs = []
        for image in images:
            objects = self.truth[np.ascontiguousarray(image).tobytes()]
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)]
            classes = [o["category_id"] - 1 for o in objects]
            instances = Instances(image.shape[:2])
            scores = [0.9 - 0.01 * k for k in range(len(boxes))]
            instances.pred_boxes = Boxes(
                torch.tensor([[1.0, 1.0, 30.0, 30.0], *boxes, [5, 5, 9, 9]])
            )
            instances.scores = torch.tensor([0.99, *scores, 0.2])
            instances.pred_classes = torch.tensor([0, *classes, 1], dtype=torch.int64)
            outputs.append({"instances": instances})
        return outputs


def coco_eval_stats(gt_path, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(gt_path))
    coco_eval = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")  # loadRes adds fields
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval.stats


# ------------------------------------------------------------------------------------------------
# tests
def test_workers_give_the_same_detections_and_a_progress_bar(
    checkpoint, dataset, eager_run, tmp_path, capsys
):
    folder, _, _ = dataset
    out = tmp_path / "workers"
    run_tool(
        "--input", folder, "--output", out, "--workers", 2, "--batch-size", 2, "--no-draw",
        "--confidence-threshold", 0.05, "MODEL.WEIGHTS", checkpoint,
    )  # fmt: skip
    captured = capsys.readouterr()
    assert f"{NUM_IMAGES} images in" in captured.out and "2 workers" in captured.out
    # tqdm on stderr: count, elapsed<remaining and rate
    assert re.search(
        rf"100%.*{NUM_IMAGES}/{NUM_IMAGES} \[\d\d:\d\d<\d\d:\d\d, .*(img/s|s/img)\]", captured.err
    )
    for name in ("detections.json", "coco_results.json", "coco_images.json"):
        assert read_json(out / name) == read_json(eager_run / name), name
    records = read_json(out / "detections.json")
    assert [r["image_id"] for r in records] == list(range(1, NUM_IMAGES + 1))
    assert min(len(r["classes"]) for r in records) >= 20
    assert not list(out.glob("*.png"))  # --no-draw


def test_plain_file_results_load_against_their_images_list_and_the_dataset(eager_run, dataset):
    from pycocotools.coco import COCO

    folder, _, coco = dataset
    results = read_json(eager_run / "coco_results.json")
    images = read_json(eager_run / "coco_images.json")
    assert [(i["id"], os.path.basename(i["file_name"])) for i in images["images"]] == [
        (i["id"], i["file_name"]) for i in coco["images"]
    ]
    assert [(i["height"], i["width"]) for i in images["images"]] == [
        (i["height"], i["width"]) for i in coco["images"]
    ]
    loaded = COCO(str(eager_run / "coco_images.json")).loadRes(results)
    records = read_json(eager_run / "detections.json")
    assert len(loaded.getAnnIds()) == len(results) == sum(len(r["scores"]) for r in records) >= 80
    # The config's test dataset (the synthetic val split) gives the category ids and names.
    assert {r["category_id"] for r in results} == {1, 2, 3, 4, 5}
    assert images["categories"] == [
        {"id": i + 1, "name": n} for i, n in enumerate(SYNTHETIC_SHAPES_CLASSES)
    ]
    # The image ids are the dataset json's too: the results load against it.
    COCO(str(folder / "val.json")).loadRes(results)


def test_evaluate_writes_results_with_the_dataset_ids_that_give_the_printed_ap(
    dataset, tmp_path, capsys
):
    folder, name, coco = dataset
    out = tmp_path / "evaluate"
    summary = run_tool(
        "--evaluate", name, "--output", out, "--workers", 2, "--batch-size", 2,
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
        make_predictor=GroundTruthPredictor,
    )  # fmt: skip
    printed = capsys.readouterr().out
    results = read_json(out / "coco_results.json")
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    # mapped back to the dataset's ids (the false positives are of class 0: id 3)
    assert {r["category_id"] for r in results} == {3} | {
        a["category_id"] for a in coco["annotations"]
    }
    assert {r["image_id"] for r in results} == set(range(1, NUM_IMAGES + 1))
    stats = coco_eval_stats(folder / "val.json", results)
    ap = summary["metrics"]["AP"]
    assert 50 < ap < 100 and abs(ap - 100 * stats[0]) < 1e-9
    assert abs(summary["metrics"]["AP50"] - 100 * stats[1]) < 1e-9
    assert re.search(rf"^\s+AP\s+{ap:6.2f}$", printed, re.MULTILINE)
    # (AP-cross is NaN: no image has a cross)
    assert json.dumps(read_json(out / "metrics.json")["metrics"]) == json.dumps(summary["metrics"])
    # Plain files with that dataset as the config's: the same results, ids and all.
    plain = tmp_path / "plain"
    run_tool(
        "--input", folder, "--output", plain, "--workers", 0, "--no-draw", "--no-progress",
        "DATASETS.TRAIN", "()", "DATASETS.TEST", f"('{name}',)",
        make_predictor=GroundTruthPredictor,
    )  # fmt: skip
    assert read_json(plain / "coco_results.json") == results  # all, the 0.2 ones too
    records = read_json(plain / "detections.json")
    assert sum(len(r["scores"]) for r in records) == len(results) - NUM_IMAGES
    assert min(score for r in records for score in r["scores"]) > 0.3
    assert [c["id"] for c in read_json(plain / "coco_images.json")["categories"]] == CATEGORY_IDS


def test_image_stream_reads_as_read_image_checked_in_workers(tmp_path):
    """Palette, 16-bit and RGBA files come out of the worker processes as read_image_checked reads
    them, in order, in batches of the size asked for."""
    palette = Image.new("P", (6, 4))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.save(tmp_path / "palette.png")
    Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50).save(
        tmp_path / "sixteen.png"
    )
    Image.fromarray(np.full((5, 7, 4), 90, dtype=np.uint8), "RGBA").save(tmp_path / "rgba.png")
    cv2.imwrite(str(tmp_path / "plain.jpg"), np.full((9, 11, 3), 128, dtype=np.uint8))
    paths = [str(tmp_path / n) for n in ("palette.png", "sixteen.png", "rgba.png", "plain.jpg")]
    sources = [ImageSource(p, image_id=i) for i, p in enumerate(paths)]
    batches = list(ImageStream(sources, batch_size=3, workers=2))
    assert [len(b) for b in batches] == [3, 1]
    items = [item for batch in batches for item in batch]
    assert [item.index for item in items] == [0, 1, 2, 3]
    for item, path in zip(items, paths):
        assert item.source.file_name == path
        assert np.array_equal(item.image, read_image_checked(path, "BGR"))


@pytest.fixture
def folder_with_a_broken_file(dataset, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    source, _, _ = dataset
    for name in ("0.png", "2.png"):
        (folder / name).write_bytes((source / name).read_bytes())
    (folder / "1_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def test_an_unreadable_file_is_an_error_naming_it(folder_with_a_broken_file, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UnreadableImageError, match=r"1_broken\.png cannot be decoded"):
        run_tool(
            "--input", folder_with_a_broken_file, "--output", out, "--workers", 1, "--no-draw",
            make_predictor=GroundTruthPredictor,
        )  # fmt: skip
    assert not (out / "detections.json").exists() and not (out / "coco_results.json").exists()
    # from the command line: one line, no traceback
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "tools", "predict.py"),
            "--config-file",
            CONFIG_FILE,
            "--input",
            str(folder_with_a_broken_file),
            "--output",
            str(out),
            "--no-progress",
            "DATASETS.TEST",
            "()",
            "DATASETS.TRAIN",
            "()",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.search(
        r"predict\.py: error: image file \S*1_broken\.png cannot be decoded", proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_skip_bad_images_leaves_them_out_with_a_warning(
    folder_with_a_broken_file, tmp_path, caplog
):
    out = tmp_path / "out"
    records = run_tool(
        "--input", folder_with_a_broken_file, "--output", out, "--workers", 2, "--no-progress",
        "--skip-bad-images", make_predictor=GroundTruthPredictor,
    )  # fmt: skip
    assert [os.path.basename(r["file"]) for r in records] == ["0.png", "2.png"]
    assert [r["image_id"] for r in records] == [1, 3]  # positions in the input list, + 1
    assert re.search(r"skipped: image file \S*1_broken\.png cannot be decoded", caplog.text)
    (skipped,) = read_json(out / "skipped_images.json")
    assert skipped["file"].endswith("1_broken.png") and "cannot be decoded" in skipped["error"]
    assert [i["id"] for i in read_json(out / "coco_images.json")["images"]] == [1, 3]
    assert len(list(out.glob("*_pred.png"))) == 2


def test_onnxruntime_backend_gives_the_eager_detections(checkpoint, dataset, eager_run, tmp_path):
    """--backend onnxruntime without --onnx exports the model to OUTPUT/model.onnx; that file, run
    by ONNX Runtime, gives eager PyTorch's detections on batches of images of different sizes."""
    folder, _, _ = dataset
    out = tmp_path / "onnx"
    run_tool(
        "--input", folder, "--output", out, "--backend", "onnxruntime", "--workers", 1,
        "--batch-size", 2, "--no-draw", "--confidence-threshold", 0.05, "--no-progress",
        "MODEL.WEIGHTS", checkpoint,
    )  # fmt: skip
    assert (out / "model.onnx").is_file()
    eager, onnx = read_json(eager_run / "detections.json"), read_json(out / "detections.json")
    for e, o in zip(eager, onnx):
        assert e["classes"] == o["classes"] and len(e["classes"]) >= 20
        assert np.abs(np.subtract(e["boxes_xyxy"], o["boxes_xyxy"])).max() <= 1e-3
        assert np.abs(np.subtract(e["scores"], o["scores"])).max() <= 1e-5
    # the backends themselves, on val images of different sizes in one batch
    cfg = predict.setup_cfg(
        type("Args", (), {"config_file": CONFIG_FILE, "opts": ["MODEL.WEIGHTS", checkpoint]})()
    )
    images = [cv2.imread(str(folder / f"{i}.png")) for i in range(NUM_IMAGES)]
    pytorch = PyTorchBackend(cfg)
    onnxruntime = OnnxRuntimeBackend.from_file(cfg, str(out / "model.onnx"))
    assert onnxruntime.size_divisibility == pytorch.predictor.model.backbone.size_divisibility
    assert len({image.shape for image in images[1:3]}) == 2  # padded to the larger one
    diff = detection_differences(pytorch.predict(images[1:3]), onnxruntime.predict(images[1:3]))
    print(f"\nonnxruntime vs eager: {diff}")
    assert diff["boxes"] <= ONNXRUNTIME_TOLERANCE["boxes"], diff
    assert diff["scores"] <= ONNXRUNTIME_TOLERANCE["scores"], diff
    # test-time augmentation is not in the exported model: the backend says it runs without it
    cfg.defrost()
    cfg.TEST.AUG.ENABLED = True
    notes = []
    build_backend(cfg, "onnxruntime", onnx=str(out / "model.onnx"), log=notes.append)
    assert any("TEST.AUG.ENABLED" in n and "runs without it" in n for n in notes), notes


def test_onnx_model_settings_are_checked(checkpoint, tmp_path):
    cfg = predict.setup_cfg(type("Args", (), {"config_file": CONFIG_FILE, "opts": []})())
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxRuntimeBackend.from_file(cfg, str(tmp_path / "missing.onnx"))
    (tmp_path / "model.onnx").write_bytes(b"")
    info = {
        "input_format": "RGB",
        "size_divisibility": 32,
        "files": {"onnx": {"file": "model.onnx"}},
    }
    (tmp_path / "export_info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="takes RGB images .* INPUT.FORMAT is BGR"):
        OnnxRuntimeBackend.from_file(cfg, str(tmp_path / "model.onnx"))
    with pytest.raises(ValueError, match="--onnx needs --backend onnxruntime"):
        run_tool("--input", tmp_path, "--output", tmp_path, "--onnx", tmp_path / "model.onnx")
    with pytest.raises(ValueError, match="--workers must be >= 0"):
        run_tool("--input", tmp_path, "--output", tmp_path, "--workers", -1)
