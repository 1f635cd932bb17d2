"""How the network runs at inference: frozen batch norms folded into their convolutions
(``MODEL.RETINANET_PLUGIN.FOLD_FROZEN_BN``) and channels-last activations
(``MODEL.RETINANET_PLUGIN.MEMORY_FORMAT``). Both must leave the parameters, checkpoints and
training as they are, and change the detections only by float rounding; the comparisons with
Detectron2's own RetinaNet are in ``test_parity.py``."""

import pytest
import torch
from conftest import make_small_cfg
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import pairwise_iou
from detectron2.utils.events import EventStorage
from inference_checks import (  # helpers beside the tests
    FirstLogits,
    assert_same_detections,
    eval_detections,
    sample_images,
    training_inputs,
)
from sane_random_weights import make_weights_sane  # a helper beside the tests

from retinanet_plugin.env import cpu_has_native_bfloat16
from retinanet_plugin.modeling.execution import network_execution
from retinanet_plugin.modeling.frozen_bn_folding import FoldedFrozenBNConv2d

FOLD = "MODEL.RETINANET_PLUGIN.FOLD_FROZEN_BN"
MEMORY_FORMAT = "MODEL.RETINANET_PLUGIN.MEMORY_FORMAT"


def _inference_inputs(seed=0):
    return [{"image": image} for image in sample_images(seed)]


def _model(fold, memory_format, weights_from=None, overrides=()):
    cfg = make_small_cfg()
    cfg.merge_from_list([FOLD, str(fold), MEMORY_FORMAT, memory_format, *overrides])
    torch.manual_seed(0)  # the initial weights do not depend on the tests that ran before
    model = build_model(cfg)
    if weights_from is None:
        make_weights_sane(model, _inference_inputs(), torch.Generator().manual_seed(2))
    else:
        model.load_state_dict(weights_from.state_dict())
    return model


@pytest.fixture(scope="module")
def reference_model():
    """R18-FPN, sane random weights, Detectron2's execution: norms unfolded, NCHW."""
    return _model(False, "contiguous")


def test_folding_replaces_every_conv_with_a_frozen_norm_and_keeps_the_state_dict(reference_model):
    folded = _model(True, "contiguous", weights_from=reference_model)
    resnet = folded.backbone.bottom_up
    convs = [m for m in resnet.modules() if isinstance(m, Conv2d)]
    assert convs and all(type(m) is FoldedFrozenBNConv2d for m in convs)
    assert all(isinstance(m.norm, FrozenBatchNorm2d) for m in convs)
    # the FPN's convolutions have no norm: left as they are
    assert type(folded.backbone.fpn_lateral3) is Conv2d
    expected, actual = reference_model.state_dict(), folded.state_dict()
    assert list(actual) == list(expected)
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
    assert sorted(n for n, _ in folded.named_parameters()) == sorted(
        n for n, _ in reference_model.named_parameters()
    )


def test_training_is_unchanged_by_folding_and_the_default_memory_format(reference_model):
    """Training mode runs conv, then norm, and "auto" keeps NCHW: the same losses and gradients,
    bit for bit."""
    results = []
    for fold, memory_format in ((False, "contiguous"), (True, "auto")):
        model = _model(fold, memory_format, weights_from=reference_model).train()
        with EventStorage():
            losses = model(training_inputs())
        sum(losses.values()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((losses, grads))
    (losses_a, grads_a), (losses_b, grads_b) = results
    assert all(torch.equal(losses_a[k], losses_b[k]) for k in losses_a)
    assert set(grads_a) == set(grads_b) and grads_a
    assert all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)


