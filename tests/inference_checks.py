"""Inputs and detection comparisons shared by the tests that compare detections: how the network
runs at inference (``test_execution_modes.py``, ``test_compiled_inference.py``), exports
(``test_export.py``), parity with Detectron2 (``test_parity.py``) and others."""

import math

import torch
from detectron2.structures import Boxes, Instances


def sample_images(seed=0, sizes=((128, 160), (96, 128))):
    """Seeded smooth images [3, H, W] (0-255) of ``sizes``."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for height, width in sizes:
        low = torch.rand(1, 3, height // 8, width // 8, generator=generator)
        images.append(torch.nn.functional.interpolate(low, size=(height, width))[0] * 255.0)
    return images


def training_inputs():
    """Two images with ground truth, in the form the model trains on."""
    images = sample_images(1)
    first = Instances(images[0].shape[1:])
    first.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 70.0, 90.0], [80.0, 30.0, 150.0, 110.0]]))
    first.gt_classes = torch.tensor([1, 3])
    second = Instances(images[1].shape[1:])
    second.gt_boxes = Boxes(torch.tensor([[5.0, 5.0, 60.0, 50.0]]))
    second.gt_classes = torch.tensor([0])
    return [{"image": images[0], "instances": first}, {"image": images[1], "instances": second}]


def eval_detections(model, inputs):
    """The model's Instances per input, in eval mode without autograd."""
    model.eval()
    with torch.no_grad():
        return [output["instances"] for output in model(inputs)]


def _pairs(allowed, preference):
    """A largest one-to-one pairing of rows and columns where ``allowed`` [N, M] holds (augmenting
    paths, so that a pair taken first never leaves a later row without the partner it needs), each
    row trying its columns in ``preference``'s order (ascending). Returns {row: column}."""
    order = [
        [j for j in torch.argsort(preference[i], stable=True).tolist() if allowed[i, j]]
        for i in range(allowed.shape[0])
    ]
    column_of, row_of = {}, {}

    def augment(i, seen):
        for j in order[i]:
            if j not in seen:
                seen.add(j)
                if j not in row_of or augment(row_of[j], seen):
                    column_of[i], row_of[j] = j, i
                    return True
        return False

    for i in range(allowed.shape[0]):
        augment(i, set())
    return column_of


def _image_differences(a, b, tie, max_unpaired):
    """(max |box|, max |score|, pairs) of one image's detections paired one to one (see
    ``detection_differences``); None when they cannot be paired."""
    if tuple(a.image_size) != tuple(b.image_size) or len(a) != len(b):
        return None
    if not len(a):
        return 0.0, 0.0, 0
    for x in (a, b):
        if not (torch.isfinite(x.scores).all() and torch.isfinite(x.pred_boxes.tensor).all()):
            return None
    score_gap = (a.scores[:, None].double() - b.scores[None, :].double()).abs()
    box_gap = (a.pred_boxes.tensor[:, None] - b.pred_boxes.tensor[None, :]).abs().amax(-1)
    allowed = (a.pred_classes[:, None] == b.pred_classes[None, :]) & (score_gap <= tie)
    column_of = _pairs(allowed, box_gap)
    unpaired_a = [i for i in range(len(a)) if i not in column_of]
    unpaired_b = sorted(set(range(len(b))) - set(column_of.values()))
    # at the cut, the selection may keep either of two near-equal detections
    cut = float(min(a.scores.min(), b.scores.min())) + tie
    if len(unpaired_a) > max_unpaired or any(
        float(x.scores[i]) > cut for x, rows in ((a, unpaired_a), (b, unpaired_b)) for i in rows
    ):
        return None
    pairs = list(column_of.items())
    if not pairs:
        return 0.0, 0.0, 0
    rows, columns = torch.tensor([i for i, _ in pairs]), torch.tensor([j for _, j in pairs])
    return float(box_gap[rows, columns].max()), float(score_gap[rows, columns].max()), len(pairs)


def detection_differences(expected, actual, tie=1e-4, max_unpaired=2):
    """Largest |box| (px) and |score| differences between two lists of Instances, and how many
    detections were compared: {"boxes", "scores", "count"}.

    Detections are paired one to one: same class, scores within ``tie``, as many pairs as there
    can be, each detection preferring the nearest box; so scores closer than ``tie`` may come in
    either order, as float rounding leaves them. Only at the cut (within ``tie`` of the lowest score
    of the two lists) may detections stay unpaired, at most ``max_unpaired`` per image: the top-k
    selection keeps either of two near-equal ones. Other image sizes or counts, a non-finite box or
    score, or any other detection without a partner, give inf."""
    diff = {"boxes": 0.0, "scores": 0.0, "count": 0}
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        image = _image_differences(a, b, tie, max_unpaired)
        if image is None:
            return {"boxes": math.inf, "scores": math.inf, "count": diff["count"] + len(a)}
        diff["boxes"], diff["scores"] = max(diff["boxes"], image[0]), max(diff["scores"], image[1])
        diff["count"] += image[2]
    return diff


def assert_same_detections(expected, actual, box_atol, score_atol):
    """Same counts and classes, boxes and scores within the tolerances (near-equal scores in either
    order); at least 10 compared in all. Returns that number."""
    diff = detection_differences(expected, actual, tie=score_atol)
    assert diff["boxes"] <= box_atol and diff["scores"] <= score_atol, diff
    assert diff["count"] >= 10  # something to compare
    return diff["count"]


class FirstLogits(torch.nn.Module):
    """The model's class logits of the first level, as a module that tracing can hold."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.dense_predictions(images)[1][0]
