"""RetinaNetPlugin's inference as one tensor-in, tensor-out module: what the exporters capture."""

import torch
from torch import Tensor, nn

from .padded_detections import PaddedDetections, resize_padded_detections


def _is_capturing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class ExportableRetinaNet(nn.Module):
    """The whole inference of a ``RetinaNetPlugin`` (normalisation, backbone, head, anchors, top-k
    per level, decoding, class-aware NMS, top ``TEST.DETECTIONS_PER_IMAGE``, rescaling to the output
    size), on a padded batch, with fixed-size outputs and no Python branch on data:
    ``torch.jit.trace``, ``torch.export`` and the ONNX exporter capture it with a dynamic batch size
    and image size.

    For a batch made by :func:`~retinanet_plugin.export.pad_images`, each image's detections equal
    those the model gives in eager mode for the same list of images (``model([{"image", "height",
    "width"}, ...])``); see
    :func:`~retinanet_plugin.modeling.detection_selection.select_detections_padded` for the one
    difference, the float rounding of IoUs in NMS.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.training:
            raise ValueError("ExportableRetinaNet needs a model in eval mode (call model.eval())")
        padding_constraints = getattr(model.backbone, "padding_constraints", {}) or {}
        if padding_constraints.get("square_size", 0):
            raise ValueError(
                f"backbones with padding_constraints {padding_constraints} are not supported"
            )
        self.model = model
        self.size_divisibility = max(int(model.backbone.size_divisibility), 1)
        self.max_detections_per_image = model.max_detections_per_image
        self.train(False)

    def forward(
        self, images: Tensor, image_sizes: Tensor, output_sizes: Tensor
    ) -> PaddedDetections:
        """
        Args:
            images: [N, 3, H, W] float32 pixel values (0-255, the model's ``INPUT.FORMAT`` channel
                order), image i at the top left of row i; H and W multiples of ``size_divisibility``
                (what ``pad_images`` makes).
            image_sizes: [N, 2] int64 (height, width) of each image inside the batch.
            output_sizes: [N, 2] int64 (height, width) to give the boxes in (usually the original
                image size).
        Returns:
            boxes [N, D, 4], scores [N, D], classes [N, D], num_detections [N] (see
            ``padded_detections``).
        """
        if not _is_capturing():
            self._check_inputs(images, image_sizes, output_sizes)
        model = self.model
        anchors, logits, deltas = model.dense_predictions(
            model.normalize_padded_batch(images, image_sizes)
        )
        detections = model.inference_padded(anchors, logits, deltas)
        return resize_padded_detections(*detections, image_sizes, output_sizes)

    def _check_inputs(self, images: Tensor, image_sizes: Tensor, output_sizes: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got shape {tuple(images.shape)}")
        if images.dtype != torch.float32:
            raise ValueError(f"images must be float32 pixel values, got {images.dtype}")
        div = self.size_divisibility
        if images.shape[2] % div or images.shape[3] % div:
            raise ValueError(
                f"the batch's height and width must be multiples of {div} (the backbone's "
                "size_divisibility), "
                f"got {tuple(images.shape[2:])}: build it with retinanet_plugin.export.pad_images"
            )
        for name, sizes in (("image_sizes", image_sizes), ("output_sizes", output_sizes)):
            if sizes.shape != (images.shape[0], 2) or sizes.dtype != torch.int64:
                raise ValueError(
                    f"{name} must be an [N, 2] int64 tensor with N = {images.shape[0]}, "
                    f"got {tuple(sizes.shape)} {sizes.dtype}"
                )
            if bool((sizes <= 0).any()):
                raise ValueError(f"{name} must be positive, got {sizes.tolist()}")
        if bool(
            (image_sizes[:, 0] > images.shape[2]).any()
            or (image_sizes[:, 1] > images.shape[3]).any()
        ):
            raise ValueError(
                f"image_sizes {image_sizes.tolist()} exceed the batch's size "
                f"{tuple(images.shape[2:])}"
            )
