"""Loading Detectron2 RetinaNet checkpoints into the plugin's model.

A Detectron2 ``RetinaNet`` (R18, random weights) is saved as Detectron2 does it: a ``.pth`` through
``DetectionCheckpointer.save`` and a model-zoo ``.pkl`` (``{"model": {name: ndarray}, "__author__":
...}``). Each is loaded (a) directly through ``DetectionCheckpointer(plugin_model).load`` and (b)
through ``tools/convert_detectron2_retinanet.py``; every weight must equal the source's and the
plugin model must then give the source model's detections.
"""

import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import retinanet_plugin
from retinanet_plugin.checkpoint import (
    convert_detectron2_retinanet_state_dict,
    load_detectron2_checkpoint,
)
from sane_random_weights import make_weights_sane  # a helper beside the tests
from script_module import load_script  # a helper beside the tests

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "convert_detectron2_retinanet.py"
NUM_CLASSES = 80
CLS_SCORE_KEYS = ["head.cls_score.weight", "head.cls_score.bias"]


convert_tool = load_script("tools/convert_detectron2_retinanet.py")


def small_depth(cfg):
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    return cfg


def detectron2_cfg(config_file="COCO-Detection/retinanet_R_50_FPN_1x.yaml"):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config_file))
    return small_depth(cfg)


def plugin_model(num_classes=NUM_CLASSES):
    cfg = retinanet_plugin.add_retinanet_plugin_config(get_cfg())
    cfg.merge_from_file(str(REPO / "configs" / "retinanet_R50.yaml"))
    small_depth(cfg)
    cfg.MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL = "reference"
    # Detectron2's execution (norms unfolded, NCHW), so that equal weights give equal detections
    # to 1e-4; the other modes differ from it by rounding (tests/test_parity.py)
    cfg.MODEL.RETINANET_PLUGIN.FOLD_FROZEN_BN = False
    cfg.MODEL.RETINANET_PLUGIN.MEMORY_FORMAT = "contiguous"
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    torch.manual_seed(123)  # a different initialisation from the source's
    return build_model(cfg).eval()


def inputs():
    generator = torch.Generator().manual_seed(1)
    images = []
    for height, width in ((160, 224), (192, 160)):
        low = torch.rand(1, 3, height // 8, width // 8, generator=generator)
        images.append(
            torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear")[0] * 255.0
        )
    return [{"image": image} for image in images]


def randomize(model, generator):
    """Every weight random (no zero biases, no default FrozenBN statistics), outputs in a normal
    range."""
    make_weights_sane(model, inputs(), generator, randomize_backbone_biases=True)


@pytest.fixture(scope="module")
def source():
    """Detectron2's own RetinaNet with random weights, and its detections on ``inputs()``."""
    torch.manual_seed(0)
    model = build_model(detectron2_cfg())
    assert type(model).__name__ == "RetinaNet"
    randomize(model, torch.Generator().manual_seed(2))
    with torch.no_grad():
        detections = model(inputs())
    # the comparison below compares something
    assert all(len(d["instances"]) >= 50 for d in detections)
    return model, detections


@pytest.fixture(scope="module")
def saved(source, tmp_path_factory):
    """The source model saved as Detectron2 saves checkpoints: {"pth": path, "pkl": path}."""
    model, _ = source
    folder = tmp_path_factory.mktemp("detectron2_checkpoints")
    DetectionCheckpointer(model, save_dir=str(folder)).save("model_final")
    pkl = folder / "model_zoo.pkl"
    with open(pkl, "wb") as f:
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)
    return {"pth": str(folder / "model_final.pth"), "pkl": str(pkl)}


def assert_same_weights(source_model, model, skip=()):
    expected = source_model.state_dict()
    actual = model.state_dict()
    assert set(actual) - set(expected) == {"loss_normalizer"}  # the plugin's own EMA buffer
    for key, value in expected.items():
        if key in skip:
            assert not torch.equal(actual[key], value), f"{key} should not have been loaded"
            continue
        assert torch.equal(actual[key], value), f"{key} differs from the source checkpoint"


def assert_same_detections(expected, model):
    with torch.no_grad():
        actual = model(inputs())
    for a, b in zip(expected, actual):
        a, b = a["instances"], b["instances"]
        assert len(a) == len(b) > 0
        assert torch.equal(a.pred_classes, b.pred_classes)
        torch.testing.assert_close(b.scores, a.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["pth", "pkl"])
def test_detectron2_checkpoint_loads_directly_through_detection_checkpointer(source, saved, fmt):
    source_model, detections = source
    model = plugin_model()
    DetectionCheckpointer(model).load(saved[fmt])
    assert_same_weights(source_model, model)
    assert_same_detections(detections, model.eval())


@pytest.mark.parametrize("fmt", ["pth", "pkl"])
def test_converted_checkpoint_loads_and_matches(source, saved, fmt, tmp_path):
    source_model, detections = source
    output = tmp_path / "plugin.pth"
    report = convert_tool.main(["--input", saved[fmt], "--output", str(output)])
    assert (
        report["num_classes"] == NUM_CLASSES
        and report["num_anchors"] == 9
        and report["num_convs"] == 4
    )
    assert report["resnet_depth"] == 18 and report["res2_out_channels"] == 64
    assert report["p6p7_input"] == "res5" and report["fpn_out_channels"] == 256
    assert report["converted_from_numpy"] == (len(source_model.state_dict()) if fmt == "pkl" else 0)
    assert report["dropped"] == {}
    assert sorted(os.listdir(tmp_path)) == ["plugin.pth"]  # no temporary file left behind

    written = torch.load(output, map_location="cpu", weights_only=True)
    assert set(written) == {"model", "__author__", "meta"}
    assert written["meta"]["num_classes"] == NUM_CLASSES
    assert written["meta"]["source"] == os.path.abspath(saved[fmt])
    model = plugin_model()
    DetectionCheckpointer(model).load(str(output))
    assert_same_weights(source_model, model)
    assert_same_detections(detections, model.eval())


