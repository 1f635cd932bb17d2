"""Frozen batch norms folded into the convolutions before them, for inference.

A ``FrozenBatchNorm2d`` after a convolution is a fixed per-channel affine map, so at inference the
pair is one convolution with weight ``W * s`` and bias ``b * s + t``
(``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``): one pass over the activations instead
of two. ``fold_frozen_batchnorms`` swaps each Detectron2 ``Conv2d`` whose ``norm`` is a
``FrozenBatchNorm2d`` for a ``FoldedFrozenBNConv2d`` that holds the same parameter and buffer
objects under the same names, so state dicts, checkpoints and training are unchanged; only eval
mode runs the folded convolution."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn

__all__ = ["FoldedFrozenBNConv2d", "fold_frozen_batchnorms", "folded_conv_parameters"]


def folded_conv_parameters(
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the one convolution equal to a frozen norm after a convolution.

    weight: (C_out, C_in / groups, kh, kw); bias: (C_out,) or None; the norm's tensors: (C_out,).
    """
    scale = norm_weight * (running_var + eps).rsqrt()
    shift = norm_bias - running_mean * scale
    folded_bias = shift if bias is None else bias * scale + shift
    return weight * scale.reshape(-1, 1, 1, 1), folded_bias


class FoldedFrozenBNConv2d(Conv2d):
    """Detectron2's ``Conv2d`` + ``FrozenBatchNorm2d``, run as one convolution in eval mode.

    Training mode runs the convolution, then the norm, as Detectron2 does. In eval mode the folded
    weight and bias are computed from the current tensors at each forward (a multiply over the
    weights, far cheaper than a pass over the activations, and nothing cached that could go stale
    when a checkpoint is loaded or an optimiser steps); under autograd, tracing and export the fold
    is part of the graph.
    """

    @classmethod
    def from_conv(cls, conv: Conv2d) -> "FoldedFrozenBNConv2d":
        """A folded conv holding ``conv``'s parameters, norm and activation (the same objects)."""
        folded = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            norm=conv.norm,
            activation=conv.activation,
            device="meta",
        )
        folded.weight = conv.weight
        folded.bias = conv.bias
        return folded.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias, norm = self.weight, self.bias, self.norm
        if self.training:  # Detectron2's Conv2d
            x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
            x = self.norm(x)  # TorchScript calls submodules as attributes
        else:
            weight, bias = folded_conv_parameters(
                weight,
                bias,
                norm.weight,
                norm.bias,
                norm.running_mean,
                norm.running_var,
                norm.eps,
            )
            x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_frozen_batchnorms(module: nn.Module) -> int:
    """Replace, in place, each ``Conv2d`` under ``module`` whose norm is a ``FrozenBatchNorm2d`` by
    a ``FoldedFrozenBNConv2d`` holding the same tensors; returns how many were replaced."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (
                type(child) is Conv2d
                and isinstance(child.norm, FrozenBatchNorm2d)
                and child.padding_mode == "zeros"
            ):
                setattr(parent, name, FoldedFrozenBNConv2d.from_conv(child))
                replaced += 1
    return replaced
