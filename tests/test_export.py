"""Deployment exports (retinanet_plugin.export, tools/export_model.py): the traced TorchScript
module, the torch.export program and the ONNX model (run by ONNX Runtime) give the eager model's
detections, for batches of several synthetic val images and for batch sizes and image sizes other
than those they were captured with.

The model is the synthetic config (R18-FPN, GN head) with sane random weights whose class logits are
spread so that each val image gets tens of detections of every class above the default
SCORE_THRESH_TEST (checked below), so the comparisons go through thresholding, NMS and the top-100
cut with real work to do. The images are those of the embedded synthetic dataset's val split, drawn
in memory (the files on disk are the same images, JPEG-encoded).
"""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from retinanet_plugin import model_zoo
from retinanet_plugin.data.synthetic_shapes import SyntheticShapesParams, render_synthetic_image
from retinanet_plugin.engine.batch_predictor import BatchPredictor
from retinanet_plugin.export import (
    ExportableRetinaNet,
    OnnxRuntimeDetector,
    batch_from_inputs,
    export_onnx,
    export_program,
    export_torchscript,
    load_program,
    load_torchscript,
    padded_detections_to_instances,
    resize_padded_detections,
    save_onnx,
    save_program,
    save_torchscript,
)
from retinanet_plugin.export.torchscript_export import ignore_known_tracer_warnings
from retinanet_plugin.modeling.detection_selection import (
    DetectionSettings,
    select_detections,
    select_detections_padded,
)
from inference_checks import detection_differences  # helpers beside the tests
from sane_random_weights import make_weights_sane

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "synthetic/retinanet_R18_synthetic.yaml"
NUM_VAL_IMAGES = 6
# The sample batch the exports are captured on, and batches of another size / padded size they must
# also handle.
SAMPLE, OTHER_BATCHES = slice(0, 2), (slice(2, 5), slice(5, 6))
# Traced and exported graphs run PyTorch's own kernels; ONNX Runtime has its own convolutions.
TORCH_TOLERANCE = {"boxes": 1e-4, "scores": 1e-6}
ONNXRUNTIME_TOLERANCE = {"boxes": 1e-3, "scores": 1e-5}
# The padded selection against the eager one: boxes bit for bit, scores to float32's last bit (the
# eager one rounds its sigmoid from float64, the padded one takes it in float32).
SELECTION_TOLERANCE = {"boxes": 0.0, "scores": 2**-23}


def within(diff, tolerance):
    return all(diff[key] <= tolerance[key] for key in ("boxes", "scores"))


# ------------------------------------------------------------------------------------------------
# fixtures
def val_images(count=NUM_VAL_IMAGES):
    """BGR uint8 images of the synthetic val split (256-384 px sides, each its own size)."""
    params = SyntheticShapesParams()
    return [render_synthetic_image(params, "val", i)[0] for i in range(count)]


