"""How test-time augmentation merges its views' detections (``retinanet_plugin.modeling.tta_merge``,
``MODEL.RETINANET_PLUGIN.TTA``): class-aware NMS alone by default; box voting, the consensus score
and class-agnostic NMS when configured."""

import pytest
import torch
from conftest import make_small_cfg
from detectron2.layers import batched_nms
from tta_helpers import SQUARE, BrightBoxDetector, square_image

from retinanet_plugin.modeling import RetinaNetPluginWithTTA
from retinanet_plugin.modeling.tta_merge import ViewMerge


def _merge(**options):
    return ViewMerge(nms_thresh=0.5, max_detections=100, **options)


def _random_detections(count, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=g) * 80
    wh = torch.rand(count, 2, generator=g) * 30 + 5
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(count, generator=g) * 0.9 + 0.05
    return boxes, scores, torch.randint(classes, (count,), generator=g)


def test_the_defaults_are_class_aware_nms_best_first():
    boxes, scores, classes = _random_detections(300)
    merged = ViewMerge(nms_thresh=0.5, max_detections=40)(boxes, scores, classes, view_count=4)
    keep = batched_nms(boxes, scores, classes, 0.5)[:40]
    for actual, expected in zip(merged, (boxes[keep], scores[keep], classes[keep])):
        assert torch.equal(actual, expected)


def test_a_kept_box_becomes_the_score_weighted_mean_of_its_voters():
    boxes = torch.tensor(
        [
            [10.0, 10.0, 50.0, 50.0],  # kept (best of class 0)
            [12.0, 10.0, 52.0, 50.0],  # class 0, IoU 0.9: votes
            [16.0, 10.0, 56.0, 50.0],  # class 0, IoU 0.74 < 0.8: suppressed, does not vote
            [10.0, 12.0, 50.0, 52.0],  # class 1, IoU 0.9: kept for class 1, votes only there
        ]
    )
    scores = torch.tensor([0.9, 0.3, 0.6, 0.5])
    classes = torch.tensor([0, 0, 0, 1])
    out_boxes, out_scores, out_classes = _merge(voting_iou=0.8)(boxes, scores, classes, 3)
    assert out_classes.tolist() == [0, 1]
    expected = (0.9 * boxes[0] + 0.3 * boxes[1]) / 1.2
    torch.testing.assert_close(out_boxes[0], expected)
    torch.testing.assert_close(out_boxes[1], boxes[3])
    # the best score is kept
    assert out_scores.tolist() == pytest.approx([0.9, 0.5])


def test_the_consensus_score_halves_a_box_only_one_view_finds():
    # object A seen by all four views at 0.8; object B by one view at 0.8
    a = torch.tensor([[10.0, 10.0, 50.0, 50.0]]).repeat(4, 1) + torch.arange(4.0)[:, None] * 0.2
    b = torch.tensor([[100.0, 100.0, 130.0, 140.0]])
    boxes = torch.cat([a, b])
    scores = torch.full((5,), 0.8)
    classes = torch.zeros(5, dtype=torch.long)
    merge = _merge(voting_iou=0.7, score="best_and_consensus")
    out_boxes, out_scores, _ = merge(boxes, scores, classes, view_count=4)
    assert out_scores.tolist() == pytest.approx([0.8, (0.8 + 0.8 / 4) / 2])
    torch.testing.assert_close(out_boxes[0], a.mean(dim=0))
    torch.testing.assert_close(out_boxes[1], b[0])
    # more voters than views (two boxes of one view over it): the consensus stays at most 1
    many = _merge(voting_iou=0.7, score="best_and_consensus")(a, torch.ones(4), classes[:4], 2)
    assert many[1].tolist() == pytest.approx([1.0])


def test_the_consensus_score_reorders_the_boxes():
    """B, one view's at 0.9, falls behind A, every view's at 0.7: (0.9 + 0.9 / 4) / 2 < 0.7."""
    a = torch.tensor([[10.0, 10.0, 50.0, 50.0]]).repeat(4, 1)
    b = torch.tensor([[100.0, 100.0, 130.0, 140.0]])
    scores = torch.tensor([0.7, 0.7, 0.7, 0.7, 0.9])
    merge = _merge(voting_iou=0.7, score="best_and_consensus")
    out_boxes, out_scores, _ = merge(torch.cat([a, b]), scores, torch.zeros(5, dtype=torch.long), 4)
    assert out_scores.tolist() == pytest.approx([0.7, 0.5625])
    torch.testing.assert_close(out_boxes, torch.cat([a[:1], b]))


def test_an_empty_box_keeps_itself_and_an_empty_input_merges_to_nothing():
    boxes = torch.tensor([[20.0, 20.0, 20.0, 40.0], [60.0, 60.0, 90.0, 90.0]])  # the first: no area
    scores = torch.tensor([0.6, 0.4])
    merge = _merge(voting_iou=0.7, score="best_and_consensus", class_agnostic_nms_thresh=0.7)
    out_boxes, out_scores, _ = merge(boxes, scores, torch.tensor([0, 0]), view_count=2)
    torch.testing.assert_close(out_boxes, boxes)
    assert out_scores.tolist() == pytest.approx([(0.6 + 0.3) / 2, (0.4 + 0.2) / 2])
    empty = merge(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 5)
    assert [tuple(t.shape) for t in empty] == [(0, 4), (0,), (0,)]


