"""Random weights that behave like trained ones where it matters: the one home of that calibration.

Both uses start from ``calibrate_frozen_batch_norms``: FrozenBN layers get random affine parameters
and the statistics of their actual input during one forward pass, so activations keep a normal range
through the ResNet (with the identity statistics of a fresh FrozenBN they grow with depth, and
losses overflow within a few SGD steps). Then:

- ``calibrate_random_weights`` (the benchmarks, ``weights.py``): any of the three models keeps its
  head initialisation, and the class-logit bias is shifted so that a set fraction of the (anchor,
  class) scores pass the score threshold: every model hands its post-processing a comparable number
  of candidates;
- ``make_weights_sane`` (the parity, checkpoint and export tests, through
  ``tests/sane_random_weights.py``, and ``tools/gpu/parity.py``): a Detectron2-layout RetinaNet gets
  He-scaled head weights and class logits spread around a low prior, so that many detections of many
  classes, with spread scores, come out.
"""

import math
from typing import Callable, Dict, List

import torch
from torch import nn

from retinanet_plugin.modeling.frozen_bn_folding import FoldedFrozenBNConv2d


def frozen_batch_norms(root: nn.Module) -> List[nn.Module]:
    """The FrozenBN layers under ``root`` (Detectron2's or torchvision's), in module order."""
    from detectron2.layers import FrozenBatchNorm2d as Detectron2FrozenBN
    from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBN

    return [m for m in root.modules() if isinstance(m, (Detectron2FrozenBN, TorchvisionFrozenBN))]


@torch.no_grad()
def calibrate_frozen_batch_norms(
    root: nn.Module, run: Callable[[], object], generator: torch.Generator
) -> None:
    """Random affine parameters (weight U(0.5, 1), bias U(-0.2, 0.2), drawn from ``generator`` layer
    by layer) for every FrozenBN under ``root``, and running statistics measured on each layer's
    input during one ``run()`` (each layer sees the already calibrated layers before it)."""

    def measure_statistics(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    hooks = []
    for module in frozen_batch_norms(root):
        module.weight.uniform_(0.5, 1.0, generator=generator)
        module.bias.uniform_(-0.2, 0.2, generator=generator)
        hooks.append(module.register_forward_pre_hook(measure_statistics))
    # the plugin's folded convolutions run their norm as a separate layer only in training mode
    folded = [m for m in root.modules() if isinstance(m, FoldedFrozenBNConv2d) and not m.training]
    try:
        for module in folded:
            module.train()
        run()
    finally:
        for hook in hooks:
            hook.remove()
        for module in folded:
            module.eval()


def classification_layer(model: nn.Module) -> nn.Conv2d:
    """The conv that outputs the class logits, in Detectron2's/the plugin's layout or
    torchvision's."""
    if hasattr(model.head, "cls_score"):
        return model.head.cls_score
    return model.head.classification_head.cls_logits


@torch.no_grad()
def calibrate_random_weights(
    model: nn.Module,
    run_inference: Callable[[], object],
    generator: torch.Generator,
    candidate_fraction: float,
    score_thresh: float,
) -> Dict[str, float]:
    """Make randomly initialised weights behave like trained ones where it matters for timing.

    1. ``calibrate_frozen_batch_norms`` over the whole model, during one ``run_inference()`` call.
    2. The class-logit bias is shifted so that ``candidate_fraction`` of all (anchor, class) scores
       of that input exceed ``score_thresh``: every model then hands its top-k / NMS post-processing
       a comparable number of candidates (a fresh head's prior of 0.01 would pass none).

    Returns what was set: ``{"bias_shift": ..., "candidates": ..., "scores": ...}``.
    """
    model.eval()
    calibrate_frozen_batch_norms(model, run_inference, generator)
    logits = []
    cls_layer = classification_layer(model)
    # A copy: Detectron2's decoding applies sigmoid_ in place, to views of this output on 1x1
    # levels.
    hook = cls_layer.register_forward_hook(
        lambda module, args, out: logits.append(out.detach().flatten().float().clone())
    )
    try:
        run_inference()
    finally:
        hook.remove()
    logits = torch.cat(logits)
    k = max(1, int(round(candidate_fraction * logits.numel())))
    kth_largest = logits.topk(k).values.min()
    shift = math.log(score_thresh / (1.0 - score_thresh)) - float(kth_largest) + 1e-4
    cls_layer.bias.add_(shift)
    return {"bias_shift": shift, "candidates": k, "scores": logits.numel()}


def normal_in_logical_order(weight: torch.Tensor, std: float, generator: torch.Generator) -> None:
    """``weight.normal_(0, std)`` drawn in the tensor's logical (NCHW) order, so that the values do
    not depend on its memory layout (a channels-last model in eval mode holds channels-last conv
    weights, ``retinanet_plugin/modeling/weight_layout.py``, and ``normal_`` fills memory in
    order)."""
    draw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    weight.copy_(draw.normal_(0.0, std, generator=generator))


@torch.no_grad()
def make_weights_sane(model, batched_inputs, generator, randomize_backbone_biases=False):
    """Random weights with outputs in a normal range (for RetinaNet models of Detectron2 and of the
    plugin).

    FrozenBN layers of the ResNet get random affine parameters and statistics calibrated on
    ``batched_inputs`` in one pass of the backbone (``calibrate_frozen_batch_norms``); head convs
    get He-scaled weights, and the class logits a spread around a low prior, so a few percent of
    (anchor, class) pairs pass the 0.05 score threshold, of many classes. With
    ``randomize_backbone_biases`` the FPN and P6/P7 biases (zero at init) are random too, so that a
    checkpoint test notices any bias that is not carried over (drawn after the FrozenBN parameters;
    they do not change the ResNet's activations).
    """
    model.eval()
    calibrate_frozen_batch_norms(
        model.backbone.bottom_up,
        lambda: model.backbone(model.preprocess_image(batched_inputs).tensor),
        generator,
    )
    if randomize_backbone_biases:
        for name, param in model.backbone.named_parameters():
            if name.endswith(".bias"):
                param.uniform_(-0.1, 0.1, generator=generator)
    head = model.head
    convs = [m for m in list(head.cls_subnet) + list(head.bbox_subnet) if isinstance(m, nn.Conv2d)]
    for conv in convs:
        normal_in_logical_order(conv.weight, math.sqrt(2.0 / conv.weight[0].numel()), generator)
        conv.bias.uniform_(-0.1, 0.1, generator=generator)
    fan_in = head.cls_score.weight[0].numel()
    normal_in_logical_order(head.cls_score.weight, 1.0 / math.sqrt(fan_in), generator)
    # Zero-mean filters: the (positive, post-ReLU) mean feature would otherwise favour a few
    # classes everywhere.
    head.cls_score.weight.sub_(head.cls_score.weight.mean(dim=(1, 2, 3), keepdim=True))
    head.cls_score.bias.normal_(-6.0, 0.3, generator=generator)
    normal_in_logical_order(head.bbox_pred.weight, 0.2 / math.sqrt(fan_in), generator)
    head.bbox_pred.bias.uniform_(-0.05, 0.05, generator=generator)
