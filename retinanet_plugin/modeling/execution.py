"""How the network runs: the memory format, precision and compilation that
``MODEL.RETINANET_PLUGIN`` asks for, resolved once, when the model is built, for its device and
CPU."""

import logging
from typing import Dict, Optional, Union

import torch

from ..env import cpu_has_native_bfloat16

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
INFERENCE_DTYPES = ("float32", "bfloat16", "auto")
# "none", then torch.compile's modes
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

logger = logging.getLogger(__name__)

__all__ = ["COMPILE_MODES", "INFERENCE_DTYPES", "MEMORY_FORMATS", "compiled", "network_execution"]


def network_execution(cfg) -> Dict[str, Union[bool, Optional[str]]]:
    """``RetinaNetPlugin``'s ``channels_last``, ``bfloat16_inference``, ``compile_mode`` and
    ``compile_freezing`` from ``MEMORY_FORMAT`` ("auto": channels-last on the CPU, at inference and
    in training under autocast), ``INFERENCE_DTYPE`` ("auto": bfloat16 on a CPU with bfloat16
    instructions), ``COMPILE`` ("none": None) and ``COMPILE_FREEZING``; a value outside their
    choices is an error naming the key."""
    plugin = cfg.MODEL.RETINANET_PLUGIN
    for key, choices in (
        ("MEMORY_FORMAT", MEMORY_FORMATS),
        ("INFERENCE_DTYPE", INFERENCE_DTYPES),
        ("COMPILE", COMPILE_MODES),
    ):
        if plugin.get(key) not in choices:
            raise ValueError(
                f"MODEL.RETINANET_PLUGIN.{key} must be one of {choices}, got {plugin.get(key)!r}"
            )
    on_cpu = torch.device(cfg.MODEL.DEVICE).type == "cpu"
    return {
        "channels_last": plugin.MEMORY_FORMAT == "channels_last"
        or (plugin.MEMORY_FORMAT == "auto" and on_cpu),
        "bfloat16_inference": plugin.INFERENCE_DTYPE == "bfloat16"
        or (plugin.INFERENCE_DTYPE == "auto" and on_cpu and cpu_has_native_bfloat16()),
        "compile_mode": None if plugin.COMPILE == "none" else plugin.COMPILE,
        "compile_freezing": bool(plugin.COMPILE_FREEZING),
    }


def compiled(function, mode: str, freezing: bool):
    """``torch.compile(function, mode=mode)``, with Inductor's freezing passes for calls without
    autograd when ``freezing`` (``torch.compile`` takes a mode or options, not both: the mode's
    options, then ``freezing``)."""
    from torch._inductor import config as inductor_config, list_mode_options

    if inductor_config.freezing:
        # Set for the whole process (TORCHINDUCTOR_FREEZING=1 or torch._inductor.config), freezing
        # reaches dynamo too, which then bakes the parameters into the compiled code as constants:
        # a checkpoint loaded later, or the next evaluation during training, would run the old ones.
        logger.warning(
            "torch._inductor.config.freezing is on for the whole process: the compiled network "
            "may keep the weights it first ran with (unset TORCHINDUCTOR_FREEZING; "
            "MODEL.RETINANET_PLUGIN.COMPILE_FREEZING applies the freezing passes without that)"
        )
    if not freezing:
        return torch.compile(function, mode=mode)

    options = {**list_mode_options(mode), "freezing": True}
    return torch.compile(function, options=options)
