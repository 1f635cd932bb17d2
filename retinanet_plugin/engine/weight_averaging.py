"""An exponential moving average (EMA) of the model's weights during training
(``MODEL.RETINANET_PLUGIN.EMA``).

After each iteration ``t`` (1, 2, ...) every floating-point parameter and buffer ``w`` updates its
average ``a`` as ``a = d_t * a + (1 - d_t) * w``, with ``d_t = DECAY * (1 - exp(-t / RAMP_ITERS))``:
the average follows the weights closely at first and averages over about ``1 / (1 - DECAY)``
iterations later. Integer buffers (BatchNorm's counters) are copied.

What it changes: every checkpoint holds the average beside the weights (``"weight_average"``), so
``--resume`` continues both; after the last iteration the model takes the averaged weights, so the
final checkpoint's model (``model_final.pth``), the final precise-BN statistics
(``TEST.PRECISE_BN``), the final evaluation and what is deployed from it are the average (the
training weights stay in the checkpoint's ``weight_average`` entry for ``--resume``). Evaluations
during training (``TEST.EVAL_PERIOD``) see the training weights.
"""

import math
from typing import Dict

import torch
from detectron2.engine import HookBase, hooks
from torch.nn.parallel import DistributedDataParallel

__all__ = ["WeightAverage", "WeightAverageHook", "with_weight_average_hook"]


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class WeightAverage:
    """The averaged state of a model (its ``state_dict`` entries); checkpointable.

    After :meth:`copy_to_model` has given the model the average, the state also holds the training
    weights it replaced (``"training_weights"``), and loading such a state puts them back into the
    model: ``--resume`` from the final checkpoint with a larger ``SOLVER.MAX_ITER`` continues from
    the training weights, with their optimizer state, not from the average."""

    def __init__(self, model: torch.nn.Module, decay: float, ramp_iters: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"MODEL.RETINANET_PLUGIN.EMA.DECAY must be in (0, 1), got {decay}")
        if ramp_iters <= 0:
            raise ValueError(
                f"MODEL.RETINANET_PLUGIN.EMA.RAMP_ITERS must be positive, got {ramp_iters}"
            )
        self.decay, self.ramp_iters = decay, ramp_iters
        self.model = _unwrapped(model)
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Start again from the model's current state (no update counted)."""
        self.updates = 0
        self.training_weights = None
        self.final_model = None
        self.average = self._model_state_copy()

    def _model_state_copy(self) -> Dict[str, torch.Tensor]:
        return {name: value.detach().clone() for name, value in self.model.state_dict().items()}

    def current_decay(self) -> float:
        """``d_t`` of the next update."""
        return self.decay * (1.0 - math.exp(-(self.updates + 1) / self.ramp_iters))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        averaged, current = [], []
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                averaged.append(self.average[name])
                current.append(value.detach())
            else:
                self.average[name].copy_(value)
        torch._foreach_lerp_(averaged, current, 1.0 - decay)
        self.updates += 1
        self.final_model = None  # a loaded final model is no longer the average

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Give the model the averaged weights and buffers, keeping the ones they replace; after
        loading a final checkpoint and no update since, its model (the average as it was saved
        and evaluated: precise-BN statistics included)."""
        self.training_weights = self._model_state_copy()
        self.model.load_state_dict(self.average if self.final_model is None else self.final_model)

    def holds_model(self) -> bool:
        """Whether the model holds the average (:meth:`copy_to_model` ran since the last load)."""
        return self.training_weights is not None

    def state_dict(self) -> dict:
        state = {"updates": self.updates, "average": self.average}
        if self.training_weights is not None:
            state["training_weights"] = self.training_weights
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for name, value in self.average.items():
            saved = state["average"].get(name)
            if saved is None or saved.shape != value.shape:
                found = "missing" if saved is None else f"of shape {tuple(saved.shape)}"
                raise ValueError(
                    f"the checkpoint's weight average has {name!r} {found}, the model's is of "
                    f"shape {tuple(value.shape)}"
                )
            value.copy_(saved)
        self.updates = int(state["updates"])
        self.training_weights = None
        self.final_model = None
        if "training_weights" in state:  # saved after copy_to_model: the model holds the average
            # (the checkpointer loads the model before its other entries)
            self.final_model = self._model_state_copy()
            self.model.load_state_dict(state["training_weights"])


class WeightAverageHook(HookBase):
    """Updates a :class:`WeightAverage` after each iteration, and puts it into the model after the
    last one (before the final checkpoint and evaluation, which come after this hook)."""

    def __init__(self, average: WeightAverage):
        self.average = average

    def before_train(self):
        # the average was made with the model, before MODEL.WEIGHTS or a checkpoint without an
        # average was loaded: start it from the weights training starts from
        if self.average.updates == 0:
            self.average.reset()

    def after_step(self):
        self.average.update()
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self.average.copy_to_model()

    def after_train(self):
        # A run that had nothing left to train (``--resume`` from a checkpoint at or past
        # ``SOLVER.MAX_ITER``: no step ran, so ``after_step`` never gave the model the average)
        # ends with the average too (the final checkpoint's model, if it resumed from that). After
        # steps, ``trainer.iter`` reaches ``max_iter`` only when they all ran.
        if self.trainer.iter >= self.trainer.max_iter and not self.average.holds_model():
            self.average.copy_to_model()


def with_weight_average_hook(hook_list: list, average: WeightAverage) -> list:
    """``hook_list`` with a :class:`WeightAverageHook` before its precise-BN, checkpointer and
    evaluation hooks, so that the final statistics, checkpoint and evaluation are those of the
    averaged model."""
    later = (hooks.PreciseBN, hooks.PeriodicCheckpointer, hooks.EvalHook)
    index = next((i for i, h in enumerate(hook_list) if isinstance(h, later)), len(hook_list))
    return hook_list[:index] + [WeightAverageHook(average)] + hook_list[index:]