def give_detections(model, inputs):
    """Sane random weights, with class logits spread (x2) and lowered (-0.5): about 2% of the
    (anchor, class) pairs pass SCORE_THRESH_TEST 0.05, so every val image gets tens of detections,
    of all classes, after NMS."""
    make_weights_sane(model, inputs, torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.head.cls_score.weight.mul_(2.0)
        model.head.cls_score.bias.add_(-0.5)


def synthetic_predictor(weights=""):
    """A BatchPredictor of the synthetic config; without ``weights``, random weights that give
    detections."""
    cfg = model_zoo.get_config(CONFIG)
    cfg.MODEL.WEIGHTS = weights
    torch.manual_seed(0)
    predictor = BatchPredictor(cfg)
    if not weights:
        give_detections(predictor.model, [predictor.prepare(image) for image in val_images(4)])
    return predictor


@pytest.fixture(scope="module")
def predictor():
    return synthetic_predictor()


@pytest.fixture(scope="module")
def model(predictor):
    return predictor.model


@pytest.fixture(scope="module")
def inputs(predictor):
    """Model inputs (resized as DefaultPredictor does) of the val images; outputs in the original
    sizes."""
    return [predictor.prepare(image) for image in val_images()]


@pytest.fixture(scope="module")
def eager(model, inputs):
    """The eager model's detections for each batch the tests run, keyed by the batch's slice."""
    with torch.no_grad():
        return {
            (s.start, s.stop): [o["instances"] for o in model(inputs[s])]
            for s in (SAMPLE, *OTHER_BATCHES)
        }


def batch(model, inputs, part):
    return batch_from_inputs(inputs[part], ExportableRetinaNet(model).size_divisibility)


def check_runner(runner, model, inputs, eager, tolerance, name):
    """``runner`` (an exported model) on the sample batch and on batches of other sizes equals eager
    mode."""
    for part in (SAMPLE, *OTHER_BATCHES):
        args = batch(model, inputs, part)
        with torch.no_grad():
            outputs = runner(*args)
        assert [tuple(o.shape) for o in outputs] == [
            (len(args[0]), 100, 4),
            (len(args[0]), 100),
            (len(args[0]), 100),
            (len(args[0]),),
        ]
        diff = detection_differences(
            eager[part.start, part.stop], padded_detections_to_instances(outputs, args[2])
        )
        print(
            f"\n[{name}] batch {tuple(args[0].shape)}: detections {outputs[3].tolist()}, max |box "
            "diff| "
            f"{diff['boxes']:.3g} px, max |score diff| {diff['scores']:.3g}"
        )
        assert diff["boxes"] <= tolerance["boxes"] and diff["scores"] <= tolerance["scores"], diff


# --------------------------------------------------------------------------------------------------
# tests
def test_eager_detections_are_meaningful(eager):
    """The weights give something to compare: tens of detections per image, several classes, scores
    spread."""
    for instances in (
        eager[SAMPLE.start, SAMPLE.stop] + eager[OTHER_BATCHES[0].start, OTHER_BATCHES[0].stop]
    ):
        assert len(instances) >= 20
        assert len(set(instances.pred_classes.tolist())) >= 3
        assert float(instances.scores.min()) > 0.05 and float(instances.scores.max()) > 0.15


def test_exportable_module_equals_the_model_in_eager_mode(model, inputs, eager):
    """ExportableRetinaNet (padded batch, fixed-size selection, resizing) run eagerly gives the
    model's detections: the same candidates, NMS decisions, rescaling, clipping and
    empty-box removal, boxes bit for bit; scores to the last bit of float32 (the model rounds its
    sigmoid from float64, the export computes it in float32)."""
    exportable = ExportableRetinaNet(model)
    for part in (SAMPLE, *OTHER_BATCHES):
        args = batch(model, inputs, part)
        with torch.no_grad():
            outputs = exportable(*args)
        diff = detection_differences(
            eager[part.start, part.stop], padded_detections_to_instances(outputs, args[2])
        )
        assert within(diff, SELECTION_TOLERANCE), diff
        # padding rows after each image's detections
        for i, n in enumerate(outputs[3].tolist()):
            assert (outputs[2][i, n:] == -1).all() and (outputs[1][i, n:] == 0).all()


def test_exportable_module_rejects_bad_input(model):
    exportable = ExportableRetinaNet(model)
    sizes = torch.tensor([[160, 160]])
    with pytest.raises(ValueError, match="multiples of 32"):
        exportable(torch.zeros(1, 3, 170, 192), sizes, sizes)
    with pytest.raises(ValueError, match="image_sizes must be an \\[N, 2\\] int64"):
        exportable(torch.zeros(1, 3, 192, 192), sizes.int(), sizes)
    with pytest.raises(ValueError, match="exceed the batch's size"):
        exportable(torch.zeros(1, 3, 192, 192), torch.tensor([[200, 100]]), sizes)


def test_traced_anchors_follow_the_image_size(model):
    """The anchor generator's cache is bypassed while tracing: a trace made at one size gives
    another size's anchors."""
    generator = model.anchor_generator
    shapes = {
        "small": [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)],
        "large": [(40, 24), (20, 12), (10, 6), (5, 3), (3, 2)],
    }
    features = {k: [torch.zeros(1, 1, h, w) for h, w in v] for k, v in shapes.items()}
    traced = torch.jit.trace(
        lambda *f: tuple(b.tensor for b in generator(list(f))), tuple(features["small"])
    )
    for size in ("small", "large"):
        eager = generator(features[size])
        for a, b in zip(traced(*features[size]), eager):
            assert torch.equal(a, b.tensor)
    assert len(eager[0]) == 40 * 24 * generator.num_cell_anchors[0]