def test_mixed_precision_training_runs_channels_last_where_inference_does(reference_model):
    """In training, "auto" makes the activations channels-last on the CPU under autocast only
    (float32 training stays NCHW), "contiguous" never; both layouts give the same bfloat16 losses
    and gradients to bfloat16's precision (cosine > 0.99 over all of them, > 0.95 per tensor)."""
    bf16 = {}
    for memory_format in ("auto", "contiguous"):
        model = _model(False, memory_format, weights_from=reference_model).train()
        assert model.channels_last == (memory_format == "auto")
        seen = []
        model.head.register_forward_pre_hook(lambda m, args: seen.append(args[0][0]))
        for amp in (False, True):
            model.zero_grad()
            with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                losses = model(training_inputs())
            sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        bf16[memory_format] = (losses, grads)
        nhwc = [
            f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous()
            for f in seen
        ]
        assert nhwc == [False, memory_format == "auto"], memory_format
    (losses_a, grads_a), (losses_b, grads_b) = bf16["auto"], bf16["contiguous"]
    for k in losses_a:
        torch.testing.assert_close(losses_a[k], losses_b[k], rtol=3e-2, atol=1e-3)
    assert set(grads_a) == set(grads_b) and grads_a

    def cosine(a, b):
        return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), 0)

    names = sorted(grads_a)
    everything = [torch.cat([grads[n].flatten() for n in names]) for grads in (grads_a, grads_b)]
    assert cosine(*everything) > 0.99
    largest = max(g.norm() for g in grads_b.values())
    for name in names:
        # per tensor, bfloat16's rounding in two layouts moves a small gradient more (a layer whose
        # channels the layout mixed up would be far below)
        if grads_b[name].norm() > 1e-4 * largest:  # not the ~0 gradients a norm cancels
            assert cosine(grads_a[name], grads_b[name]) > 0.95, name


def test_folded_detections_equal_unfolded_ones_to_rounding(reference_model):
    """Folding alone (NCHW); folded and channels-last, against Detectron2: test_parity.py."""
    memory_format = "contiguous"
    model = _model(True, memory_format, weights_from=reference_model)
    inputs = _inference_inputs()
    count = assert_same_detections(
        eval_detections(reference_model, inputs), eval_detections(model, inputs), 1e-2, 1e-4
    )
    print(f"\n{memory_format}: {count} detections equal to 1e-2 px and 1e-4 in score")


def test_folded_weights_follow_the_parameters(reference_model):
    """The fold follows the tensors it comes from: a loaded checkpoint, an optimiser step, a
    parameter replaced."""
    model = _model(True, "contiguous", weights_from=reference_model)
    inputs = _inference_inputs()
    eval_detections(model, inputs)
    other = _model(False, "contiguous")
    with torch.no_grad():
        for p in other.backbone.bottom_up.parameters():
            p.mul_(0.9)
        for name, buffer in other.backbone.bottom_up.named_buffers():
            if name.endswith("running_mean"):
                buffer.add_(0.05)
    model.load_state_dict(other.state_dict())  # in-place copies
    assert_same_detections(
        eval_detections(other, inputs), eval_detections(model, inputs), 1e-2, 1e-4
    )

    # an optimiser step in training, then inference again
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with EventStorage():
        losses = model(training_inputs())
    sum(losses.values()).backward()
    optimizer.step()
    unfolded = _model(False, "contiguous", weights_from=model)
    assert_same_detections(
        eval_detections(unfolded, inputs), eval_detections(model, inputs), 1e-2, 1e-4
    )

    # a parameter replaced by a new tensor (not an in-place update)
    conv = model.backbone.bottom_up.res4[0].conv2
    conv.weight = torch.nn.Parameter(conv.weight.detach() * 1.1)
    unfolded = _model(False, "contiguous", weights_from=model)
    assert_same_detections(
        eval_detections(unfolded, inputs), eval_detections(model, inputs), 1e-2, 1e-4
    )


def _conv_weights(model):
    return {n: p for n, p in model.named_parameters() if p.dim() == 4 and p.shape[-2:] != (1, 1)}


