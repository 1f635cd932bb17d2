"""Mixed-precision training on any device: fp16 with a gradient scaler on GPUs, bfloat16 on
CPUs."""

import time

import torch
from detectron2.engine import AMPTrainer

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_dtype_for(name: str, device_type: str) -> torch.dtype:
    """``MODEL.RETINANET_PLUGIN.AMP_DTYPE`` as a dtype: "auto" is float16 on CUDA and bfloat16
    elsewhere."""
    if name == "auto":
        return torch.float16 if device_type == "cuda" else torch.bfloat16
    if name not in AMP_DTYPES:
        raise ValueError(
            f"MODEL.RETINANET_PLUGIN.AMP_DTYPE must be 'auto' or one of {tuple(AMP_DTYPES)}, "
            f"got {name!r}"
        )
    return AMP_DTYPES[name]


class MixedPrecisionTrainer(AMPTrainer):
    """Detectron2's ``AMPTrainer`` without its CUDA-only assertion: the forward runs under
    ``torch.autocast`` for the model's device with ``precision``; the gradient scaler is on only for
    float16 (bfloat16 has fp32's range).

    The plugin's losses stay fp32: the focal loss op accumulates in fp32 from fp16/bf16 logits and
    the box loss casts the deltas to fp32.
    """

    def __init__(
        self, model, data_loader, optimizer, precision: torch.dtype = torch.float16, **kwargs
    ):
        self.device_type = next(model.parameters()).device.type
        grad_scaler = torch.amp.GradScaler(self.device_type, enabled=precision == torch.float16)
        super().__init__(
            model, data_loader, optimizer, grad_scaler=grad_scaler, precision=precision, **kwargs
        )

    def run_step(self):
        assert self.model.training, "[MixedPrecisionTrainer] the model was switched to eval mode"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        self.optimizer.zero_grad()
        with torch.autocast(device_type=self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        total = sum(loss.float() for loss in loss_dict.values())
        self.grad_scaler.scale(total).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