def test_torchscript_trace_equals_eager_for_other_batches_and_sizes(model, inputs, eager, tmp_path):
    traced = export_torchscript(model, batch(model, inputs, SAMPLE))
    path = str(tmp_path / "model.ts")
    save_torchscript(traced, path)
    check_runner(load_torchscript(path), model, inputs, eager, TORCH_TOLERANCE, "torchscript")


@pytest.mark.slow  # torch.export of the whole model: about 20 s on 2 cores
def test_torch_export_program_equals_eager_for_other_batches_and_sizes(
    model, inputs, eager, tmp_path
):
    program = export_program(model, batch(model, inputs, SAMPLE))
    path = str(tmp_path / "model.pt2")
    save_program(program, path)
    check_runner(load_program(path).module(), model, inputs, eager, TORCH_TOLERANCE, "torch.export")


def test_export_program_needs_a_batch_of_two(model, inputs):
    with pytest.raises(ValueError, match="at least 2 images"):
        export_program(model, batch(model, inputs, slice(0, 1)))


# the dynamo exporter takes about a minute on 2 cores
@pytest.mark.parametrize(
    "exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)]
)
def test_onnx_in_onnxruntime_equals_eager_for_other_batches_and_sizes(
    model, inputs, eager, tmp_path, exporter
):
    import onnx

    serialized = export_onnx(model, batch(model, inputs, SAMPLE), exporter=exporter)
    path = str(tmp_path / "model.onnx")
    save_onnx(serialized, path)
    graph = onnx.load(path).graph
    assert "NonMaxSuppression" in {node.op_type for node in graph.node} or any(
        "NonMaxSuppression" in {n.op_type for n in f.node} for f in onnx.load(path).functions
    )
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    # batch, height and width are dynamic
    assert all(isinstance(d, str) for d in dims[0][:1] + dims[0][2:])
    check_runner(
        OnnxRuntimeDetector(path), model, inputs, eager, ONNXRUNTIME_TOLERANCE, f"onnx ({exporter})"
    )


# ------------------------------------------------------------------------- the selection and
# resizing steps alone
def random_dense_predictions(num_images=3, num_classes=4, level_sizes=(300, 80, 20), seed=0):
    """Anchors, logits and deltas for a few levels: image 0 has some pairs above 0.05, image 1 none,
    image 2 very many (more detections than the cap); further images are like image 0."""
    g = torch.Generator().manual_seed(seed)
    anchors, logits, deltas = [], [], []
    for r in level_sizes:
        centres, sizes = (
            torch.rand(r, 2, generator=g) * 256,
            8 + torch.rand(r, 2, generator=g) * 120,
        )
        anchors.append(Boxes(torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)))
        level = torch.randn(num_images, r, num_classes, generator=g) - 5.5
        level[1] = -20.0
        level[2] += 4.0
        logits.append(level)
        deltas.append(torch.randn(num_images, r, 4, generator=g) * 0.3)
    return anchors, logits, deltas


