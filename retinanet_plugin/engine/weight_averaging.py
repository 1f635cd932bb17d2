"""An exponential moving average (EMA) of the model's weights during training
(``MODEL.RETINANET_PLUGIN.EMA``).

After each iteration ``t`` (1, 2, ...) every floating-point parameter and buffer ``w`` updates its
average ``a`` as ``a = d_t * a + (1 - d_t) * w``, with ``d_t = DECAY * (1 - exp(-t / RAMP_ITERS))``:
the average follows the weights closely at first and averages over about ``1 / (1 - DECAY)``
iterations later. Integer buffers (BatchNorm's counters) are copied.

What it changes: every checkpoint holds the average beside the weights (``"weight_average"``), so
``--resume`` continues both; after the last iteration the model takes the averaged weights, so the
final checkpoint (``model_final.pth``), the final evaluation and what is deployed from it are the
average. Evaluations during training (``TEST.EVAL_PERIOD``) see the training weights.
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
    """The averaged state of a model (its ``state_dict`` entries); checkpointable."""

    def __init__(self, model: torch.nn.Module, decay: float, ramp_iters: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"MODEL.RETINANET_PLUGIN.EMA.DECAY must be in (0, 1), got {decay}")
        if ramp_iters <= 0:
            raise ValueError(
                f"MODEL.RETINANET_PLUGIN.EMA.RAMP_ITERS must be positive, got {ramp_iters}"
            )
        self.decay, self.ramp_iters = decay, ramp_iters
        self.reset(model)

    @torch.no_grad()
    def reset(self, model: torch.nn.Module) -> None:
        """Start again from ``model``'s current state (no update counted)."""
        self.updates = 0
        self.average: Dict[str, torch.Tensor] = {
            name: value.detach().clone() for name, value in _unwrapped(model).state_dict().items()
        }

    def current_decay(self) -> float:
        """``d_t`` of the next update."""
        return self.decay * (1.0 - math.exp(-(self.updates + 1) / self.ramp_iters))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = self.current_decay()
        averaged, current = [], []
        for name, value in _unwrapped(model).state_dict().items():
            if value.dtype.is_floating_point:
                averaged.append(self.average[name])
                current.append(value.detach())
            else:
                self.average[name].copy_(value)
        torch._foreach_lerp_(averaged, current, 1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Give ``model`` the averaged weights and buffers."""
        _unwrapped(model).load_state_dict(self.average)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.average) - set(state["average"])
        if missing:
            raise KeyError(f"the checkpoint's weight average lacks {sorted(missing)[:5]}")
        for name, value in state["average"].items():
            if name in self.average:
                self.average[name].copy_(value)
        self.updates = int(state["updates"])


class WeightAverageHook(HookBase):
    """Updates a :class:`WeightAverage` after each iteration, and puts it into the model after the
    last one (before the final checkpoint and evaluation, which come after this hook)."""

    def __init__(self, average: WeightAverage):
        self.average = average

    def before_train(self):
        # the average was made with the model, before MODEL.WEIGHTS or a checkpoint without an
        # average was loaded: start it from the weights training starts from
        if self.average.updates == 0:
            self.average.reset(self.trainer.model)

    def after_step(self):
        self.average.update(self.trainer.model)
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self.average.copy_to(self.trainer.model)


def with_weight_average_hook(hook_list: list, average: WeightAverage) -> list:
    """``hook_list`` with a :class:`WeightAverageHook` before its checkpointer and evaluation
    hooks, so that the final checkpoint and evaluation see the averaged model."""
    later = (hooks.PeriodicCheckpointer, hooks.EvalHook)
    index = next((i for i, h in enumerate(hook_list) if isinstance(h, later)), len(hook_list))
    return hook_list[:index] + [WeightAverageHook(average)] + hook_list[index:]
