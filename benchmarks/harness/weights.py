"""The RetinaNet benchmarks' weights: seeded, calibrated once per weight layout, saved, and loaded
into every model before each measured case, so that every model and every case starts from the same
values.

The plugin loads Detectron2's weights through the checkpoint converter
(``peers.copy_detectron2_weights``): both report the same ``weights_fingerprint``. torchvision's
layout differs: same seed, other values, calibrated the same way
(``calibration.calibrate_random_weights``).
"""

import hashlib
import os
from typing import Dict, Sequence, Tuple

import torch

from benchmarks.harness import calibration, inputs, peers

CANDIDATE_FRACTION = 1e-3  # of (anchor, class) scores above the score threshold (calibration)
NORMALIZER_EMA_INIT = 100.0  # Detectron2's start value, the plugin config's default


def prepare_weights(
    models: Sequence[str], image_size: Tuple[int, int], depth: int, folder: str
) -> Dict[str, Dict[str, object]]:
    """Seeded, calibrated weights for Detectron2's layout (shared by the plugin) and torchvision's,
    saved under ``folder``: ``{layout: {"path": ..., "calibration": ...}}``. Built on the CPU,
    calibrated on an inference image of ``image_size``."""
    import retinanet_plugin  # noqa: F401  (registers the plugin's components)

    cfg = peers.plugin_config("cpu", depth=depth, num_classes=inputs.NUM_CLASSES)
    image = inputs.make_samples(*image_size, 1, 0, seed=inputs.SEED + 1)[0][0]
    out = {}
    for layout in sorted({peers.layout_of(m) for m in models}):
        torch.manual_seed(inputs.SEED)
        model = peers.build_model(layout, cfg, image_size)
        batch = [image.flip(0) / 255.0] if layout == "torchvision" else [{"image": image}]
        result = calibration.calibrate_random_weights(
            model,
            lambda model=model: model(batch),
            torch.Generator().manual_seed(inputs.SEED + 2),
            CANDIDATE_FRACTION,
            cfg.MODEL.RETINANET.SCORE_THRESH_TEST,
        )
        path = os.path.join(folder, f"{layout}.pth")
        torch.save(model.state_dict(), path)
        out[layout] = {"path": path, "calibration": result}
        del model
    return out


def load_weights(name: str, model: torch.nn.Module, path: str) -> str:
    """Load the weights saved at ``path`` into the model ``name``, restart its loss normaliser, and
    return the fingerprint of the weights loaded."""
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if name == "plugin":
        peers.copy_detectron2_weights(state_dict, model)
    else:
        model.load_state_dict(state_dict, strict=True)
    fingerprint = weights_fingerprint(model.state_dict(), list(state_dict))
    del state_dict
    # The loss normaliser's moving average starts afresh too (Detectron2 creates it on the first
    # step).
    if name == "plugin":
        model.loss_normalizer.fill_(NORMALIZER_EMA_INIT)
    elif name == "detectron2":
        model.__dict__.pop("loss_normalizer", None)
    return fingerprint


def weights_fingerprint(state_dict: Dict[str, torch.Tensor], names: Sequence[str]) -> str:
    """A short digest of the values of ``names`` in ``state_dict``: equal digests mean equal
    weights."""
    digest = hashlib.sha256()
    for name in sorted(names):
        tensor = state_dict[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]