SELECTION = dict(
    box2box_transform=Box2BoxTransform((1.0, 1.0, 1.0, 1.0)),
    settings=DetectionSettings(
        score_thresh=0.05, topk_candidates=50, nms_thresh=0.5, max_detections_per_image=30
    ),
)


def eager_selection(anchors, logits, deltas):
    return select_detections(
        anchors, logits, deltas, [(256, 256)] * logits[0].shape[0], **SELECTION
    )


class PaddedSelection(torch.nn.Module):
    """select_detections_padded as a module of tensors, to capture it alone."""

    def forward(self, a0, a1, a2, l0, l1, l2, d0, d1, d2):
        return select_detections_padded(
            [Boxes(a0), Boxes(a1), Boxes(a2)], [l0, l1, l2], [d0, d1, d2], **SELECTION
        )


def as_instances(outputs):
    return padded_detections_to_instances(outputs, torch.tensor([[256, 256]] * len(outputs[3])))


def test_padded_selection_equals_eager_selection_with_empty_and_capped_images():
    anchors, logits, deltas = random_dense_predictions()
    expected = eager_selection(anchors, logits, deltas)
    assert (
        [len(e) for e in expected][1] == 0 and len(expected[2]) == 30 and 0 < len(expected[0]) < 30
    )
    actual = as_instances(select_detections_padded(anchors, logits, deltas, **SELECTION))
    diff = detection_differences(expected, actual)
    assert within(diff, SELECTION_TOLERANCE), diff


@pytest.mark.parametrize("capture", ["trace", "export"])
def test_captured_padded_selection_handles_batches_without_any_detection(capture):
    """Captured on ordinary inputs, the graph must still run where no pair passes the threshold
    (nothing reaches NMS) and where a batch of another size has images over the cap."""
    anchors, logits, deltas = random_dense_predictions()
    args = [a.tensor for a in anchors] + logits + deltas
    with torch.no_grad(), warnings.catch_warnings():
        ignore_known_tracer_warnings()
        if capture == "trace":
            captured = torch.jit.trace(PaddedSelection(), tuple(args), check_trace=False)
        else:
            batch_dim = torch.export.Dim("batch", min=1)
            shapes = [None] * 3 + [{0: batch_dim}] * 6
            captured = torch.export.export(
                PaddedSelection(), tuple(args), dynamic_shapes=shapes, strict=False
            ).module()
    none_above = [a.tensor for a in anchors] + [torch.full_like(x, -20.0) for x in logits] + deltas
    outputs = captured(*none_above)
    assert outputs[3].tolist() == [0, 0, 0] and (outputs[2] == -1).all()
    other_anchors, other_logits, other_deltas = random_dense_predictions(num_images=5, seed=1)
    other = [a.tensor for a in other_anchors] + other_logits + other_deltas
    expected = eager_selection(other_anchors, other_logits, other_deltas)
    diff = detection_differences(expected, as_instances(captured(*other)))
    assert within(diff, SELECTION_TOLERANCE), diff


def test_resize_padded_detections_matches_detector_postprocess():
    """Scaling to the output size, clipping and dropping the boxes left empty (here, boxes outside
    the image)."""
    image_sizes, output_sizes = [(200, 150), (120, 160)], [(401, 299), (120, 160)]
    boxes = torch.tensor(
        [
            [
                [10.0, 20.0, 50.0, 60.0],
                [160.0, 10.0, 170.0, 30.0],
                [-5.0, -5.0, 40.5, 199.7],
                [0.0, 0.0, 0.0, 0.0],
            ],
            [
                [165.0, 100.0, 170.0, 130.0],
                [1.0, 2.0, 3.0, 4.0],
                [100.0, 119.9, 110.0, 140.0],
                [0.0, 0.0, 0.0, 0.0],
            ],
        ]
    )
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.0], [0.6, 0.5, 0.4, 0.0]])
    classes = torch.tensor([[0, 1, 2, -1], [3, 4, 0, -1]])
    num = torch.tensor([3, 3])
    outputs = resize_padded_detections(
        boxes, scores, classes, num, torch.tensor(image_sizes), torch.tensor(output_sizes)
    )
    expected = []
    for i in range(2):
        instances = Instances(
            image_sizes[i],
            pred_boxes=Boxes(boxes[i, :3].clone()),
            scores=scores[i, :3],
            pred_classes=classes[i, :3],
        )
        expected.append(detector_postprocess(instances, *output_sizes[i]))
    assert [len(e) for e in expected] == [
        2,
        2,
    ]  # one box of each image lies outside it once clipped
    assert detection_differences(
        expected, padded_detections_to_instances(outputs, torch.tensor(output_sizes))
    ) == {"boxes": 0.0, "scores": 0.0, "count": 4}


