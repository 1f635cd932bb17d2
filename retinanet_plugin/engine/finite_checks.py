"""Guards of the training loop against non-finite values. A non-finite loss stops training with a
message that names the loss term and the iteration, before the optimizer step
(:func:`check_finite_losses`, run at each step by the trainers of :mod:`.train_loops`). No
checkpoint of non-finite weights is ever written (:class:`FiniteWeightsPeriodicCheckpointer`), so
the ``last_checkpoint`` tag always names good weights to resume from.

Detectron2's ``SimpleTrainer`` alone raises ``FloatingPointError("Loss became infinite or NaN at
iteration=N! loss_dict = {...}")`` on the main process, from the mean over workers of the summed
loss, also before the optimizer step; it names no term or worker. It does not look at the weights:
gradients that overflow with a finite loss make the weights NaN after the step, and a checkpoint due
at that iteration is then written and tagged as the last one.
"""

import logging
import math
from typing import Mapping, Optional

import torch
from detectron2.engine import hooks
from detectron2.utils import comm

__all__ = [
    "FiniteWeightsPeriodicCheckpointer",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "check_finite_losses",
    "finite_weights_checkpointer_hooks",
    "first_non_finite_tensor",
]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss term is NaN or infinite; raised before the optimizer step of that iteration."""


class NonFiniteWeightsError(FloatingPointError):
    """The weights are NaN or infinite where a checkpoint was due; the checkpoint is not written."""


def check_finite_losses(loss_dict: Mapping[str, torch.Tensor], iteration: int) -> None:
    """Raise :class:`NonFiniteLossError` naming each non-finite term (one host sync when all are
    finite)."""
    if not loss_dict:
        return
    values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()])
    if bool(torch.isfinite(values).all()):
        return
    values = dict(zip(loss_dict, values.tolist()))
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    others = ", ".join(f"{k} = {v:.4g}" for k, v in values.items() if k not in bad) or "none"
    world_size = comm.get_world_size()
    where = f" on rank {comm.get_rank()} of {world_size}" if world_size > 1 else ""
    terms = ", ".join(f"{k} is {v}" for k, v in bad.items())
    raise NonFiniteLossError(
        f"{terms} at iteration {iteration}{where} (finite terms: {others}). Training stopped "
        "before this iteration's optimizer step; checkpoints are written only from finite "
        "weights, so OUTPUT_DIR/last_checkpoint names the last good one (resume from it with "
        "--resume, e.g. with a lower SOLVER.BASE_LR or SOLVER.CLIP_GRADIENTS)."
    )


def first_non_finite_tensor(module: torch.nn.Module) -> Optional[str]:
    """Name of the first floating-point parameter or buffer of ``module`` holding a NaN or infinity,
    else None."""
    for name, tensor in module.state_dict().items():
        if torch.is_floating_point(tensor) and not bool(torch.isfinite(tensor).all()):
            return name
    return None


class FiniteWeightsPeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """Detectron2's ``PeriodicCheckpointer`` hook that, when a checkpoint is due, first checks that
    the weights are finite; if they are not it raises :class:`NonFiniteWeightsError` and writes
    nothing, so the previous checkpoint stays the last one."""

    def step(self, iteration: int, **kwargs) -> None:
        iteration = int(iteration)
        last_iter = self.max_iter is not None and iteration >= self.max_iter - 1
        if (iteration + 1) % self.period == 0 or last_iter:
            name = first_non_finite_tensor(self.checkpointer.model)
            if name is not None:
                raise NonFiniteWeightsError(self._refusal(name, iteration))
        super().step(iteration, **kwargs)

    def _refusal(self, name: str, iteration: int) -> str:
        """The message of the error raised instead of writing the checkpoint."""
        checkpointer = self.checkpointer
        last = checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else None
        if last:
            kept = f"the last good checkpoint, {last}, is unchanged"
        else:
            kept = "no checkpoint was written before"
        return (
            f"{name} holds NaN or infinite values after the optimizer step of iteration "
            f"{iteration}, whose loss was finite: the gradients overflowed. Not writing the "
            f"checkpoint due at this iteration; {kept}. Lower SOLVER.BASE_LR, lengthen "
            "SOLVER.WARMUP_ITERS or enable SOLVER.CLIP_GRADIENTS, then resume with --resume."
        )


def finite_weights_checkpointer_hooks(hook_list) -> list:
    """Replace each Detectron2 ``PeriodicCheckpointer`` in ``hook_list`` by a
    :class:`FiniteWeightsPeriodicCheckpointer` with the same settings."""
    out = []
    for hook in hook_list:
        if type(hook) is hooks.PeriodicCheckpointer:
            hook = FiniteWeightsPeriodicCheckpointer(
                hook.checkpointer,
                hook.period,
                max_iter=hook.max_iter,
                max_to_keep=hook.max_to_keep,
                file_prefix=hook.file_prefix,
            )
        out.append(hook)
    return out
