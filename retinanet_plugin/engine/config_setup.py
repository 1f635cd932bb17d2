"""The config of a command-line run: the plugin's keys, a YAML, overrides, datasets given by files,
and a CPU fallback."""

from typing import List, Sequence, Tuple

import torch
from detectron2.config import CfgNode, get_cfg

from ..config import add_retinanet_plugin_config
from ..data.file_datasets import apply_num_classes_from_data, register_datasets_of_config
from ..data.image_quirks import apply_image_size_limit


def config_from_file(config_file: str, opts: Sequence[str] = ()) -> Tuple[CfgNode, List[str]]:
    """A Detectron2 config with the plugin's keys, merged from ``config_file`` and ``KEY VALUE``
    overrides.

    Datasets of ``DATASETS.TRAIN``/``TEST`` given by files (``coco:JSON[:IMAGE_ROOT]``,
    ``voc:FOLDER[:SPLIT]``) are registered, ``MODEL.RETINANET_PLUGIN.NUM_CLASSES_FROM_DATA`` is
    applied and ``DATASETS.MAX_IMAGE_PIXELS`` set. On a machine without CUDA, a config that asks for
    it runs on the CPU instead, with mixed precision (if on) in bfloat16. Returns the (unfrozen)
    config and the warnings to log about it.
    """
    cfg = add_retinanet_plugin_config(get_cfg())
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    register_datasets_of_config(cfg)
    apply_num_classes_from_data(cfg)
    apply_image_size_limit(cfg)
    warnings = []
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        warnings.append("No CUDA device is available: running on the CPU (MODEL.DEVICE cpu).")
        if cfg.SOLVER.AMP.ENABLED and cfg.MODEL.RETINANET_PLUGIN.AMP_DTYPE in ("auto", "float16"):
            cfg.MODEL.RETINANET_PLUGIN.AMP_DTYPE = "bfloat16"
            warnings.append(
                "SOLVER.AMP.ENABLED on the CPU: mixed precision uses bfloat16 "
                "(MODEL.RETINANET_PLUGIN.AMP_DTYPE bfloat16)."
            )
    return cfg, warnings