def test_eval_mode_holds_the_conv_weights_channels_last_and_train_mode_gives_them_back(
    reference_model,
):
    """With channels-last inference the 3x3 convolution weights are channels-last in eval mode
    (``modeling/weight_layout.py``): the same parameter objects and values, the same detections
    after a checkpoint is loaded in eval mode; back in train mode they are NCHW again and training
    is bit for bit that of a model never put in eval mode."""
    model = _model(True, "auto", weights_from=reference_model)
    weights, values = _conv_weights(model), {k: v.clone() for k, v in model.state_dict().items()}
    assert len(weights) > 20 and all(p.is_contiguous() for p in weights.values())
    model.eval().eval()  # a second eval() changes nothing more
    assert _conv_weights(model) == weights  # the same Parameter objects
    for name, p in weights.items():
        assert p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous(), name
    assert all(torch.equal(v, values[k]) for k, v in model.state_dict().items())

    inputs = _inference_inputs()
    other = _model(False, "contiguous", weights_from=reference_model)
    with torch.no_grad():  # other weights than the model's
        for p in (*other.head.parameters(), *other.backbone.bottom_up.res4.parameters()):
            p.mul_(1.2)
    model.load_state_dict(other.state_dict())  # in eval mode, into channels-last weights
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights.values())
    expected = eval_detections(other, inputs)
    assert_same_detections(expected, eval_detections(model, inputs), 1e-2, 1e-4)
    assert not all(
        len(a) == len(b) and torch.allclose(a.scores, b.scores)
        for a, b in zip(expected, eval_detections(reference_model, inputs))
    )  # the loaded weights changed the detections: the comparison above has teeth

    model.train()
    assert all(p.is_contiguous() for p in weights.values())
    never_evaluated = _model(True, "auto", weights_from=other).train()
    results = []
    for m in (model, never_evaluated):
        with EventStorage():
            losses = m(training_inputs())
        sum(losses.values()).backward()
        results.append((losses, {n: p.grad for n, p in m.named_parameters()}))
    (losses_a, grads_a), (losses_b, grads_b) = results
    assert all(torch.equal(losses_a[k], losses_b[k]) for k in losses_a)
    trained = [k for k in grads_b if grads_b[k] is not None]
    assert [k for k in grads_a if grads_a[k] is not None] == trained and set(weights) & set(trained)
    assert all(torch.equal(grads_a[k], grads_b[k]) for k in trained)
    assert all(grads_a[k].stride() == grads_b[k].stride() for k in trained)


def test_mode_switches_under_inference_mode_leave_trainable_weights(reference_model):
    """eval() and train() called inside ``torch.inference_mode`` (Detectron2's
    ``inference_context`` within it) still give the model normal tensors, so that training (and
    autograd in eval mode) works afterwards."""
    model = _model(True, "auto", weights_from=reference_model)
    with torch.inference_mode():
        model.eval()
        eval_detections(model, _inference_inputs())
        model.train()
    assert not any(p.is_inference() for p in model.parameters())
    with EventStorage():
        losses = model(training_inputs())
    sum(losses.values()).backward()
    with torch.inference_mode():
        model.eval()
    assert not any(p.is_inference() for p in model.parameters())


def test_weights_keep_their_layout_where_they_were_channels_last_or_the_model_is_nchw(
    reference_model,
):
    """Weights made channels-last before training (``wrap_for_distributed`` under mixed precision)
    stay so through eval and train; a model with ``MEMORY_FORMAT: contiguous`` keeps NCHW
    weights in eval mode."""
    model = _model(True, "auto", weights_from=reference_model).to(memory_format=torch.channels_last)
    weights = _conv_weights(model)
    assert all(not p.is_contiguous() for p in weights.values())
    model.eval().train()
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights.values())
    nchw = _model(True, "contiguous", weights_from=reference_model).eval()
    assert all(p.is_contiguous() for p in _conv_weights(nchw).values())


def test_folded_inference_is_differentiable(reference_model):
    """In eval mode with autograd on, the fold is part of the graph: gradients reach the conv
    weights through it."""
    model = _model(True, "contiguous", weights_from=reference_model).eval()
    images = model.preprocess_image(_inference_inputs()).tensor
    _, logits, _ = model.dense_predictions(images)
    sum(level.sum() for level in logits).backward()
    conv = model.backbone.bottom_up.res3[0].conv1  # res2 and the stem are frozen
    assert type(conv) is FoldedFrozenBNConv2d
    assert conv.weight.grad is not None and conv.weight.grad.abs().max() > 0


