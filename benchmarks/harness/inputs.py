"""The benchmarks' inputs: seeded synthetic images and boxes, fed to each model in its own format.

Images are smooth noise at the benchmark size, BGR 0-255 for Detectron2 and the plugin; torchvision
gets the same pixels as RGB 0-1. Boxes are seeded too (8 px to 60% of the short side, aspect ratios
1:3 to 3:1, 80 classes), so every model sees the same problem.
"""

import argparse
import math
from typing import List

import torch

SEED = 0
NUM_CLASSES = 80
BOXES_PER_IMAGE = 8  # COCO has 7.3 objects per image on average


def parse_size(text: str):
    """``"HEIGHTxWIDTH"`` -> (height, width), both at least 32 (an ``argparse`` type)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size {text!r} is not HEIGHTxWIDTH, e.g. 800x1333"
        ) from None
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError(f"size {text!r}: both sides must be at least 32 pixels")
    return height, width


def int_list(text: str) -> List[int]:
    """``"2,8"`` -> [2, 8], positive integers (an ``argparse`` type)."""
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 2,8")
    return values


def random_boxes(height: int, width: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """[count, 4] XYXY boxes inside the image, at least 2 px wide and high: log-uniform size (sqrt
    of the area) from 8 px to 60% of the short side, aspect ratios 1:3 to 3:1."""
    low, high = math.log(8.0), math.log(0.6 * min(height, width))
    side = torch.exp(torch.empty(count).uniform_(low, high, generator=generator))
    ratio = torch.exp(
        torch.empty(count).uniform_(math.log(1 / 3), math.log(3.0), generator=generator)
    )
    box_w, box_h = side / ratio.sqrt(), side * ratio.sqrt()  # ratio = h / w
    cx = torch.rand(count, generator=generator) * width
    cy = torch.rand(count, generator=generator) * height
    boxes = torch.stack([cx - box_w / 2, cy - box_h / 2, cx + box_w / 2, cy + box_h / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    # Clipping can make a box thin: keep every box at least 2 px wide and high, inside the image.
    boxes[:, 2] = torch.maximum(boxes[:, 2], (boxes[:, 0] + 2).clamp(max=width))
    boxes[:, 0] = torch.minimum(boxes[:, 0], boxes[:, 2] - 2)
    boxes[:, 3] = torch.maximum(boxes[:, 3], (boxes[:, 1] + 2).clamp(max=height))
    boxes[:, 1] = torch.minimum(boxes[:, 1], boxes[:, 3] - 2)
    return boxes


def make_samples(height: int, width: int, num_images: int, boxes_per_image: int, seed: int = SEED):
    """``num_images`` (image [3, H, W] float32 BGR 0-255, boxes [G, 4] XYXY pixels, classes [G]
    int64), seeded.

    Images are smooth noise (random values on a grid 16x coarser, bilinearly upsampled); boxes as
    ``random_boxes``.
    """
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(num_images):
        coarse = torch.rand(1, 3, max(1, height // 16), max(1, width // 16), generator=generator)
        image = torch.nn.functional.interpolate(
            coarse, size=(height, width), mode="bilinear", align_corners=False
        )
        image = (image[0] * 255.0).contiguous()
        boxes = random_boxes(height, width, boxes_per_image, generator)
        classes = torch.randint(0, NUM_CLASSES, (boxes_per_image,), generator=generator)
        samples.append((image, boxes, classes))
    return samples


class Runner:
    """Feeds one model its own input format and counts its detections."""

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device):
        self.name, self.model, self.device = name, model, device

    def training_inputs(self, samples):
        if self.name == "torchvision":
            images = [image.flip(0).div(255.0).to(self.device) for image, _, _ in samples]
            targets = [
                {"boxes": b.to(self.device), "labels": c.to(self.device)} for _, b, c in samples
            ]
            return images, targets
        from detectron2.structures import Boxes, Instances

        batch = []
        for image, boxes, classes in samples:
            instances = Instances(tuple(image.shape[-2:]))
            instances.gt_boxes = Boxes(boxes.to(self.device))
            instances.gt_classes = classes.to(self.device)
            batch.append({"image": image.to(self.device), "instances": instances})
        return (batch,)

    def inference_inputs(self, samples):
        if self.name == "torchvision":
            return ([image.flip(0).div(255.0).to(self.device) for image, _, _ in samples],)
        return ([{"image": image.to(self.device)} for image, _, _ in samples],)

    def __call__(self, inputs):
        return self.model(*inputs)

    def detection_counts(self, outputs) -> List[int]:
        if self.name == "torchvision":
            return [len(o["boxes"]) for o in outputs]
        return [len(o["instances"]) for o in outputs]
