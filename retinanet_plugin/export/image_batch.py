"""The exported model's input: images padded into one batch tensor, with each image's size and
output size."""

from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.structures import ImageList


def pad_images(images: Sequence[Tensor], size_divisibility: int) -> Tuple[Tensor, Tensor]:
    """Pad [3, H_i, W_i] images (bottom and right, with zeros) into the batch the model itself would
    build.

    Args:
        images: N float32 tensors, pixel values in the model's ``INPUT.FORMAT`` channel order.
        size_divisibility: the backbone's ``size_divisibility`` (the batch's height and width are
            multiples of it).
    Returns:
        batch [N, 3, H, W] float32, with H, W the largest image sides rounded up to
        ``size_divisibility``; image_sizes [N, 2] int64 (height, width) of each image inside the
        batch.
    """
    if len(images) == 0:
        raise ValueError("pad_images needs at least one image")
    for i, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"image {i} must be a [3, H, W] tensor, got shape {tuple(image.shape)}"
            )
    batch = ImageList.from_tensors(list(images), size_divisibility)
    sizes = torch.tensor(
        [list(s) for s in batch.image_sizes], dtype=torch.int64, device=batch.tensor.device
    )
    return batch.tensor, sizes


def batch_from_inputs(
    inputs: Sequence[Dict], size_divisibility: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """(images, image_sizes, output_sizes) for the exported model from Detectron2-style model inputs
    (dicts with "image" [3, H, W] and optional "height"/"width", the output size, default the
    image's)."""
    images, image_sizes = pad_images([x["image"] for x in inputs], size_divisibility)
    output_sizes = torch.tensor(
        [
            [int(x.get("height", x["image"].shape[-2])), int(x.get("width", x["image"].shape[-1]))]
            for x in inputs
        ],
        dtype=torch.int64,
        device=images.device,
    )
    return images, image_sizes, output_sizes
