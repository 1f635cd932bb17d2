"""The config of a command-line run: the plugin's keys, a YAML, overrides, and a CPU fallback."""
from typing import List, Sequence, Tuple

import torch
from detectron2.config import CfgNode, get_cfg

from ..config import add_retinanet_plugin_config


def config_from_file(config_file: str, opts: Sequence[str] = ()) -> Tuple[CfgNode, List[str]]:
    """A Detectron2 config with the plugin's keys, merged from ``config_file`` and ``KEY VALUE`` overrides.

    On a machine without CUDA, a config that asks for it runs on the CPU instead, with mixed precision (if on)
    in bfloat16. Returns the (unfrozen) config and the warnings to log about it.
    """
    cfg = add_retinanet_plugin_config(get_cfg())
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    warnings = []
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        warnings.append("No CUDA device is available: running on the CPU (MODEL.DEVICE cpu).")
        if cfg.SOLVER.AMP.ENABLED and cfg.MODEL.RETINANET_PLUGIN.AMP_DTYPE in ("auto", "float16"):
            cfg.MODEL.RETINANET_PLUGIN.AMP_DTYPE = "bfloat16"
            warnings.append(
                "SOLVER.AMP.ENABLED on the CPU: mixed precision uses bfloat16 (MODEL.RETINANET_PLUGIN.AMP_DTYPE bfloat16)."
            )
    return cfg, warnings
