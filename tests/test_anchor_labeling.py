"""Chunked anchor labelling equals Detectron2's Matcher, holds bounded memory, and training runs
without host syncs."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage
from torch.utils._python_dispatch import TorchDispatchMode

from retinanet_plugin.modeling.anchor_labeling import match_anchors

IMAGE_HW = (800, 1333)


def _random_boxes(n, generator, max_wh=400.0):
    h, w = IMAGE_HW
    xy = torch.rand(n, 2, generator=generator) * torch.tensor([w - 8.0, h - 8.0])
    wh = 4 + torch.rand(n, 2, generator=generator) * max_wh
    return torch.cat([xy, torch.minimum(xy + wh, torch.tensor([float(w), float(h)]))], dim=1)


def _anchor_grid(stride=32, sizes=(32.0, 64.0, 128.0, 256.0), ratios=(0.5, 1.0, 2.0)):
    """[R, 4] anchors tiling the image (a few thousand), with exact duplicates of some boxes'
    shapes."""
    h, w = IMAGE_HW
    ys, xs = torch.meshgrid(
        torch.arange(0, h, stride, dtype=torch.float32),
        torch.arange(0, w, stride, dtype=torch.float32),
        indexing="ij",
    )
    centres = torch.stack([xs.flatten(), ys.flatten()], dim=1)
    cells = []
    for size in sizes:
        for ratio in ratios:
            half = torch.tensor([size / ratio**0.5, size * ratio**0.5]) / 2
            cells.append(torch.cat([centres - half, centres + half], dim=1))
    return torch.cat(cells)


@pytest.mark.parametrize("sync_free", [True, False])
@pytest.mark.parametrize("low_quality", [True, False])
@pytest.mark.parametrize("num_gt", [1, 7, 500])
@pytest.mark.parametrize("anchors_per_block", [997, 1 << 20])  # several uneven blocks; one block
def test_match_anchors_equals_detectron2_matcher(num_gt, anchors_per_block, low_quality, sync_free):
    g = torch.Generator().manual_seed(num_gt)
    anchors = _anchor_grid()
    chunk_elements = anchors_per_block * num_gt
    gt = _random_boxes(num_gt, g)
    gt[0] = anchors[
        123
    ]  # an exact match (IoU 1) and, below, a duplicated box: ties in the low-quality rule
    if num_gt > 2:
        gt[1] = gt[2]
    matcher = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=low_quality)
    expected_idxs, expected_labels = matcher(pairwise_iou(Boxes(gt), Boxes(anchors)))
    matched_idxs, match_labels = match_anchors(
        gt, anchors, matcher, chunk_elements=chunk_elements, sync_free=sync_free
    )
    assert torch.equal(match_labels, expected_labels)
    assert torch.equal(matched_idxs, expected_idxs)
    assert set(match_labels.unique().tolist()) == ({-1, 0, 1} if num_gt > 1 else {0, 1})


@pytest.mark.parametrize("sync_free", [True, False])
def test_a_low_quality_tie_across_blocks_promotes_both_anchors(sync_free):
    """A box whose best IoU (below the background threshold) is shared by two identical anchors in
    different blocks: the low-quality rule makes both foreground, as Matcher does."""
    anchors = _anchor_grid()
    reference = anchors[123]
    centre, half = (reference[:2] + reference[2:]) / 2, (reference[2:] - reference[:2]) / 2
    gt = torch.stack([torch.cat([centre - 0.5 * half, centre + 0.5 * half])])  # IoU 0.25 with it
    best = pairwise_iou(Boxes(gt), Boxes(anchors))[0]
    j = int(best.argmax())
    anchors[-5] = anchors[j]  # the same anchor again, in the last block
    assert float(best[j]) < 0.4  # only the low-quality rule can make these foreground
    matcher = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)
    _, expected = matcher(pairwise_iou(Boxes(gt), Boxes(anchors)))
    _, labels = match_anchors(gt, anchors, matcher, chunk_elements=997, sync_free=sync_free)
    assert expected[j] == 1 and expected[-5] == 1
    assert torch.equal(labels, expected)


@pytest.mark.parametrize("chunk_elements", [1 << 22, 2 * 997])  # one block; several
def test_match_anchors_low_quality_ignores_boxes_that_overlap_nothing(chunk_elements):
    anchors = _anchor_grid()
    # the second: off the grid
    gt = torch.tensor([[100.0, 100.0, 300.0, 260.0], [5000.0, 5000.0, 5010.0, 5010.0]])
    matcher = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)
    _, labels = match_anchors(gt, anchors, matcher, chunk_elements=chunk_elements)
    _, without_far_box = match_anchors(gt[:1], anchors, matcher, chunk_elements=chunk_elements)
    assert torch.equal(labels, without_far_box)
    _, detectron2_labels = matcher(pairwise_iou(Boxes(gt), Boxes(anchors)))
    assert (detectron2_labels == 1).sum() > 0.9 * len(anchors)  # what the Matcher does instead


def test_low_quality_rule_over_blocks_syncs_only_where_asked():
    """Several blocks: the sync-free form (CUDA's default) reads nothing on the host and computes
    every IoU twice; the CPU's default recomputes only the IoUs of the boxes whose maximum lies in
    a block (it reads which with ``tolist``), with the same labels."""
    g = torch.Generator().manual_seed(5)
    anchors, gt = _anchor_grid(), _random_boxes(200, g)
    matcher = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)
    computed = {}
    labels = {}
    for sync_free in (True, False):
        recorder, counter = HostSyncRecorder(), IouCounter()
        with recorder, counter:
            labels[sync_free] = match_anchors(
                gt, anchors, matcher, chunk_elements=200 * 512, sync_free=sync_free
            )[1]
        computed[sync_free] = counter.divisions
        if sync_free:
            assert recorder.calls == []
    assert torch.equal(labels[True], labels[False])
    # the first pass computes 200 x R IoUs; the second all of them again, or a small part
    first_pass = 200 * len(anchors)
    assert computed[True] == 2 * first_pass
    assert first_pass < computed[False] < 1.1 * first_pass


class IouCounter(TorchDispatchMode):
    """Counts the elements of every division (pairwise_iou divides once per IoU value)."""

    def __init__(self):
        super().__init__()
        self.divisions = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._schema.name == "aten::div":
            self.divisions += out.numel()
        return out


def test_match_anchors_never_holds_the_whole_iou_matrix():
    g = torch.Generator().manual_seed(0)
    anchors, gt = _anchor_grid(stride=64), _random_boxes(500, g)
    chunk_elements = 1 << 16
    largest = {"matcher": 0, "chunked": 0}

    class LargestOutput(TorchDispatchMode):
        def __init__(self, key):
            super().__init__()
            self.key = key

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    largest[self.key] = max(largest[self.key], t.numel())
            return out

    matcher = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)
    with LargestOutput("matcher"):
        matcher(pairwise_iou(Boxes(gt), Boxes(anchors)))
    with LargestOutput("chunked"):
        match_anchors(gt, anchors, matcher, chunk_elements=chunk_elements)
    assert largest["matcher"] >= 500 * len(anchors)
    # pairwise_iou's largest temporary is [G, block, 2]; the per-anchor outputs are [R] (or [R, 4]
    # inputs)
    assert largest["chunked"] <= max(2 * chunk_elements, 4 * len(anchors)) < largest["matcher"] / 4


# Ops that make the host wait for the device: reading a value, or shapes that depend on values.
SYNCING_OPS = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::unique_dim",
    "aten::_unique2",
}


class HostSyncRecorder(TorchDispatchMode):
    """Records each op that needs a device-to-host synchronisation (boolean-mask indexing
    included)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        indices = (
            args[1]
            if name in ("aten::index", "aten::index_put_", "aten::index_put") and len(args) > 1
            else []
        )
        if name in SYNCING_OPS or any(t is not None and t.dtype == torch.bool for t in indices):
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


def _batch(small_cfg_hw=(192, 256)):
    g = torch.Generator().manual_seed(3)
    h, w = small_cfg_hw
    boxes = torch.tensor(
        [[10.0, 20.0, 90.0, 120.0], [100.0, 30.0, 250.0, 180.0], [0.0, 0.0, 40.0, 30.0]]
    )
    images = [
        torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8).float() for _ in range(2)
    ]
    instances = [
        Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([0, 3, 1])),
        Instances(
            (h, w), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.int64)
        ),
    ]
    return [{"image": im, "instances": inst} for im, inst in zip(images, instances)]


