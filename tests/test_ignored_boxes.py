"""Ignored boxes (crowd regions, Pascal VOC "difficult" objects, objects mostly cut off by a crop)
are neither objects nor background: the anchors they would match are left out of the classification
loss (label -1).

Detectron2's ``DatasetMapper`` drops crowd boxes, which makes the anchors on them background; the
controls below show that this is what ``CROWD_BOXES "drop"`` (and a box simply left out) gives, so
the "ignore" checks can fail.
"""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances, pairwise_iou
from detectron2.utils.events import EventStorage
from PIL import Image

from conftest import make_small_cfg
from retinanet_plugin.data.training_instances import training_instances
from retinanet_plugin.data.checked_mapper import CheckedDatasetMapper
from test_anchor_labeling import HostSyncRecorder, RecordingLogger

HW = (192, 256)
OBJECT = [10.0, 20.0, 90.0, 120.0]
IGNORED = [120.0, 40.0, 200.0, 150.0]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(make_small_cfg(**{"MODEL.RETINANET.NUM_CLASSES": 3}))
    m._metrics = RecordingLogger()
    return m


@pytest.fixture(scope="module")
def anchors(model):
    features = model.backbone(torch.zeros(1, 3, *HW))
    return Boxes.cat(model.anchor_generator([features[f] for f in model.head_in_features])).tensor


def _instances(boxes, classes, ignore=None):
    inst = Instances(
        HW, gt_boxes=Boxes(torch.tensor(boxes).reshape(-1, 4)), gt_classes=torch.tensor(classes)
    )
    if ignore is not None:
        inst.gt_ignore = torch.tensor(ignore)
    return inst


def test_anchors_an_ignored_box_would_match_are_ignored_not_background(model, anchors):
    K = model.num_classes
    (ignored_labels,), _ = model.label_anchors(
        anchors, [_instances([OBJECT, IGNORED], [0, 2], [False, True])]
    )
    (dropped_labels,), _ = model.label_anchors(anchors, [_instances([OBJECT], [0])])
    (as_object_labels,), _ = model.label_anchors(anchors, [_instances([OBJECT, IGNORED], [0, 2])])
    iou_ignored = pairwise_iou(Boxes(torch.tensor([IGNORED])), Boxes(anchors))[0]
    near = iou_ignored >= 0.4
    assert near.sum() >= 5
    # control: dropped (Detectron2's crowd handling), these anchors are background; as an object,
    # foreground / -1
    assert (dropped_labels[near] == K).all()
    assert (as_object_labels[near] != K).all() and (as_object_labels == 2).sum() > 0
    # ignored: every anchor the box would make foreground or ignored is ignored, never background
    # nor class 2
    assert (ignored_labels[as_object_labels == 2] == -1).all()
    assert (ignored_labels[near] == -1).all()
    assert not (ignored_labels == 2).any()
    # everything else is labelled as if the ignored box were not there
    assert torch.equal(
        ignored_labels[~near & (as_object_labels != 2)],
        dropped_labels[~near & (as_object_labels != 2)],
    )
    assert (ignored_labels == 0).sum() == (dropped_labels == 0).sum() > 0


def test_an_ignored_box_does_not_take_foreground_anchors_from_an_object(model, anchors):
    overlapping = [20.0, 25.0, 100.0, 125.0]  # IoU ~0.8 with OBJECT
    (labels,), boxes = model.label_anchors(
        anchors, [_instances([OBJECT, overlapping], [0, 1], [False, True])]
    )
    (alone,), _ = model.label_anchors(anchors, [_instances([OBJECT], [0])])
    assert torch.equal(labels == 0, alone == 0) and (alone == 0).sum() > 0
    assert torch.equal(
        boxes[0][labels == 0], torch.tensor(OBJECT).expand(int((labels == 0).sum()), 4)
    )


def test_an_image_with_only_ignored_boxes_has_no_foreground(model, anchors):
    (labels,), _ = model.label_anchors(anchors, [_instances([IGNORED], [1], [True])])
    assert not ((labels >= 0) & (labels < model.num_classes)).any()
    assert (labels == -1).sum() > 0 and (labels == model.num_classes).sum() > 0


