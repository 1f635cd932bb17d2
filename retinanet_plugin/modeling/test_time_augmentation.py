"""Test-time augmentation for the plugin's RetinaNet: the model run at several input sizes (and
mirrored), its detections mapped back to the image and merged (``tta_merge``: class-aware NMS,
optionally box voting, a consensus score and class-agnostic NMS).

Detectron2 has test-time augmentation for R-CNN only (``GeneralizedRCNNWithTTA``); this one reads
the same keys, ``TEST.AUG.MIN_SIZES``, ``TEST.AUG.MAX_SIZE`` and ``TEST.AUG.FLIP``, and makes the
augmented inputs with Detectron2's ``DatasetMapperTTA``. ``RetinaNetPluginTrainer.test_with_TTA``
evaluates with it (``TEST.AUG.ENABLED``: after training and with ``--eval-only``).
"""

from typing import Dict, List

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.modeling import DatasetMapperTTA
from detectron2.structures import Boxes, Instances

from ..config import add_retinanet_plugin_config
from .tta_merge import ViewMerge

__all__ = ["RetinaNetPluginWithTTA"]


class RetinaNetPluginWithTTA(nn.Module):
    """A RetinaNet (or any detector with ``test_nms_thresh`` and ``max_detections_per_image``) with
    test-time augmentation, called like the detector in eval mode: a list of dicts with "image"
    [3, H, W] and the optional output size "height"/"width"; per image {"instances"} in
    "height" x "width" pixels (pred_boxes, scores, pred_classes).

    Per image, ``tta_mapper`` (default ``DatasetMapperTTA(cfg)``) gives one input per
    ``TEST.AUG.MIN_SIZES`` entry (shortest side; longest at most ``TEST.AUG.MAX_SIZE``) and, with
    ``TEST.AUG.FLIP``, its mirror image too, each resized from the given image: give the images
    at their own size (``INPUT.MIN_SIZE_TEST`` 0, as ``test_with_TTA`` does), or the larger sizes
    are upsampled from a smaller copy. The model's detections on each input are mapped back through
    that input's transforms, and all of them are merged by ``merge``, called as
    ``merge(boxes, scores, classes, view_count)`` -> (boxes, scores, classes) best first (default
    ``ViewMerge(cfg, model)``: class-aware NMS at the model's ``test_nms_thresh``, then what
    ``MODEL.RETINANET_PLUGIN.TTA`` adds, its defaults where ``cfg`` is a plain Detectron2 config),
    keeping its ``max_detections_per_image`` best. The inputs of one size (an image and its mirror)
    go through the model in one forward; an image given as floats is resized as uint8, as the test
    loader gives it.
    """

    def __init__(self, cfg, model: nn.Module, tta_mapper=None, merge=None):
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        if merge is None:
            # a plain Detectron2 config gets the plugin's defaults (the keys' one place: config.py)
            merge_cfg = cfg.clone()
            merge_cfg.defrost()
            merge = ViewMerge(add_retinanet_plugin_config(merge_cfg), model)
        self.merge = merge

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]) -> List[Dict[str, Instances]]:
        return [{"instances": self._detect(inputs)} for inputs in batched_inputs]

    def _detect(self, inputs: Dict[str, torch.Tensor]) -> Instances:
        image = inputs["image"]
        size = (inputs.get("height", image.shape[-2]), inputs.get("width", image.shape[-1]))
        if image.dtype != torch.uint8:
            # resized as uint8 images are (PIL, antialiased), the way the test loader gives them;
            # a float tensor would be interpolated without antialiasing
            image = image.round().clamp(0, 255).to(torch.uint8)
        augmented = self.tta_mapper({"image": image.cpu(), "height": size[0], "width": size[1]})
        boxes, scores, classes, device = [], [], [], image.device
        # the inputs of one size (an image and its mirror) in one forward: no padding between them
        by_size: Dict[tuple, list] = {}
        for aug in augmented:
            by_size.setdefault(tuple(aug["image"].shape[-2:]), []).append(aug)
        for (h, w), group in by_size.items():
            outputs = self.model([{"image": a["image"], "height": h, "width": w} for a in group])
            for aug, output in zip(group, outputs):
                detections = output["instances"]
                device = detections.scores.device
                # the detections are in the augmented input's pixels: back to the image's
                mapped = (
                    aug["transforms"]
                    .inverse()
                    .apply_box(detections.pred_boxes.tensor.detach().cpu().numpy())
                )
                boxes.append(torch.as_tensor(mapped, dtype=torch.float32).reshape(-1, 4))
                scores.append(detections.scores.detach().cpu())
                classes.append(detections.pred_classes.detach().cpu())
        boxes, scores, classes = self.merge(
            torch.cat(boxes), torch.cat(scores), torch.cat(classes), view_count=len(augmented)
        )
        result = Instances(size)
        result.pred_boxes = Boxes(boxes.to(device))
        result.pred_boxes.clip(size)
        result.scores = scores.to(device)
        result.pred_classes = classes.to(device)
        return result