@pytest.mark.parametrize("box_loss, cls_loss", [("smooth_l1", "focal"), ("giou", "quality_focal")])
def test_loss_computation_needs_no_host_sync(small_cfg, box_loss, cls_loss):
    """Anchor labelling, both losses and their backward run without one op that would sync a GPU."""
    model = build_model(
        small_cfg(
            **{
                "MODEL.RETINANET.BBOX_REG_LOSS_TYPE": box_loss,
                "MODEL.RETINANET_PLUGIN.CLASSIFICATION_LOSS": cls_loss,
            }
        )
    )
    # on the CPU it writes the value at once; on a GPU it defers the copy
    model._metrics = RecordingLogger()
    batch = _batch()
    images = model.preprocess_image(batch)
    gt_instances = [x["instances"] for x in batch]
    with EventStorage():
        features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
        predictions = model.head(features)
        recorder = HostSyncRecorder()
        with recorder:
            losses = model.forward_training(images, features, predictions, gt_instances)
            sum(losses.values()).backward()
    assert recorder.calls == []
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    ((name, value),) = model._metrics.values
    assert name == "num_pos_anchors" and 0 < value.item() < 100


class RecordingLogger:
    def __init__(self):
        self.values = []

    def put(self, name, value):
        self.values.append((name, value))


def test_host_sync_recorder_sees_the_syncs_of_detectron2_matcher():
    """Negative control: the recorder catches what Detectron2's labelling does (boolean-mask
    assignment, nonzero)."""
    g = torch.Generator().manual_seed(1)
    anchors, gt = _anchor_grid(), _random_boxes(5, g)
    recorder = HostSyncRecorder()
    with recorder:
        Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)(
            pairwise_iou(Boxes(gt), Boxes(anchors))
        )
    assert any("nonzero" in c for c in recorder.calls) and any(
        "index_put" in c for c in recorder.calls
    )


@pytest.mark.cuda
def test_training_step_does_not_sync_the_gpu(small_cfg):
    model = build_model(small_cfg(**{"MODEL.DEVICE": "cuda"}))
    batch = _batch()
    with EventStorage():
        model(batch)  # warm-up: lazy initialisations, anchor cache
        images = model.preprocess_image(batch)
        gt_instances = [x["instances"].to("cuda") for x in batch]
        features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
        predictions = model.head(features)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            losses = model.forward_training(images, features, predictions, gt_instances)
            sum(losses.values()).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(v) for v in losses.values())