def test_class_agnostic_nms_keeps_one_label_per_object():
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0], [11.0, 10.0, 51.0, 50.0], [60.0, 0, 90, 30]])
    scores = torch.tensor([0.6, 0.7, 0.5])
    classes = torch.tensor([0, 1, 0])
    _, off_scores, off_classes = _merge()(boxes, scores, classes, 1)
    assert off_classes.tolist() == [1, 0, 0] and len(off_scores) == 3
    _, on_scores, on_classes = _merge(class_agnostic_nms_thresh=0.7)(boxes, scores, classes, 1)
    assert on_classes.tolist() == [1, 0]
    assert on_scores.tolist() == pytest.approx([0.7, 0.5])


def test_the_merge_keeps_the_best_max_detections_of_the_unlimited_merge():
    boxes, scores, classes = _random_detections(400, seed=3)
    options = dict(voting_iou=0.6, score="best_and_consensus", class_agnostic_nms_thresh=0.8)
    limited = ViewMerge(nms_thresh=0.5, max_detections=25, **options)(boxes, scores, classes, 10)
    whole = ViewMerge(nms_thresh=0.5, max_detections=10**6, **options)(boxes, scores, classes, 10)
    assert len(whole[1]) > 25
    for part, all_of_them in zip(limited, whole):
        assert torch.equal(part, all_of_them[:25])
    assert torch.all(whole[1][:-1] >= whole[1][1:])


def test_voting_in_slices_gives_the_same_boxes():
    """``max_pairs`` bounds the [kept, all] IoU slices voting holds; the result does not depend
    on it."""
    boxes, scores, classes = _random_detections(300, seed=5)
    options = dict(nms_thresh=0.5, max_detections=100, voting_iou=0.5, score="best_and_consensus")
    whole = ViewMerge(**options)(boxes, scores, classes, 6)
    sliced = ViewMerge(max_pairs=700, **options)(boxes, scores, classes, 6)
    for a, b in zip(whole, sliced):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_bad_options_are_refused_naming_the_key():
    with pytest.raises(ValueError, match="TTA.SCORE must be one of"):
        _merge(score="mean")
    with pytest.raises(ValueError, match="needs box voting"):
        _merge(score="best_and_consensus")
    with pytest.raises(ValueError, match="VOTING_IOU must be in"):
        _merge(voting_iou=1.5)
    with pytest.raises(ValueError, match="CLASS_AGNOSTIC_NMS_THRESH must be in"):
        _merge(class_agnostic_nms_thresh=-0.1)
    with pytest.raises(ValueError, match="view_count must be at least 1"):
        _merge()(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0)


def test_train_net_stops_on_a_bad_merge_value_before_training(monkeypatch, tmp_path):
    """The trainer builds its augmented detector with its hooks: a bad value stops it at once."""
    from retinanet_plugin.engine import RetinaNetPluginTrainer

    monkeypatch.setattr(
        RetinaNetPluginTrainer, "build_train_loader", classmethod(lambda c, cfg: [])
    )
    cfg = make_small_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)  # its writers open their files there
    cfg.TEST.AUG.ENABLED = True
    cfg.MODEL.RETINANET_PLUGIN.TTA.SCORE = "mean"
    with pytest.raises(ValueError, match="MODEL.RETINANET_PLUGIN.TTA.SCORE must be one of"):
        RetinaNetPluginTrainer(cfg)


def test_a_plain_detectron2_config_gets_the_default_merge():
    from detectron2.config import get_cfg

    tta = RetinaNetPluginWithTTA(get_cfg(), BrightBoxDetector())
    assert (tta.merge.voting_iou, tta.merge.consensus_score) == (0.0, False)
    assert tta.merge.class_agnostic_nms_thresh == 1.0


def test_the_config_keys_reach_the_augmented_detector():
    """Two scales and their mirror images of one bright box (scored 0.06 at the small scale, 0.12
    at the large one): voted into one box on the square, scored the mean of the best score and the
    views' mean score."""
    cfg = make_small_cfg()
    cfg.TEST.AUG.MIN_SIZES = (60, 120)
    cfg.TEST.AUG.MAX_SIZE = 1000
    cfg.TEST.AUG.FLIP = True
    cfg.MODEL.RETINANET_PLUGIN.TTA.VOTING_IOU = 0.7
    cfg.MODEL.RETINANET_PLUGIN.TTA.SCORE = "best_and_consensus"
    tta = RetinaNetPluginWithTTA(cfg, BrightBoxDetector())
    image = torch.from_numpy(square_image()).permute(2, 0, 1)
    (output,) = tta([{"image": image, "height": 120, "width": 180}])
    instances = output["instances"]
    assert len(instances) == 1
    assert instances.scores.item() == pytest.approx((0.12 + (0.06 + 0.12) / 2) / 2)
    expected = torch.tensor([[2.0 * c for c in SQUARE]])
    torch.testing.assert_close(instances.pred_boxes.tensor, expected, atol=2.0, rtol=0)