def test_training_with_ignored_boxes_needs_no_host_sync(model):
    g = torch.Generator().manual_seed(1)
    batch = [
        {
            "image": torch.randint(0, 255, (3, *HW), generator=g).float(),
            "instances": _instances([OBJECT, IGNORED], [0, 2], [False, True]),
        },
        {
            "image": torch.randint(0, 255, (3, *HW), generator=g).float(),
            "instances": _instances([OBJECT], [1]),
        },
    ]
    images = model.preprocess_image(batch)
    with EventStorage():
        features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
        predictions = model.head(features)
        recorder = HostSyncRecorder()
        with recorder:
            losses = model.forward_training(
                images, features, predictions, [x["instances"] for x in batch]
            )
    assert recorder.calls == [] and all(torch.isfinite(v) for v in losses.values())


def _write(tmp_path, size=(60, 80)):
    path = tmp_path / "im.png"
    Image.fromarray(np.full((*size, 3), 90, dtype=np.uint8)).save(path)
    return path


def _record(path, annotations, size=(60, 80)):
    return {
        "file_name": str(path),
        "image_id": 1,
        "height": size[0],
        "width": size[1],
        "annotations": annotations,
    }


def _ann(bbox, category, crowd=0):
    return {"bbox": bbox, "bbox_mode": BoxMode.XYWH_ABS, "category_id": category, "iscrowd": crowd}


def test_the_mapper_keeps_crowd_boxes_as_ignored_and_drop_is_detectron2s(tmp_path):
    path = _write(tmp_path)
    record = _record(path, [_ann([5, 5, 20, 20], 0), _ann([40, 10, 30, 40], 1, crowd=1)])
    kept = CheckedDatasetMapper(is_train=True, augmentations=[], image_format="BGR")(record)[
        "instances"
    ]
    assert kept.gt_boxes.tensor.tolist() == [[5, 5, 25, 25], [40, 10, 70, 50]]
    assert kept.gt_ignore.tolist() == [False, True] and kept.gt_classes.tolist() == [0, 1]
    dropped = CheckedDatasetMapper(
        is_train=True, augmentations=[], image_format="BGR", crowd_boxes="drop"
    )(record)
    detectron2 = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")(record)
    for out in (dropped, detectron2):
        assert out["instances"].gt_boxes.tensor.tolist() == [[5, 5, 25, 25]]
    assert not dropped["instances"].has("gt_ignore")  # no field without an ignored box
    with pytest.raises(ValueError, match="CROWD_BOXES must be one of"):
        CheckedDatasetMapper(
            is_train=True, augmentations=[], image_format="BGR", crowd_boxes="skip"
        )(record)


def test_crowd_boxes_policy_comes_from_the_config(tmp_path):
    cfg = make_small_cfg(
        **{
            "MODEL.RETINANET_PLUGIN.CROWD_BOXES": "drop",
            "MODEL.RETINANET_PLUGIN.CROP_MIN_VISIBLE_FRACTION": 0.3,
            "DATASETS.EXIF_ORIENTATION": "ignore",
        }
    )
    mapper = CheckedDatasetMapper(cfg, is_train=True)
    assert (mapper.crowd_boxes, mapper.min_visible_fraction, mapper.exif_orientation) == (
        "drop",
        0.3,
        "ignore",
    )
    default = CheckedDatasetMapper(make_small_cfg(), is_train=True)
    assert (default.crowd_boxes, default.min_visible_fraction, default.exif_orientation) == (
        "ignore",
        0.5,
        "auto",
    )


def test_boxes_mostly_cut_off_by_a_crop_are_ignored():
    # x 20..60, y 10..40 of an 80 x 60 image
    crop = T.TransformList([T.CropTransform(20, 10, 40, 30)])
    annotations = [
        _ann([25, 15, 10, 10], 0),  # inside: kept as is (shifted)
        _ann([50, 15, 20, 10], 1),  # half inside (10 of 20 px wide): visible 0.5, kept (>= 0.5)
        _ann([0, 15, 26, 10], 2),  # 6 of 26 px inside: visible 0.23, ignored
        _ann([0, 0, 10, 8], 0),  # entirely outside: dropped
    ]
    inst = training_instances(annotations, crop, (30, 40), min_visible_fraction=0.5)
    assert inst.gt_boxes.tensor.tolist() == [[5, 5, 15, 15], [30, 5, 40, 15], [0, 5, 6, 15]]
    assert inst.gt_ignore.tolist() == [False, False, True] and inst.gt_classes.tolist() == [0, 1, 2]
    keep_all = training_instances(annotations, crop, (30, 40), min_visible_fraction=0.0)
    assert len(keep_all) == 3 and not keep_all.has("gt_ignore")
