"""``DefaultPredictor`` for a list of images, run through the model as one batch."""

from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from ..checkpoint import CheckedDetectionCheckpointer
from ..modeling import RetinaNetPluginWithTTA

INPUT_FORMATS = ("RGB", "BGR")


class Preprocessing:
    """``DefaultPredictor``'s preprocessing without a model:
    ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)`` (unless ``resize`` is False:
    the image at its own size) and BGR input converted to ``INPUT.FORMAT`` (``BatchPredictor`` and
    the ONNX Runtime backend share it)."""

    def __init__(self, cfg, resize: bool = True):
        min_size = cfg.INPUT.MIN_SIZE_TEST if resize else 0  # 0: ResizeShortestEdge keeps the size
        self.aug = T.ResizeShortestEdge([min_size, min_size], cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(
                f"INPUT.FORMAT must be one of {INPUT_FORMATS}, got {self.input_format!r}"
            )

    def prepare(self, original_image: np.ndarray) -> Dict:
        """The model input for one (H, W, 3) uint8 BGR image: {"image": [3, h, w] float32, "height",
        "width"}."""
        if (
            not isinstance(original_image, np.ndarray)
            or original_image.ndim != 3
            or original_image.shape[2] != 3
        ):
            raise ValueError(
                f"an image must be an (H, W, 3) numpy array, got "
                f"{getattr(original_image, 'shape', type(original_image).__name__)}"
            )
        if self.input_format == "RGB":
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.aug.get_transform(original_image).apply_image(original_image)
        image = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        return {"image": image, "height": height, "width": width}


class BatchPredictor(Preprocessing):
    """Like Detectron2's ``DefaultPredictor`` (the model of ``cfg`` in eval mode with
    ``cfg.MODEL.WEIGHTS``, ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``, BGR
    input converted to ``INPUT.FORMAT``), but called with a list of images, which go through the
    model in one forward.

    In a batch, images are padded to the largest one (rounded up to the backbone's size
    divisibility). Images whose padded size equals the batch's get the detections
    ``DefaultPredictor`` gives them, up to float rounding; a smaller image gets zero padding further
    out, which changes the features near its bottom and right borders (the convolutions see padding
    where alone they saw the tensor's edge), and so can change its detections. Weights are loaded
    with the plugin's checkpointer: a missing or unreadable file is an error naming it.

    With ``TEST.AUG.ENABLED``, calls run the model under test-time augmentation
    (:class:`~retinanet_plugin.modeling.RetinaNetPluginWithTTA`: each image at its own size, resized
    to each of ``TEST.AUG.MIN_SIZES``, mirrored with ``TEST.AUG.FLIP``); :meth:`prepare` and
    ``model`` stay the plain model's (what export uses).
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()  # cfg can be modified by model
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        CheckedDetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS, checkpointables=[])
        super().__init__(cfg)
        # what __call__ runs: the model on prepare()'s inputs, or under test-time augmentation on
        # the images at their own size (the augmentation resizes them)
        self.detector, self.detector_inputs = self.model, self
        if cfg.TEST.AUG.ENABLED:
            self.detector = RetinaNetPluginWithTTA(cfg, self.model)
            self.detector_inputs = Preprocessing(cfg, resize=False)

    def __call__(self, original_images: Sequence[np.ndarray]) -> List[Dict]:
        """
        Args:
            original_images: (H_i, W_i, 3) uint8 images in BGR order, as ``DefaultPredictor`` takes
                one.
        Returns:
            per image, {"instances": Instances} in its original resolution, in the order given.
        """
        if isinstance(original_images, np.ndarray):
            raise TypeError("BatchPredictor takes a list of images; for one image, pass [image]")
        if len(original_images) == 0:
            return []
        with torch.no_grad():
            inputs = [self.detector_inputs.prepare(image) for image in original_images]
            return self.detector(inputs)
