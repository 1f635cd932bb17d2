"""Front door of the custom sigmoid focal loss op (retinanet_plugin._C). PLACEHOLDER until the op lands."""
from typing import Optional, Union

import torch


def focal_loss_op_available() -> bool:
    """Whether the compiled op could be loaded."""
    return False


def sigmoid_focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float = 2.0,
    alpha: float = 0.25,
    reduction: str = "sum",
    normalizer: Optional[Union[torch.Tensor, float]] = None,
) -> torch.Tensor:
    raise RuntimeError("the compiled focal loss op is not built yet")
