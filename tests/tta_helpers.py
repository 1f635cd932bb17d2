"""A stand-in detector and image for test-time augmentation tests: one bright box, found
exactly at every scale and in the mirror image."""

import numpy as np
import torch
from detectron2.structures import Boxes, Instances

# a bright box, not centred, so that a mirror image mapped back wrongly lands elsewhere
SQUARE = (10, 20, 30, 35)  # x0, y0, x1, y1 in a 90 x 60 image


class BrightBoxDetector(torch.nn.Module):
    """Reports the bounding box of the bright pixels of its input (class 0, scored by the input's
    height), rescaled to the input's "height"/"width" as a detector's eval mode does; records the
    input sizes it saw."""

    test_nms_thresh = 0.5
    max_detections_per_image = 100

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, batched_inputs):
        outputs = []
        for inputs in batched_inputs:
            image = inputs["image"]
            h, w = image.shape[-2:]
            self.seen.append((h, w))
            ys, xs = torch.nonzero(image.float().mean(0) > 127, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            out_h, out_w = inputs.get("height", h), inputs.get("width", w)
            box = box * torch.tensor([out_w / w, out_h / h, out_w / w, out_h / h])
            instances = Instances((out_h, out_w))
            instances.pred_boxes = Boxes(box[None])
            instances.scores = torch.tensor([h / 1000.0])
            instances.pred_classes = torch.tensor([0])
            outputs.append({"instances": instances})
        return outputs


def square_image(height=60, width=90):
    image = np.zeros((height, width, 3), dtype=np.uint8)
    x0, y0, x1, y1 = SQUARE
    image[y0:y1, x0:x1] = 255
    return image
