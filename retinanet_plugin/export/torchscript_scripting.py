"""TorchScript by scripting, the way Detectron2's deployment guide scripts its own RetinaNet.

Scripting keeps the model's Python interface (a list of {"image": [3, H, W]} dicts in, a list of
``Instances`` out) and its variable-length outputs; tracing (:mod:`.torchscript_export`) captures
the fixed-size padded form instead. The scripted model runs inference only, and, as Detectron2's
scripted models, returns detections in the resolution of the padded batch's images:
``detector_postprocess`` rescales them to the output size.
"""

from typing import Dict, List

import torch
from torch import Tensor, nn

from detectron2.export import scripting_with_instances
from detectron2.structures import Boxes, Instances
from detectron2.utils.testing import convert_scripted_instances

# The fields of the returned Instances, with their types: what ``scripting_with_instances`` needs to
# know.
DETECTION_FIELDS = {"pred_boxes": Boxes, "scores": Tensor, "pred_classes": Tensor}


def script_model(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of a ``RetinaNetPlugin`` (which must be in eval mode), with its
    Instances fields."""
    if model.training:
        raise ValueError(
            "script_model needs a model in eval mode (call model.eval()); scripting is for "
            "inference only"
        )
    return scripting_with_instances(model, DETECTION_FIELDS)


def scripted_detections(
    scripted: torch.jit.ScriptModule, inputs: List[Dict[str, Tensor]]
) -> List[Instances]:
    """Run ``scripted`` on ``inputs`` (the eager model's input dicts; only "image" is passed on, the
    scripted signature being ``List[Dict[str, Tensor]]``) and return plain Detectron2 ``Instances``
    in each image's resolution inside the batch (rescale with ``detector_postprocess``)."""
    with torch.no_grad():
        outputs = scripted([{"image": x["image"]} for x in inputs])
    return [convert_scripted_instances(instances) for instances in outputs]