# ------------------------------------------------------------------------------------------------
# the export tool
def load_export_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "export_model", os.path.join(REPO_ROOT, "tools", "export_model.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("export_tool") / "model_final.pth"
    torch.save({"model": model.state_dict()}, str(path))
    return str(path)


@pytest.mark.slow  # exports all three formats
def test_export_tool_writes_and_verifies_every_format(checkpoint, tmp_path, model, inputs):
    out = tmp_path / "exported"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "tools", "export_model.py"),
            "--config-file",
            model_zoo.get_config_file(CONFIG),
            "--format",
            "all",
            "--onnx-exporter",
            "torchscript",
            "--output",
            str(out),
            "--batch-size",
            "3",
            "MODEL.WEIGHTS",
            checkpoint,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(proc.stdout)
    info = json.loads((out / "export_info.json").read_text())
    assert set(info["files"]) == {"torchscript", "export", "onnx"}
    for entry in info["files"].values():
        verification = entry["verification"]
        assert verification["ok"] and min(n for n, _ in verification["detections"]) >= 20
    assert sorted(os.listdir(out)) == [
        "export_info.json",
        "model.onnx",
        "model.pt2",
        "model.ts",
    ]  # nothing else
    # The written file is a working model: same detections as the model from the checkpoint.
    traced = load_torchscript(str(out / "model.ts"))
    args = batch(model, inputs, OTHER_BATCHES[0])
    with torch.no_grad():
        expected = [o["instances"] for o in model(inputs[OTHER_BATCHES[0]])]
        actual = padded_detections_to_instances(traced(*args), args[2])
    diff = detection_differences(expected, actual)
    assert diff["boxes"] <= TORCH_TOLERANCE["boxes"] and diff["scores"] <= TORCH_TOLERANCE["scores"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "tflite"], "unknown --format 'tflite'"),
        (["--format", "export", "--batch-size", "1"], "--batch-size must be >= 2"),
        (["--format", "onnx"], "MODEL.WEIGHTS is empty"),
        (
            ["--format", "onnx", "MODEL.WEIGHTS", "/nonexistent/m.pth"],
            "MODEL.WEIGHTS '/nonexistent/m.pth' does not",
        ),
    ],
)
def test_export_tool_names_bad_input(argv, message, tmp_path):
    tool = load_export_tool()
    with pytest.raises(tool.ExportError, match=message.replace("(", "\\(")):
        tool.main(
            [
                "--config-file",
                model_zoo.get_config_file(CONFIG),
                "--output",
                str(tmp_path / "out"),
                *argv,
            ]
        )
    assert not (tmp_path / "out").exists()


def test_export_tool_reports_a_missing_weights_file_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "tools", "export_model.py"),
            "--config-file",
            model_zoo.get_config_file(CONFIG),
            "--format",
            "all",
            "--output",
            str(tmp_path / "out"),
            "MODEL.WEIGHTS",
            str(tmp_path / "missing.pth"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 2
    assert (
        f"export_model.py: error: MODEL.WEIGHTS '{tmp_path / 'missing.pth'}' does not exist"
        in proc.stderr
    )
    assert "Traceback" not in proc.stderr
