"""Scripting (``torch.jit.script`` through Detectron2's ``scripting_with_instances``), as
Detectron2's deployment guide does for its RetinaNet: the scripted model gives the eager model's
detections on a batch of two images of different sizes, for R50-FPN and the synthetic config (R18,
GN head), built with the op and with the reference loss.

Weights are sane random ones (``make_weights_sane``), so each image gets tens of detections through
thresholding, NMS and the top-100 cut. The scripted model runs the same kernels as eager mode:
detections are compared exactly.
"""

import io

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess

from retinanet_plugin import model_zoo
from retinanet_plugin.data.synthetic_shapes import SyntheticShapesParams, render_synthetic_image
from retinanet_plugin.export import script_model, scripted_detections
from retinanet_plugin.layers import focal_loss_op_available
from sane_random_weights import make_weights_sane  # a helper beside the tests


def _inputs():
    """Two synthetic val images of different sizes (BGR, 0-255), with their output size."""
    params = SyntheticShapesParams()
    images = [render_synthetic_image(params, "val", i)[0] for i in (0, 1)]
    assert images[0].shape != images[1].shape
    return [
        {
            "image": torch.as_tensor(im.astype("float32").transpose(2, 0, 1)),
            "height": im.shape[0],
            "width": im.shape[1],
        }
        for im in images
    ]


def _model(config: str, impl: str):
    cfg = model_zoo.get_config(config)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL = impl
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    make_weights_sane(model, _inputs(), torch.Generator().manual_seed(2))
    # class logits spread and lowered, as in test_export: tens of detections per image
    with torch.no_grad():
        model.head.cls_score.weight.mul_(2.0)
        model.head.cls_score.bias.add_(-0.5)
    return model


@pytest.mark.parametrize("impl", ["op", "reference"])
@pytest.mark.parametrize("config", ["retinanet_R50.yaml", "synthetic/retinanet_R18_synthetic.yaml"])
def test_scripted_model_gives_the_eager_detections(config, impl):
    if impl == "op" and not focal_loss_op_available():
        pytest.skip("retinanet_plugin._C is not built")
    model = _model(config, impl)
    inputs = _inputs()
    scripted = script_model(model)
    buffer = io.BytesIO()  # it also survives a save / load round trip, as a deployment would use it
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        eager = [r["instances"] for r in model(inputs)]
    for outputs in (scripted_detections(scripted, inputs), scripted_detections(loaded, inputs)):
        for x, raw, expected in zip(inputs, outputs, eager):
            actual = detector_postprocess(raw, x["height"], x["width"])
            assert len(expected) > 10  # real work for NMS
            assert torch.equal(actual.pred_classes, expected.pred_classes)
            assert torch.equal(actual.scores, expected.scores)
            assert torch.equal(actual.pred_boxes.tensor, expected.pred_boxes.tensor)


def test_scripting_needs_eval_mode():
    model = _model("synthetic/retinanet_R18_synthetic.yaml", "reference").train()
    with pytest.raises(ValueError, match="eval mode"):
        script_model(model)


def test_the_op_scripts_through_torch_ops():
    """The compiled op is callable from TorchScript (``torch.ops.retinanet_plugin``), forward and
    backward, with the eager op's values."""
    if not focal_loss_op_available():
        pytest.skip("retinanet_plugin._C is not built")

    @torch.jit.script
    def scripted_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.ops.retinanet_plugin.sigmoid_focal_loss(
            logits, labels, None, 2.0, 0.25, "sum", 1.0
        )

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 5, generator=g, requires_grad=True)
    labels = torch.randint(-1, 6, (37,), generator=g)
    expected = torch.ops.retinanet_plugin.sigmoid_focal_loss(
        logits, labels, None, 2.0, 0.25, "sum", 1.0
    )
    (expected_grad,) = torch.autograd.grad(expected, logits)
    actual = scripted_loss(logits, labels)
    (actual_grad,) = torch.autograd.grad(actual, logits)
    assert expected.item() > 0
    assert torch.equal(actual, expected) and torch.equal(actual_grad, expected_grad)
