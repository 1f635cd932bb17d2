"""The reductions every loss of the plugin takes: "none" (elementwise), "sum", "mean"."""

from typing import Optional, Union

import torch

REDUCTIONS = ("none", "sum", "mean")


def check_reduction(reduction: str) -> None:
    """Raises ValueError naming the choices for an unknown reduction."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce_label_loss(
    loss: torch.Tensor,
    labels: torch.Tensor,
    reduction: str,
    normalizer: Optional[Union[torch.Tensor, float]],
) -> torch.Tensor:
    """The reduction of an elementwise [N, K] loss of integer ``labels`` [N] (-1: ignored row, whose
    loss must already be 0), as the ops do: "mean" over the non-ignored elements, then divided by
    ``normalizer`` if given."""
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / ((labels >= 0).sum() * loss.shape[-1]).clamp(min=1)
    if normalizer is not None:
        loss = loss / normalizer
    return loss
