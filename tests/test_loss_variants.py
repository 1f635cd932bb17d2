"""Loss options: quality focal loss (MODEL.RETINANET_PLUGIN.CLASSIFICATION_LOSS) and the sync-free
GIoU loss."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage
from fvcore.nn import giou_loss as fvcore_giou_loss

from retinanet_plugin.layers import quality_focal_loss_reference
from retinanet_plugin.layers.giou_loss import aligned_box_iou, giou_loss
from test_anchor_labeling import _batch  # a helper beside the tests

QFL = {"MODEL.RETINANET_PLUGIN.CLASSIFICATION_LOSS": "quality_focal"}


def _random_box_pairs(n, seed):
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, 2, 2, generator=g) * 50
    boxes = torch.cat([lo, lo + 1 + torch.rand(n, 2, 2, generator=g) * 80], dim=-1)
    return boxes[:, 0].double(), boxes[:, 1].double()  # many overlapping pairs, many disjoint ones


def test_aligned_iou_and_giou_equal_detectron2_and_fvcore():
    a, b = _random_box_pairs(500, 0)
    expected_iou = pairwise_iou(Boxes(a), Boxes(b)).diagonal()
    assert (expected_iou == 0).sum() > 50 and (expected_iou > 0.2).sum() > 30
    # Boxes is fp32
    torch.testing.assert_close(aligned_box_iou(a, b), expected_iou.double(), atol=1e-6, rtol=1e-6)
    a.requires_grad_(True)
    ours = giou_loss(a, b, reduction="none")
    ours.sum().backward()
    grad_ours, a.grad = a.grad.clone(), None
    theirs = fvcore_giou_loss(a, b, reduction="none")
    theirs.sum().backward()
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad_ours, a.grad, atol=1e-12, rtol=1e-10)
    assert giou_loss(a, b, reduction="sum").item() == pytest.approx(ours.sum().item())
    with pytest.raises(ValueError, match="reduction"):
        giou_loss(a, b, reduction="max")


def _qfl_training_losses(model):
    batch = _batch()
    with EventStorage():
        images = model.preprocess_image(batch)
        anchors, logits, deltas = model.dense_predictions(images.tensor)
        losses = model.training_losses(anchors, logits, deltas, [x["instances"] for x in batch])
    return losses, logits, deltas, images, anchors


@pytest.mark.parametrize("impl", ["op", "reference"])
def test_quality_focal_loss_uses_the_iou_of_the_predicted_box(small_cfg, impl):
    torch.manual_seed(0)
    model = build_model(small_cfg(**QFL, **{"MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL": impl}))
    losses, logits, deltas, images, level_anchors = _qfl_training_losses(model)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())

    # The same loss, computed independently: labels from the matcher, IoU from Detectron2's
    # pairwise_iou.
    anchors = Boxes.cat(level_anchors).tensor
    labels, matched = model.label_anchors(anchors, [x["instances"] for x in _batch()])
    deltas = torch.cat(deltas, dim=1).detach()
    quality = torch.stack(
        [
            pairwise_iou(
                Boxes(model.box2box_transform.apply_deltas(d, anchors)), Boxes(m)
            ).diagonal()
            for d, m in zip(deltas, matched)
        ]
    )
    foreground = (labels >= 0) & (labels < model.num_classes)
    # a real soft target, not a constant
    assert foreground.sum() > 5 and quality[foreground].std() > 0
    expected = quality_focal_loss_reference(
        torch.cat(logits, dim=1).reshape(-1, model.num_classes).detach(),
        labels.reshape(-1),
        quality.reshape(-1),
        beta=2.0,
        reduction="sum",
        normalizer=model.loss_normalizer,
    )
    torch.testing.assert_close(losses["loss_cls"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_quality_focal_loss_op_and_reference_give_the_same_gradients(small_cfg):
    grads = []
    for impl in ("op", "reference"):
        torch.manual_seed(0)
        model = build_model(small_cfg(**QFL, **{"MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL": impl}))
        losses, *_ = _qfl_training_losses(model)
        losses["loss_cls"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]["head.cls_score.weight"].abs().max() > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("CLASSIFICATION_LOSS", "varifocal", "CLASSIFICATION_LOSS"),
        ("QUALITY_FOCAL_LOSS_BETA", -1.0, "BETA"),
    ],
)
def test_bad_loss_options_are_named(small_cfg, key, value, message):
    with pytest.raises(ValueError, match=message):
        build_model(small_cfg(**{f"MODEL.RETINANET_PLUGIN.{key}": value}))
