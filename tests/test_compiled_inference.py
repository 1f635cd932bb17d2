"""``MODEL.RETINANET_PLUGIN.COMPILE``: the backbone and head ``torch.compile``d for eval mode.

Compiled with the real backend (Inductor, which generates and compiles C++ on the CPU): the
detections must equal eager ones to float rounding; a copy of the model must run its own weights;
training, tracing and the default stay eager. The speed is measured by
``benchmarks/bench_compile.py``, not here."""

import copy

import pytest
import torch
import torch._dynamo
from conftest import make_small_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from sane_random_weights import make_weights_sane  # a helper beside the tests
from inference_checks import (  # helpers beside the tests
    FirstLogits,
    assert_same_detections,
    eval_detections,
    sample_images,
    training_inputs,
)

from retinanet_plugin.modeling.execution import COMPILE_MODES, network_execution

COMPILE = "MODEL.RETINANET_PLUGIN.COMPILE"


def _model(mode, weights_from=None):
    cfg = make_small_cfg()
    cfg.merge_from_list([COMPILE, mode])
    model = build_model(cfg)
    if weights_from is None:
        torch.manual_seed(0)
        inputs = [{"image": image} for image in sample_images(0)]
        make_weights_sane(model, inputs, torch.Generator().manual_seed(2))
    else:
        model.load_state_dict(weights_from.state_dict())
    return model


def _compiled_frames():
    """How many frames dynamo has compiled in this process."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def eager_model():
    return _model("none")


@pytest.fixture(scope="module")
def compiled_model(eager_model):
    torch._dynamo.reset()
    return _model("default", weights_from=eager_model)


def test_compile_is_off_by_default_and_its_value_is_checked():
    cfg = make_small_cfg()
    assert cfg.MODEL.RETINANET_PLUGIN.COMPILE == "none"
    assert network_execution(cfg)["compile_mode"] is None
    assert build_model(cfg).compile_mode is None
    assert network_execution(cfg)["compile_freezing"] is True  # used only with a mode
    for mode in COMPILE_MODES[1:]:
        cfg.MODEL.RETINANET_PLUGIN.COMPILE = mode
        assert network_execution(cfg)["compile_mode"] == mode
    cfg.MODEL.RETINANET_PLUGIN.COMPILE = "True"
    with pytest.raises(ValueError, match="MODEL.RETINANET_PLUGIN.COMPILE must be one of"):
        build_model(cfg)


def test_process_wide_freezing_is_warned_about(caplog):
    """Inductor's freezing set for the whole process reaches dynamo, which may then bake the
    weights in: building a compiled function says so."""
    import logging

    import torch._inductor.config as inductor_config

    from retinanet_plugin.modeling.execution import compiled

    with caplog.at_level(logging.WARNING), inductor_config.patch(freezing=True):
        compiled(lambda x: x + 1, "default", True)  # compiles lazily: nothing runs here
    assert "freezing is on for the whole process" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        compiled(lambda x: x + 1, "default", True)
    assert "freezing" not in caplog.text


def test_eager_models_compile_nothing(eager_model):
    before = _compiled_frames()
    inputs = [{"image": image} for image in sample_images(3)]
    assert sum(len(d) for d in eval_detections(eager_model, inputs)) > 0
    assert _compiled_frames() == before


@pytest.mark.slow
def test_compiled_detections_equal_eager_ones(eager_model, compiled_model):
    """The first call compiles; it gives eager mode's detections to float rounding (Inductor fuses
    and reorders the float32 sums), and a second call of the same size compiles nothing new. (A
    batch of another size compiles once more, with dynamic sizes: about 35 s more on 2 cores, so
    it is left to torch's own tests.)"""
    before = _compiled_frames()
    inputs = [{"image": image} for image in sample_images(0)]
    assert_same_detections(
        eval_detections(eager_model, inputs), eval_detections(compiled_model, inputs), 1e-2, 1e-4
    )
    compiled = _compiled_frames()
    assert compiled > before  # the compiled function ran, not the eager one
    assert_same_detections(
        eval_detections(eager_model, inputs), eval_detections(compiled_model, inputs), 1e-2, 1e-4
    )
    assert _compiled_frames() == compiled


@pytest.mark.slow
def test_a_copy_of_a_compiled_model_runs_its_own_weights(eager_model, compiled_model):
    """The compiled function takes the model as an argument: a deep copy with other weights
    detects with those weights, and the original is unchanged."""
    inputs = [{"image": image} for image in sample_images(0)]
    expected_original = eval_detections(eager_model, inputs)
    changed_eager = copy.deepcopy(eager_model)
    changed_compiled = copy.deepcopy(compiled_model)
    for model in (changed_eager, changed_compiled):
        with torch.no_grad():
            for conv in model.head.cls_subnet:
                if isinstance(conv, torch.nn.Conv2d):
                    conv.weight.mul_(1.2)
    expected_changed = eval_detections(changed_eager, inputs)
    assert not torch.allclose(expected_changed[0].scores[:5], expected_original[0].scores[:5])
    assert_same_detections(expected_changed, eval_detections(changed_compiled, inputs), 1e-2, 1e-4)
    assert_same_detections(expected_original, eval_detections(compiled_model, inputs), 1e-2, 1e-4)


@pytest.mark.slow
def test_compiled_detections_follow_weights_loaded_in_place(eager_model, compiled_model):
    """With COMPILE_FREEZING (the default) the weights stay inputs of the compiled code, not
    constants baked into it: after the model has compiled, a checkpoint loaded into it in place
    (convolution weights and the frozen norms' buffers) changes its detections to those of the
    eager model with that checkpoint, as a final evaluation after training needs."""
    assert compiled_model.compile_mode == "default"
    inputs = [{"image": image} for image in sample_images(0)]
    eval_detections(compiled_model, inputs)  # compiled with the current weights
    original = {k: v.clone() for k, v in compiled_model.state_dict().items()}
    changed = dict(original)
    for name, value in original.items():
        if name.startswith("head.cls_subnet") and name.endswith("weight"):
            changed[name] = value * 1.2
        if name == "backbone.bottom_up.stem.conv1.norm.weight":  # a FrozenBatchNorm2d buffer
            changed[name] = value * 0.8
    assert any(not torch.equal(changed[k], v) for k, v in original.items() if "norm" in k)
    reference = copy.deepcopy(eager_model)
    reference.load_state_dict(changed)
    expected = eval_detections(reference, inputs)
    try:
        compiled_model.load_state_dict(changed)
        actual = eval_detections(compiled_model, inputs)
    finally:
        compiled_model.load_state_dict(original)
    assert not torch.allclose(
        expected[0].scores[:5], eval_detections(eager_model, inputs)[0].scores[:5]
    )
    assert_same_detections(expected, actual, 1e-2, 1e-4)


def test_training_and_tracing_run_eager(eager_model):
    """A model built with COMPILE trains and traces as the eager one: the same losses, bit for bit,
    and a traced graph equal to eager logits, without compiling anything."""
    model = _model("default", weights_from=eager_model)
    before = _compiled_frames()
    losses = []
    for m in (eager_model, model):
        m.train()
        with EventStorage():
            losses.append(m(training_inputs()))
    assert all(torch.equal(losses[0][k], losses[1][k]) for k in losses[0])
    model.eval()
    eager_model.eval()
    images = model.preprocess_image([{"image": image} for image in sample_images(0)]).tensor
    with torch.no_grad():
        traced = torch.jit.trace(FirstLogits(model), images)
        torch.testing.assert_close(traced(images), eager_model.dense_predictions(images)[1][0])
    assert _compiled_frames() == before
