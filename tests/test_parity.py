"""Parity with Detectron2's built-in RetinaNet: with the same weights, ``RetinaNetPlugin`` gives the
same losses, gradients, loss normaliser and detections as
``detectron2.modeling.meta_arch.RetinaNet``.

Detectron2's model is built from Detectron2's own ``COCO-Detection/retinanet_R_50_FPN_1x.yaml``, the
plugin's from ``configs/retinanet_R50.yaml``; weights go from one to the other through
``convert_detectron2_retinanet_state_dict``. Random weights are made "sane" (FrozenBN statistics
calibrated on the inputs, head weights scaled) so that the logits are in a normal range and the
detections are many, of several classes and with spread scores: the comparisons then have something
to compare, and the negative controls show that one changed config key breaks them.
"""

import copy
import math
from pathlib import Path

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import retinanet_plugin
from retinanet_plugin.checkpoint import convert_detectron2_retinanet_state_dict
from retinanet_plugin.layers import focal_loss_op_available
from retinanet_plugin.modeling import RetinaNetPlugin
from inference_checks import detection_differences as paired_differences  # helpers beside the tests
from sane_random_weights import make_weights_sane

PLUGIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "retinanet_R50.yaml"
DETECTRON2_CONFIG = "COCO-Detection/retinanet_R_50_FPN_1x.yaml"
TOLERANCE = 1e-4
# Folded frozen norms and channels-last convolutions round differently: the detections are the same
# (counts, classes), boxes and scores equal to float rounding through ~60 layers (measured on R50:
# 0.0074 px and 6.4e-5 folded and NCHW, 0.015 px and 7.4e-5 folded and channels-last). plugin_cfg
# runs the convolutions in Detectron2's memory format (NCHW) unless told otherwise.
UNFOLDED = ["MODEL.RETINANET_PLUGIN.FOLD_FROZEN_BN", "False"]
EXECUTION_MODES = {
    "as_detectron2": (UNFOLDED, TOLERANCE, TOLERANCE),
    # the defaults on the CPU: folded, channels-last activations at inference
    "defaults": (["MODEL.RETINANET_PLUGIN.MEMORY_FORMAT", "auto"], 0.05, 5e-4),
}
# name -> (MODEL.RESNETS.DEPTH, MODEL.RESNETS.RES2_OUT_CHANNELS)
DEPTHS = {"R50": (50, 256), "R18": (18, 64)}
GRADIENT_PARAMS = (
    "head.cls_score.weight",
    "head.cls_score.bias",
    "head.bbox_pred.weight",
    "head.cls_subnet.0.weight",
    "head.bbox_subnet.6.weight",
    "backbone.top_block.p6.weight",
    "backbone.fpn_lateral3.weight",
    "backbone.fpn_output5.weight",
    "backbone.bottom_up.res5.0.conv1.weight",
    "backbone.bottom_up.res3.0.conv1.weight",
)
IMAGE_SIZES = ((160, 224), (192, 160))  # (height, width) of the two images