def test_auto_memory_format_is_channels_last_at_inference_on_the_cpu_only():
    cfg = make_small_cfg()
    assert cfg.MODEL.RETINANET_PLUGIN.MEMORY_FORMAT == "auto"
    model = build_model(cfg)
    assert model.channels_last
    seen = []
    model.backbone.bottom_up.stem.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    images = model.preprocess_image(_inference_inputs()).tensor
    model.eval().dense_predictions(images)
    model.train().dense_predictions(images)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert seen[1].is_contiguous()
    cfg.MODEL.DEVICE = "cuda"  # the choice is made from the config
    assert not network_execution(cfg)["channels_last"]
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RETINANET_PLUGIN.MEMORY_FORMAT = "contiguous"
    assert not network_execution(cfg)["channels_last"]
    for key in ("MEMORY_FORMAT", "INFERENCE_DTYPE"):
        bad = make_small_cfg()
        bad.MODEL.RETINANET_PLUGIN[key] = "nhwc"
        with pytest.raises(ValueError, match=f"MODEL.RETINANET_PLUGIN.{key} must be one of"):
            build_model(bad)


def test_auto_inference_dtype_is_bfloat16_where_the_cpu_has_the_instructions():
    cfg = make_small_cfg()
    assert cfg.MODEL.RETINANET_PLUGIN.INFERENCE_DTYPE == "float32"
    assert not network_execution(cfg)["bfloat16_inference"]
    cfg.MODEL.RETINANET_PLUGIN.INFERENCE_DTYPE = "auto"
    assert network_execution(cfg)["bfloat16_inference"] == cpu_has_native_bfloat16()
    cfg.MODEL.DEVICE = "cuda"
    assert not network_execution(cfg)["bfloat16_inference"]


def test_bfloat16_inference_stays_near_float32(reference_model):
    """bfloat16 keeps about 3 significant digits, lost a little in each of ~30 layers: the head's
    outputs (float32 again) stay within a few percent of their spread of the float32 ones (measured
    here: mean |difference| 2-4% of the standard deviation, at most 16%), and so most confident
    detections are found again. Random weights make near-ties common (NMS may then keep a
    neighbour), so the detection check asks for most, not all."""
    model = _model(
        True,
        "auto",
        weights_from=reference_model,
        overrides=["MODEL.RETINANET_PLUGIN.INFERENCE_DTYPE", "bfloat16"],
    ).eval()
    assert model.bfloat16_inference
    reference_model.eval()
    images = reference_model.preprocess_image(_inference_inputs()).tensor
    with torch.no_grad():
        _, logits, deltas = reference_model.dense_predictions(images)
        _, logits_bf16, deltas_bf16 = model.dense_predictions(images)
    for expected, actual in zip(logits + deltas, logits_bf16 + deltas_bf16):
        assert actual.dtype == torch.float32
        spread = float(expected.std())
        assert float((actual - expected).abs().mean()) <= 0.06 * spread
        assert float((actual - expected).abs().max()) <= 0.4 * spread

    inputs = _inference_inputs()
    found, confident_count = 0, 0
    for a, b in zip(eval_detections(reference_model, inputs), eval_detections(model, inputs)):
        assert b.scores.dtype == torch.float32 and b.pred_boxes.tensor.dtype == torch.float32
        confident = a[a.scores >= 0.1]
        confident_count += len(confident)
        if len(confident) and len(b):
            iou = pairwise_iou(confident.pred_boxes, b.pred_boxes)
            same_class = confident.pred_classes[:, None] == b.pred_classes[None, :]
            found += int(((iou >= 0.5) & same_class).any(dim=1).sum())
    assert confident_count >= 5 and found >= 0.8 * confident_count, (found, confident_count)


def test_traced_models_run_float32_even_with_bfloat16_inference(reference_model):
    """Exports trace the model: with INFERENCE_DTYPE bfloat16 the traced graph is float32 (what
    ONNX Runtime and TorchScript get), while eager inference is bfloat16."""
    bf16 = ["MODEL.RETINANET_PLUGIN.INFERENCE_DTYPE", "bfloat16"]
    model = _model(True, "auto", weights_from=reference_model, overrides=bf16).eval()
    float32 = _model(True, "auto", weights_from=reference_model).eval()
    images = model.preprocess_image(_inference_inputs()).tensor
    with torch.no_grad():
        traced = torch.jit.trace(FirstLogits(model), images)
        expected = float32.dense_predictions(images)[1][0]
        torch.testing.assert_close(traced(images), expected)
        assert not torch.allclose(model.dense_predictions(images)[1][0], expected)
