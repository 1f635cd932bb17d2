"""Anchors, head, anchor labelling, losses and inference of the plugin's RetinaNet on small
inputs."""

import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator, build_anchor_generator
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from retinanet_plugin.modeling import build_retinanet_plugin_head

LEVELS = [ShapeSpec(channels=256, stride=s) for s in (8, 16, 32, 64, 128)]
IMPLS = ["op", "reference"]


def test_anchor_counts_sizes_and_ratios(small_cfg):
    gen = build_anchor_generator(small_cfg(), LEVELS)
    assert gen.num_cell_anchors == [9] * 5
    features = [torch.zeros(1, 1, max(1, 512 // s), max(1, 640 // s)) for s in (8, 16, 32, 64, 128)]
    anchors = gen(features)
    for level, (boxes, f, base) in enumerate(zip(anchors, features, [32, 64, 128, 256, 512])):
        h, w = f.shape[-2:]
        assert len(boxes) == h * w * 9
        cell = boxes.tensor[:9]  # the 9 anchors of location (0, 0)
        widths, heights = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
        sizes = torch.sqrt(widths * heights).view(3, 3)  # [scale, ratio]
        expected = torch.tensor([base * 2 ** (i / 3) for i in range(3)])
        torch.testing.assert_close(sizes, expected.view(3, 1).expand(3, 3), rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(
            (heights / widths).view(3, 3), torch.tensor([[0.5, 1.0, 2.0]] * 3), rtol=1e-5, atol=1e-5
        )
        centres = (boxes.tensor[:, :2] + boxes.tensor[:, 2:]) / 2
        stride = 8 * 2**level
        # second location: next column
        torch.testing.assert_close(centres[9 * 1], torch.tensor([stride * 1.0, 0.0]))
        if w > 1 or h > 1:
            # the 9 anchors of a location share its centre
            assert centres.view(-1, 9, 2).std(dim=1).max() < 1e-4


def test_anchors_equal_detectron2_default_generator(small_cfg):
    cfg = small_cfg(**{"MODEL.ANCHOR_GENERATOR.OFFSET": 0.5})
    ours = build_anchor_generator(cfg, LEVELS)
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
    theirs = build_anchor_generator(cfg, LEVELS)
    assert isinstance(theirs, DefaultAnchorGenerator)
    features = [torch.zeros(2, 1, 13 // (2**i) + 1, 21 // (2**i) + 1) for i in range(5)]
    for a, b in zip(ours(features), theirs(features)):
        torch.testing.assert_close(a.tensor, b.tensor)


def test_head_shapes_bias_and_init(small_cfg):
    cfg = small_cfg(num_classes=7)
    head = build_retinanet_plugin_head(cfg, LEVELS)
    features = [torch.randn(2, 256, 40 // 2**i, 24 // 2**i + 1) for i in range(5)]
    logits, deltas = head(features)
    for f, lg, dl in zip(features, logits, deltas):
        assert lg.shape == (2, 9 * 7, *f.shape[-2:])
        assert dl.shape == (2, 9 * 4, *f.shape[-2:])
    assert torch.allclose(
        head.cls_score.bias, torch.full_like(head.cls_score.bias, -math.log(99.0))
    )
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 * 4 + 2
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert abs(weights.std().item() - 0.01) < 1e-3 and abs(weights.mean().item()) < 1e-3
    assert all(torch.all(c.bias == 0) for c in convs if c is not head.cls_score)
    # shared across levels: the same module weights serve every level, not shared between the two
    # subnets
    assert head.cls_subnet[0].weight.data_ptr() != head.bbox_subnet[0].weight.data_ptr()


def test_head_group_norm_and_num_convs(small_cfg):
    head = build_retinanet_plugin_head(
        small_cfg(**{"MODEL.RETINANET.NORM": "GN", "MODEL.RETINANET.NUM_CONVS": 2}), LEVELS
    )
    kinds = [type(m).__name__ for m in head.cls_subnet]
    assert kinds == ["Conv2d", "GroupNorm", "ReLU", "Conv2d", "GroupNorm", "ReLU"]


def _instances(boxes, classes, size):
    return Instances(
        size,
        gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4)),
        gt_classes=torch.tensor(classes, dtype=torch.int64),
    )


def _image(h=192, w=256, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def test_label_anchors_thresholds_and_low_quality_option(small_cfg):
    model = build_model(small_cfg(**{"MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL": "reference"}))
    anchors = torch.tensor(
        [[0.0, 0, 10, 10], [0, 0, 10, 6], [0, 0, 10, 4.4], [0, 0, 10, 3], [50, 50, 60, 60]]
    )
    gt = _instances([[0, 0, 10, 10], [49, 49, 61, 70]], [3, 1], (100, 100))
    labels, boxes = model.label_anchors(anchors, [gt])
    # IoUs with gt 0: 1.0, 0.6, 0.44, 0.3 -> fg, fg, ignore, bg; anchor 4 (IoU 0.397 with gt 1,
    # background by threshold) is gt 1's best anchor: a low-quality match
    assert labels.tolist() == [[3, 3, -1, 5, 1]]
    torch.testing.assert_close(boxes[0, 4], torch.tensor([49.0, 49, 61, 70]))
    model.anchor_matcher.allow_low_quality_matches = False
    labels, _ = model.label_anchors(anchors, [gt])
    assert labels.tolist() == [[3, 3, -1, 5, 5]]


@pytest.mark.parametrize("impl", IMPLS)
def test_training_step_on_empty_images(small_cfg, impl):
    model = build_model(small_cfg(**{"MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL": impl}))
    batch = [
        {"image": _image(seed=i), "instances": _instances([], [], (192, 256))} for i in range(2)
    ]
    with EventStorage():
        losses = model(batch)
        sum(losses.values()).backward()
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    assert losses["loss_box_reg"].item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("impl", IMPLS)
def test_training_step_with_hundreds_of_instances(small_cfg, impl):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(400, 2, generator=g) * torch.tensor([220.0, 160.0])
    wh = 4 + torch.rand(400, 2, generator=g) * 60
    boxes = torch.cat([xy, (xy + wh).clamp(max=torch.tensor([256.0, 192.0]))], dim=1)
    classes = torch.randint(0, 5, (400,), generator=g)
    model = build_model(small_cfg(**{"MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL": impl}))
    batch = [
        {
            "image": _image(seed=1),
            "instances": _instances(boxes.tolist(), classes.tolist(), (192, 256)),
        },
        {"image": _image(seed=2), "instances": _instances([], [], (192, 256))},
    ]
    with EventStorage() as storage:
        losses = model(batch)
        sum(losses.values()).backward()
        num_pos = storage.history("num_pos_anchors").latest()
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] > 0 and num_pos > 400 / 2


@pytest.mark.parametrize("mode", ["ema", "batch"])
def test_loss_normalizer(small_cfg, mode):
    model = build_model(
        small_cfg(
            **{
                "MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL": "reference",
                "MODEL.RETINANET_PLUGIN.LOSS_NORMALIZER": mode,
            }
        )
    )
    got = [model._update_normalizer(torch.tensor(n)).item() for n in (40, 0, 10)]
    if mode == "batch":
        assert got == [40.0, 1.0, 10.0]
    else:
        expected, value = [], 100.0
        for n in (40, 0, 10):
            value = 0.9 * value + 0.1 * max(n, 1)
            expected.append(value)
        assert got == pytest.approx(expected, rel=1e-6)
        assert model.state_dict()["loss_normalizer"].item() == pytest.approx(expected[-1], rel=1e-6)


def test_inference_caps_thresholds_and_clips(small_cfg):
    cfg = small_cfg(
        **{
            "MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL": "reference",
            "TEST.DETECTIONS_PER_IMAGE": 17,
            "MODEL.RETINANET.SCORE_THRESH_TEST": 0.2,
        }
    )
    model = build_model(cfg).eval()
    # scores 0.5 everywhere, boxes = anchors
    for layer in (
        model.head.cls_score,
        model.head.bbox_pred,
    ):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    with torch.no_grad():
        out = model(
            [
                {"image": _image(160, 224), "height": 320, "width": 448},
                {"image": _image(96, 128, seed=3)},
            ]
        )
    first, second = out[0]["instances"], out[1]["instances"]
    assert first.image_size == (320, 448) and second.image_size == (96, 128)
    for inst, (h, w) in ((first, (320, 448)), (second, (96, 128))):
        assert 0 < len(inst) <= 17
        assert torch.all(inst.scores > 0.2)
        b = inst.pred_boxes.tensor
        assert (
            torch.all(b[:, 0] >= 0)
            and torch.all(b[:, 2] <= w)
            and torch.all(b[:, 1] >= 0)
            and torch.all(b[:, 3] <= h)
        )
        assert torch.all(inst.scores[:-1] >= inst.scores[1:])
        assert inst.pred_classes.min() >= 0 and inst.pred_classes.max() < 5


def test_inference_leaves_the_predictions_untouched_and_both_selections_agree(small_cfg):
    """Post-processing reads the head's outputs without changing them, and the eager selection
    (threshold, then top-k) keeps the same detections as the export one (top-k, then threshold)."""
    from retinanet_plugin.modeling.detection_selection import (
        DetectionSettings,
        select_detections,
        select_detections_padded,
    )

    torch.manual_seed(0)
    model = build_model(small_cfg(**{"MODEL.RETINANET.TOPK_CANDIDATES_TEST": 50})).eval()
    with torch.no_grad():
        images = model.preprocess_image(
            [{"image": _image(160, 224)}, {"image": _image(160, 224, seed=3)}]
        )
        anchors, logits, deltas = model.dense_predictions(images.tensor)
        # Many pairs above the threshold (top-k truncates), few equal scores.
        logits = [level + 1.0 for level in logits]
        before = [level.clone() for level in logits]
        kwargs = dict(
            box2box_transform=model.box2box_transform,
            settings=DetectionSettings(
                score_thresh=0.05, topk_candidates=50, nms_thresh=0.5, max_detections_per_image=100
            ),
        )
        eager = select_detections(anchors, logits, deltas, images.image_sizes, **kwargs)
        boxes, scores, classes, counts = select_detections_padded(anchors, logits, deltas, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, logits))

    def rows(b, s, c):  # detections as sorted rows: equal scores may come in either order
        return sorted(zip(s.tolist(), c.tolist(), b.tolist()), key=lambda r: (-r[0], r[1], r[2]))

    for i, instances in enumerate(eager):
        n = len(instances)
        assert 20 < n == int(counts[i])
        expected = rows(instances.pred_boxes.tensor, instances.scores, instances.pred_classes)
        actual = rows(boxes[i, :n], scores[i, :n], classes[i, :n])
        assert [r[1] for r in actual] == [r[1] for r in expected]
        # scores to float32's last bit: the eager selection rounds its sigmoid from float64
        torch.testing.assert_close(
            torch.tensor([r[0] for r in actual]),
            torch.tensor([r[0] for r in expected]),
            atol=2**-23,
            rtol=0,
        )
        torch.testing.assert_close(
            torch.tensor([r[2] for r in actual]), torch.tensor([r[2] for r in expected])
        )


@pytest.mark.parametrize("score_thresh", [-0.5, 0.0, 1e-6, 0.05, 0.5, 0.999, 1.0])
def test_selection_thresholds_on_the_logits_as_on_the_scores(score_thresh):
    """The eager selection compares logits with a bound before any sigmoid: it keeps exactly the
    pairs whose float32 sigmoid exceeds the threshold, all images at once, with thresholds at and
    beyond the ends of (0, 1)."""
    from detectron2.modeling.box_regression import Box2BoxTransform

    from retinanet_plugin.modeling.detection_selection import DetectionSettings, select_detections

    generator = torch.Generator().manual_seed(0)
    sizes = (300, 40, 7)  # anchors per level
    # logits spread over both tails, some exactly 0 (score 0.5), images with different counts
    logits = [torch.randn(3, r, 4, generator=generator) * 8 for r in sizes]
    logits[0][0, :10] = 0.0
    logits[1][2] = -30.0
    logits[2][1, 0] = -math.inf  # score 0: kept by a negative threshold only
    deltas = [torch.zeros(3, r, 4) for r in sizes]
    anchors = [  # spaced apart so that NMS at 1.0 removes nothing
        Boxes(torch.arange(r, dtype=torch.float32)[:, None] * 10 + torch.tensor([0, 0, 5, 5.0]))
        for r in sizes
    ]
    settings = DetectionSettings(score_thresh, 10**6, 1.0, 10**6)
    results = select_detections(
        anchors, logits, deltas, [(64, 64)] * 3, Box2BoxTransform((1.0,) * 4), settings
    )
    for i, instances in enumerate(results):
        scores = torch.cat([level[i].flatten().sigmoid() for level in logits])
        expected = scores[scores > score_thresh].sort(descending=True).values
        assert len(instances) == len(expected)
        torch.testing.assert_close(instances.scores, expected, atol=2**-23, rtol=0)


def test_head_batch_norm_keeps_statistics_per_level(small_cfg):
    head = build_retinanet_plugin_head(small_cfg(**{"MODEL.RETINANET.NORM": "BN"}), LEVELS)
    norm = head.cls_subnet[1]
    assert type(norm).__name__ == "CycleBatchNormList" and len(norm) == 5
    head.train()
    head([torch.randn(2, 256, 8, 8) * (i + 1) for i in range(5)])  # level i has std i + 1
    variances = [bn.running_var.mean().item() for bn in norm]
    # one step, momentum 0.1
    assert variances == sorted(variances) and variances[-1] - variances[0] > 0.3


def test_anchor_grid_cache_is_bounded(small_cfg):
    gen = build_anchor_generator(small_cfg(), LEVELS)
    for size in range(8, 8 + 3 * gen.GRID_CACHE_SIZE):
        gen([torch.zeros(1, 1, size, size)] * 5)
    assert len(gen._grid_cache) == gen.GRID_CACHE_SIZE


@pytest.mark.parametrize("loss_type", ["giou", "diou", "ciou"])
def test_iou_box_losses_match_detectron2_dense_loss(small_cfg, loss_type):
    """The plugin's foreground-only box loss equals Detectron2's _dense_box_regression_loss for each
    loss type."""
    from detectron2.modeling.box_regression import _dense_box_regression_loss
    from retinanet_plugin.modeling.losses import LabelledAnchors

    model = build_model(
        small_cfg(
            **{
                "MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL": "reference",
                "MODEL.RETINANET.BBOX_REG_LOSS_TYPE": loss_type,
            }
        )
    )
    g = torch.Generator().manual_seed(3)
    anchors = [
        Boxes(torch.tensor([[0.0, 0, 20, 20], [10, 10, 50, 40], [30, 5, 60, 70]])),
        Boxes(torch.tensor([[0.0, 0, 64, 64]])),
    ]
    deltas = [torch.randn(2, 3, 4, generator=g) * 0.2, torch.randn(2, 1, 4, generator=g) * 0.2]
    gt_boxes = (
        torch.tensor([[2.0, 1, 22, 18], [12, 8, 47, 44], [28, 6, 64, 66], [4, 2, 60, 58]])
        .expand(2, 4, 4)
        .clone()
    )
    foreground = torch.tensor([[True, False, True, True], [False, True, True, False]])
    flat_anchors = Boxes.cat(anchors).tensor.repeat(2, 1)  # [N * R, 4], image-major like the deltas
    flat_deltas = torch.cat(deltas, dim=1).reshape(-1, 4)
    labelled = LabelledAnchors(
        anchors=flat_anchors,
        deltas=flat_deltas,
        labels=torch.zeros(8, dtype=torch.int64),
        gt_boxes=gt_boxes.reshape(-1, 4),
        foreground=foreground.reshape(-1),
        box2box_transform=model.box2box_transform,
    )
    ours = model.box_regression_loss(labelled)
    theirs = _dense_box_regression_loss(
        anchors,
        model.box2box_transform,
        deltas,
        list(gt_boxes),
        foreground,
        box_reg_loss_type=loss_type,
    )
    assert ours.item() > 0
    torch.testing.assert_close(ours, theirs)