# ----------------------------------------------------------------------------------------- builders
def detectron2_cfg(depth_name):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(DETECTRON2_CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = DEPTHS[depth_name]
    assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
    return cfg


def plugin_cfg(depth_name, focal_loss_impl="reference", overrides=()):
    cfg = retinanet_plugin.add_retinanet_plugin_config(get_cfg())
    cfg.merge_from_file(str(PLUGIN_CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = DEPTHS[depth_name]
    cfg.MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL = focal_loss_impl
    cfg.MODEL.RETINANET_PLUGIN.MEMORY_FORMAT = "contiguous"  # Detectron2's: same rounding
    cfg.merge_from_list(list(overrides))
    return cfg


def make_images():
    """Two smooth random images (values 0-255, CHW float) of different sizes, so padding is
    exercised."""
    generator = torch.Generator().manual_seed(1)
    images = []
    for height, width in IMAGE_SIZES:
        low = torch.rand(1, 3, height // 8, width // 8, generator=generator)
        images.append(
            torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear")[0] * 255.0
        )
    return images


def make_instances(image_size, boxes, classes):
    instances = Instances(image_size)
    instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return instances


def training_batch(step):
    """Image 0 has a few boxes (different ones at each step, so the foreground count changes); image
    1 none."""
    images = make_images()
    if step == 0:
        boxes, classes = [[10, 20, 90, 120], [100, 40, 210, 150], [50, 60, 80, 90]], [3, 17, 3]
    else:
        boxes = [[5, 5, 60, 40], [120, 10, 220, 158], [30, 70, 140, 150], [150, 100, 170, 130]]
        classes = [0, 79, 41, 17]
    return [
        {"image": images[0], "instances": make_instances(IMAGE_SIZES[0], boxes, classes)},
        {"image": images[1], "instances": make_instances(IMAGE_SIZES[1], [], [])},
    ]


def inference_batch():
    images = make_images()
    # The first image asks for a larger output resolution, so the rescaling of the boxes is compared
    # too.
    return [{"image": images[0], "height": 240, "width": 336}, {"image": images[1]}]


_DETECTRON2_MODELS = {}


def detectron2_model(depth_name):
    """A fresh copy of Detectron2's RetinaNet with sane random weights (built once per depth)."""
    if depth_name not in _DETECTRON2_MODELS:
        torch.manual_seed(0)
        model = build_model(detectron2_cfg(depth_name))
        assert type(model) is RetinaNet
        make_weights_sane(model, inference_batch(), torch.Generator().manual_seed(2))
        _DETECTRON2_MODELS[depth_name] = model
    return copy.deepcopy(_DETECTRON2_MODELS[depth_name])


def plugin_model_like(reference, cfg):
    """The plugin's model built from ``cfg``, with ``reference``'s weights copied through the
    converter."""
    model = build_model(cfg)
    assert type(model) is RetinaNetPlugin
    state_dict, report = convert_detectron2_retinanet_state_dict(reference.state_dict())
    assert report["dropped"] == {}
    model.load_state_dict(state_dict, strict=True)  # same names and shapes, nothing left out
    return model


# ----------------------------------------------------------------------------------------
# comparisons
def detection_differences(outputs_a, outputs_b, tie=TOLERANCE):
    """Max |box| and |score| differences of two models' outputs and how many detections were
    compared (``inference_checks.detection_differences``, scores within ``tie`` paired in either
    order: inf when they cannot be paired)."""
    return paired_differences(
        [o["instances"] for o in outputs_a], [o["instances"] for o in outputs_b], tie=tie
    )


def run_inference(model):
    model.eval()
    with torch.no_grad():
        return model(inference_batch())


def training_step(model, step, optimizer=None):
    """One forward (and, with an optimizer, backward + update) on ``training_batch(step)``.

    Returns (losses as floats, normaliser after the step, {param name: grad} or {})."""
    model.train()
    # Detectron2's focal loss is TorchScript; its profiling executor would spend seconds
    # re-optimising the graph on every new input shape. Plain interpretation runs the same ops,
    # fast.
    with EventStorage(), torch.jit.optimized_execution(False):
        losses = model(training_batch(step))
    grads = {}
    if optimizer is not None:
        optimizer.zero_grad()
        sum(losses.values()).backward()
        grads = {
            name: p.grad.detach().clone()
            for name, p in model.named_parameters()
            if name in GRADIENT_PARAMS
        }
        optimizer.step()
    # a python float in Detectron2, a buffer in the plugin
    normalizer = float(model.loss_normalizer)
    return {k: v.item() for k, v in losses.items()}, normalizer, grads


def max_abs_diff(a, b):
    return max(abs(a[k] - b[k]) for k in a) if set(a) == set(b) else math.inf


# ----------------------------------------------------------------------------------------------
# tests
@pytest.mark.parametrize(
    "depth_name, mode",
    [(depth, "as_detectron2") for depth in DEPTHS]
    + [("R50", mode) for mode in EXECUTION_MODES if mode != "as_detectron2"],
)
def test_detections_match_detectron2(depth_name, mode):
    overrides, box_tolerance, score_tolerance = EXECUTION_MODES[mode]
    reference = detectron2_model(depth_name)
    plugin = plugin_model_like(reference, plugin_cfg(depth_name, overrides=overrides))
    expected = run_inference(reference)
    actual = run_inference(plugin)

    # The weights give a meaningful comparison: many boxes per image, several classes, spread
    # scores.
    for output in expected:
        instances = output["instances"]
        assert len(instances) >= 50
        assert len(set(instances.pred_classes.tolist())) >= 5
        assert float(instances.scores.max() - instances.scores.min()) > 0.1
    diff = detection_differences(expected, actual, tie=score_tolerance)
    print(
        f"\n[{depth_name}, {mode}] detections compared: {diff['count']}, max |box diff| "
        f"{diff['boxes']:.3g} px, "
        f"max |score diff| {diff['scores']:.3g}"
    )
    assert diff["boxes"] <= box_tolerance and diff["scores"] <= score_tolerance, diff


@pytest.mark.parametrize("focal_loss_impl", ["reference", "op"])
@pytest.mark.parametrize("depth_name", list(DEPTHS))
def test_losses_gradients_and_normalizer_match_detectron2(depth_name, focal_loss_impl):
    if focal_loss_impl == "op":
        # Deliberately a failure, not a skip: the op is part of the plugin.
        assert focal_loss_op_available(), "retinanet_plugin._C (the focal loss op) is not built"
    reference = detectron2_model(depth_name)
    plugin = plugin_model_like(reference, plugin_cfg(depth_name, focal_loss_impl))
    optimizers = [
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3)
        for m in (reference, plugin)
    ]
    # Detectron2 creates it (at 100) on the first step
    assert not hasattr(reference, "loss_normalizer")

    normalizers = [100.0]
    # Step 0: forward, backward (gradients compared) and an SGD update; step 1: forward on the
    # updated weights with other boxes (losses and normaliser compared again).
    for step, with_update in ((0, True), (1, False)):
        optimizer_ref, optimizer_plugin = optimizers if with_update else (None, None)
        losses_ref, normalizer_ref, grads_ref = training_step(reference, step, optimizer_ref)
        losses_plugin, normalizer_plugin, grads_plugin = training_step(
            plugin, step, optimizer_plugin
        )
        print(
            f"\n[{depth_name}, {focal_loss_impl}, step {step}] losses {losses_ref}, "
            f"max |loss diff| {max_abs_diff(losses_ref, losses_plugin):.3g} "
            f"(cls {abs(losses_ref['loss_cls'] - losses_plugin['loss_cls']):.3g}, "
            f"box {abs(losses_ref['loss_box_reg'] - losses_plugin['loss_box_reg']):.3g}); "
            f"normaliser {normalizer_ref} vs {normalizer_plugin}"
        )
        assert losses_ref["loss_cls"] > 0 and losses_ref["loss_box_reg"] > 0
        assert max_abs_diff(losses_ref, losses_plugin) <= TOLERANCE
        assert abs(normalizer_ref - normalizer_plugin) <= TOLERANCE * normalizer_ref
        normalizers.append(normalizer_ref)
        if not with_update:
            continue
        assert set(grads_ref) == set(GRADIENT_PARAMS) == set(grads_plugin)
        grad_diff = max(
            float((grads_ref[k] - grads_plugin[k]).abs().max()) for k in GRADIENT_PARAMS
        )
        grad_scale = max(float(grads_ref[k].abs().max()) for k in GRADIENT_PARAMS)
        print(
            f"[{depth_name}, {focal_loss_impl}] max |grad diff| {grad_diff:.3g} (max |grad| "
            f"{grad_scale:.3g})"
        )
        for name in GRADIENT_PARAMS:
            assert grads_ref[name].abs().max() > 0, name
            torch.testing.assert_close(
                grads_plugin[name], grads_ref[name], atol=TOLERANCE, rtol=TOLERANCE, msg=name
            )
    # The two steps have different foreground counts: the normaliser moved at each step.
    assert normalizers[0] != normalizers[1] != normalizers[2]


@pytest.mark.parametrize("box_loss", ["giou", "diou", "ciou"])
def test_box_loss_variants_match_detectron2(box_loss):
    """MODEL.RETINANET.BBOX_REG_LOSS_TYPE: the plugin's sync-free GIoU and Detectron2's DIoU/CIoU
    losses give Detectron2's loss and gradients (its RetinaNet uses fvcore's GIoU and its own
    DIoU/CIoU)."""
    reference = detectron2_model("R18")
    reference.box_reg_loss_type = box_loss
    plugin = plugin_model_like(
        reference, plugin_cfg("R18", "op", ["MODEL.RETINANET.BBOX_REG_LOSS_TYPE", box_loss])
    )
    results = []
    for model in (reference, plugin):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        results.append(training_step(model, 0, optimizer))
    (losses_ref, _, grads_ref), (losses_plugin, _, grads_plugin) = results
    print(
        f"\n[{box_loss}] losses {losses_ref}, max |loss diff| "
        f"{max_abs_diff(losses_ref, losses_plugin):.3g}"
    )
    assert losses_ref["loss_box_reg"] > 0
    assert max_abs_diff(losses_ref, losses_plugin) <= TOLERANCE
    for name in ("head.bbox_pred.weight", "head.bbox_subnet.6.weight"):
        assert grads_ref[name].abs().max() > 0, name
        torch.testing.assert_close(
            grads_plugin[name], grads_ref[name], atol=TOLERANCE, rtol=TOLERANCE, msg=name
        )


# A changed key must break the parity that the tests above check: shows they can fail.
def _change_one_anchor_size(cfg):
    sizes = [list(level) for level in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
    sizes[0][0] += 4.0  # 32 -> 36 pixels on P3
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = sizes


def _merge(key, value):
    return lambda cfg: cfg.merge_from_list([key, value])


# name -> (what it changes in the plugin's config, the comparison that must then fail)
PERTURBATIONS = {
    "one anchor size": (_change_one_anchor_size, "detections"),
    "aspect ratio order": (
        _merge("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[2.0, 1.0, 0.5]]),
        "detections",
    ),
    "NMS threshold": (_merge("MODEL.RETINANET.NMS_THRESH_TEST", 0.55), "detections"),
    "IoU thresholds": (_merge("MODEL.RETINANET.IOU_THRESHOLDS", [0.4, 0.55]), "losses"),
    "focal loss gamma": (_merge("MODEL.RETINANET.FOCAL_LOSS_GAMMA", 1.5), "losses"),
    "box regression weights": (
        _merge("MODEL.RETINANET.BBOX_REG_WEIGHTS", (1.0, 1.0, 1.5, 1.5)),
        "losses",
    ),
}
_REFERENCE_OUTPUTS = {}


def reference_outputs(depth_name, kind):
    """Detectron2's detections on ``inference_batch()`` or losses on ``training_batch(0)``
    (cached)."""
    if (depth_name, kind) not in _REFERENCE_OUTPUTS:
        model = detectron2_model(depth_name)
        outputs = run_inference(model) if kind == "detections" else training_step(model, 0)[0]
        _REFERENCE_OUTPUTS[depth_name, kind] = outputs
    return _REFERENCE_OUTPUTS[depth_name, kind]


@pytest.mark.parametrize("perturbation", list(PERTURBATIONS))
def test_parity_breaks_when_one_config_key_differs(perturbation):
    depth_name = "R18"
    perturb, kind = PERTURBATIONS[perturbation]
    cfg = plugin_cfg(depth_name)
    perturb(cfg)
    plugin = plugin_model_like(detectron2_model(depth_name), cfg)
    expected = reference_outputs(depth_name, kind)
    if kind == "detections":
        diff = detection_differences(expected, run_inference(plugin))
        worst = max(diff["boxes"], diff["scores"])
    else:
        diff = training_step(plugin, 0)[0]
        worst = max_abs_diff(expected, diff)
    print(
        f"\n[{perturbation}] {kind}: {diff} vs Detectron2's "
        f"{expected if kind == 'losses' else '...'}"
    )
    assert worst > 100 * TOLERANCE


def test_p6p7_from_p5_builds_and_reads_p5():
    cfg = plugin_cfg("R18", overrides=["MODEL.RETINANET_PLUGIN.P6P7_INPUT", "p5"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    top_block = model.backbone.top_block
    assert top_block.in_feature == "p5"
    assert top_block.p6.weight.shape[1] == cfg.MODEL.FPN.OUT_CHANNELS  # not res5's 512 channels

    seen = {}
    hook = top_block.register_forward_pre_hook(
        lambda module, args: seen.setdefault("input", args[0])
    )
    images = model.preprocess_image(inference_batch())
    with torch.no_grad():
        features = model.backbone(images.tensor)
    hook.remove()
    assert torch.equal(seen["input"], features["p5"])

    padded_h, padded_w = images.tensor.shape[-2:]
    for level, stride in zip(("p3", "p4", "p5", "p6", "p7"), (8, 16, 32, 64, 128)):
        assert model.backbone.output_shape()[level].stride == stride
        expected_shape = (
            2,
            cfg.MODEL.FPN.OUT_CHANNELS,
            math.ceil(padded_h / stride),
            math.ceil(padded_w / stride),
        )
        assert features[level].shape == expected_shape
    with torch.no_grad():
        outputs = model(inference_batch())
    assert len(outputs) == 2
    losses, _, _ = training_step(model, 0)
    assert all(math.isfinite(v) for v in losses.values())