def test_numpy_ddp_prefix_and_stale_entries_are_handled(source):
    source_model, _ = source
    state = {"module." + k: v.numpy() for k, v in source_model.state_dict().items()}
    # What older Detectron2 checkpoints also stored: anchors and pixel statistics (not learned).
    state["module.anchor_generator.cell_anchors.0"] = torch.zeros(9, 4).numpy()
    state["module.pixel_mean"] = torch.zeros(3, 1, 1).numpy()
    converted, report = convert_detectron2_retinanet_state_dict(
        {"model": state, "__author__": "someone"}
    )
    assert report["stripped_prefix"] == "module."
    assert set(report["dropped"]) == {"anchor_generator.cell_anchors.0", "pixel_mean"}
    assert report["converted_from_numpy"] == len(source_model.state_dict())
    assert list(converted) == list(source_model.state_dict())
    for key, value in source_model.state_dict().items():
        assert isinstance(converted[key], torch.Tensor) and torch.equal(converted[key], value), key


def test_different_class_count_skips_cls_score_with_a_warning(source, saved, tmp_path, caplog):
    source_model, _ = source
    # The conversion function: drops head.cls_score and says so.
    with caplog.at_level(
        logging.WARNING, logger="retinanet_plugin.checkpoint.detectron2_conversion"
    ):
        converted, report = convert_detectron2_retinanet_state_dict(
            source_model.state_dict(), num_classes=5
        )
    assert all(key in caplog.text for key in CLS_SCORE_KEYS)
    assert set(report["dropped"]) == set(CLS_SCORE_KEYS) and report["num_classes"] == NUM_CLASSES
    model = plugin_model(num_classes=5)
    fresh_bias = model.head.cls_score.bias.detach().clone()
    incompatible = model.load_state_dict(converted, strict=False)
    assert (
        sorted(incompatible.missing_keys) == sorted(CLS_SCORE_KEYS)
        and not incompatible.unexpected_keys
    )
    assert model.head.cls_score.weight.shape[0] == 9 * 5 and torch.equal(
        model.head.cls_score.bias, fresh_bias
    )
    assert_same_weights(source_model, model, skip=CLS_SCORE_KEYS)

    # The direct path: DetectionCheckpointer skips the mismatched layer (and logs its name) too.
    model = plugin_model(num_classes=5)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(model).load(saved["pkl"])
    assert "head.cls_score.weight" in caplog.text
    assert_same_weights(source_model, model, skip=CLS_SCORE_KEYS)

    output = tmp_path / "five_classes.pth"  # The tool, run as a program.
    result = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            "--input",
            saved["pth"],
            "--output",
            str(output),
            "--num-classes",
            "5",
        ],
        capture_output=True,
        text=True,
        cwd=str(REPO),
    )
    assert result.returncode == 0, result.stderr
    assert "head.cls_score.weight" in result.stderr  # the warning names the dropped layer
    written = torch.load(output, map_location="cpu", weights_only=True)
    assert not set(CLS_SCORE_KEYS) & set(written["model"]) and written["meta"]["num_classes"] == 5
    assert len(written["model"]) == len(source_model.state_dict()) - 2


def test_non_retinanet_checkpoint_gives_a_clear_error(tmp_path):
    torch.manual_seed(0)
    faster_rcnn = build_model(detectron2_cfg("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    message = (
        r"not a Detectron2 RetinaNet checkpoint: missing \['head.cls_score.weight'"
        r".*GeneralizedRCNN.*roi_heads"
    )
    with pytest.raises(ValueError, match=message):
        convert_detectron2_retinanet_state_dict(faster_rcnn.state_dict())

    checkpoint = tmp_path / "faster_rcnn.pth"
    torch.save({"model": faster_rcnn.state_dict()}, checkpoint)
    output = tmp_path / "out.pth"
    output.write_bytes(b"previous")
    with pytest.raises(ValueError, match="not a Detectron2 RetinaNet checkpoint"):
        convert_tool.main(["--input", str(checkpoint), "--output", str(output)])
    assert output.read_bytes() == b"previous"  # untouched, no temporary file left behind
    assert sorted(os.listdir(tmp_path)) == ["faster_rcnn.pth", "out.pth"]


def test_inconsistent_shapes_and_unreadable_files_are_named(source, tmp_path):
    source_model, _ = source
    state = dict(source_model.state_dict())
    state["head.cls_score.weight"] = state["head.cls_score.weight"][:-1]
    with pytest.raises(ValueError, match="head.cls_score.weight has 719 output channels"):
        convert_detectron2_retinanet_state_dict(state)
    state = dict(source_model.state_dict(), **{"head.cls_score.extra": "text"})
    with pytest.raises(TypeError, match="'head.cls_score.extra' is a str"):
        convert_detectron2_retinanet_state_dict(state)

    caffe2 = tmp_path / "detectron1.pkl"
    with open(caffe2, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": torch.zeros(1).numpy()}}, f)
    with pytest.raises(ValueError, match="detectron1.pkl.*Caffe2/Detectron1"):
        load_detectron2_checkpoint(str(caffe2))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_detectron2_checkpoint(str(tmp_path / "missing.pth"))
