"""Convolution weights held channels-last while a channels-last model is in eval mode.

For float32 batch-1 inputs with N·C·H·W <= 20480 PyTorch's CPU convolution takes its native
kernel, not oneDNN's: the coarse pyramid levels (P7 of an 800x1216 image has 7x10 cells), and most
levels of a small image. Given a channels-last input and an NCHW weight, that kernel first copies
the weight to channels-last, at every call: the head's ten weights, shared by five levels, up to
five times per forward. Held channels-last in eval mode, the weights are copied once, when the
model enters eval mode, and given back their layout when it enters train mode, so that training
and its gradients are unchanged. Only the layout moves: the parameters stay the same objects with
the same values (in eval mode a state dict holds channels-last tensors of those values).

Weights that are channels-last already (1x1 kernels are both; the weights ``wrap_for_distributed``
makes channels-last for mixed-precision DDP, before training) are left as they are; a model put
in eval mode before that wrapping gets NCHW weights back from ``train()``, as it had them.
"""

from typing import Iterator, List, Tuple

import torch
from torch import nn

__all__ = ["weight_layout_for_mode"]


def _convolution_weights(module: nn.Module) -> Iterator[Tuple[str, nn.Parameter]]:
    for name, submodule in module.named_modules():
        if isinstance(submodule, nn.Conv2d) and submodule.weight.dim() == 4:
            yield f"{name}.weight" if name else "weight", submodule.weight


def _relayout(weight: nn.Parameter, memory_format: torch.memory_format) -> None:
    # A normal tensor even when called under torch.inference_mode (an inference tensor as a
    # parameter would break the next autograd pass: training, or differentiable eval mode).
    with torch.inference_mode(False), torch.no_grad():
        weight.data = weight.data.contiguous(memory_format=memory_format)


def weight_layout_for_mode(module: nn.Module, training: bool, converted: List[str]) -> List[str]:
    """The convolution weights under ``module`` laid out for the mode it enters: entering eval
    mode (``training`` False), the NCHW-contiguous ones become channels-last; entering train mode,
    those named in ``converted`` become NCHW again. Returns the names that are channels-last for
    eval mode now (pass them back at the next call)."""
    if training:
        wanted = set(converted)
        for name, weight in _convolution_weights(module):
            if name in wanted:
                _relayout(weight, torch.contiguous_format)
        return []
    if converted:  # already in eval mode's layout
        return converted
    names = []
    for name, weight in _convolution_weights(module):
        if weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last):
            _relayout(weight, torch.channels_last)
            names.append(name)
    return names
