"""The train loops of the plugin's trainer: Detectron2's ``SimpleTrainer`` and the plugin's
:class:`~.mixed_precision.MixedPrecisionTrainer`, each checking every loss term of every iteration
(:func:`~.finite_checks.check_finite_losses`), so that a non-finite loss stops training, naming the
term, before the optimizer step."""

from typing import Mapping

import torch
from detectron2.engine import SimpleTrainer

from .finite_checks import check_finite_losses
from .mixed_precision import MixedPrecisionTrainer

__all__ = ["FiniteLossAMPTrainer", "FiniteLossSimpleTrainer"]


class _FiniteLossCheck:
    """Mixin for Detectron2's trainers: checks every loss term of every iteration, on each worker,
    before the metrics are gathered and before the optimizer step."""

    def _write_metrics(
        self, loss_dict: Mapping[str, torch.Tensor], data_time: float, prefix: str = "", iter=None
    ):
        check_finite_losses(loss_dict, self.iter if iter is None else iter)
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class FiniteLossSimpleTrainer(_FiniteLossCheck, SimpleTrainer):
    """``SimpleTrainer`` that stops on a non-finite loss term, naming it (see
    :func:`check_finite_losses`)."""


class FiniteLossAMPTrainer(_FiniteLossCheck, MixedPrecisionTrainer):
    """:class:`MixedPrecisionTrainer` that stops on a non-finite loss term, naming it (see
    :func:`check_finite_losses`)."""
