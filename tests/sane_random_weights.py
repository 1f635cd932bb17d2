"""Random but sane weights for RetinaNet models in tests (parity, checkpoint loading)."""
import math

import torch
from detectron2.layers import FrozenBatchNorm2d


@torch.no_grad()
def make_weights_sane(model, batched_inputs, generator, randomize_backbone_biases=False):
    """Random weights with outputs in a normal range (for RetinaNet models of Detectron2 and of the plugin).

    FrozenBN layers get random affine parameters and statistics calibrated on ``batched_inputs`` in one
    pass (each layer's pre-hook sets its mean/var from its actual input, so every layer sees normalised
    features); head convs get He-scaled weights, and the class logits a spread around a low prior, so a few
    percent of (anchor, class) pairs pass the 0.05 score threshold, of many classes. With
    ``randomize_backbone_biases`` the FPN and P6/P7 biases (zero at init) are random too, so that a checkpoint
    test notices any bias that is not carried over.
    """

    def calibrate(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    hooks = []
    for module in model.backbone.bottom_up.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.weight.uniform_(0.5, 1.0, generator=generator)
            module.bias.uniform_(-0.2, 0.2, generator=generator)
            hooks.append(module.register_forward_pre_hook(calibrate))
    if randomize_backbone_biases:
        for name, param in model.backbone.named_parameters():
            if name.endswith(".bias"):
                param.uniform_(-0.1, 0.1, generator=generator)
    model.eval()
    model.backbone(model.preprocess_image(batched_inputs).tensor)
    for hook in hooks:
        hook.remove()

    head = model.head
    for conv in [m for m in list(head.cls_subnet) + list(head.bbox_subnet) if isinstance(m, torch.nn.Conv2d)]:
        conv.weight.normal_(0.0, math.sqrt(2.0 / conv.weight[0].numel()), generator=generator)
        conv.bias.uniform_(-0.1, 0.1, generator=generator)
    fan_in = head.cls_score.weight[0].numel()
    head.cls_score.weight.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
    # Zero-mean filters: the (positive, post-ReLU) mean feature would otherwise favour a few classes everywhere.
    head.cls_score.weight.sub_(head.cls_score.weight.mean(dim=(1, 2, 3), keepdim=True))
    head.cls_score.bias.normal_(-6.0, 0.3, generator=generator)
    head.bbox_pred.weight.normal_(0.0, 0.2 / math.sqrt(fan_in), generator=generator)
    head.bbox_pred.bias.uniform_(-0.05, 0.05, generator=generator)
