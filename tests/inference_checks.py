"""Inputs and detection comparisons shared by the tests of how the network runs at inference
(``test_execution_modes.py``, ``test_compiled_inference.py``)."""

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


def assert_same_detections(expected, actual, box_atol, score_atol):
    """Same counts and classes, boxes and scores within the tolerances; at least 10 in all."""
    total = 0
    for a, b in zip(expected, actual):
        assert len(a) == len(b)
        assert torch.equal(a.pred_classes, b.pred_classes)
        torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, atol=box_atol, rtol=0)
        torch.testing.assert_close(b.scores, a.scores, atol=score_atol, rtol=0)
        total += len(a)
    assert total >= 10  # something to compare
    return total


class FirstLogits(torch.nn.Module):
    """The model's class logits of the first level, as a module that tracing can hold."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.dense_predictions(images)[1][0]
