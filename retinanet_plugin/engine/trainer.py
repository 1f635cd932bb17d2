"""Detectron2's DefaultTrainer, ready for GPUs and for CPU-only machines."""

import logging
import weakref
from collections import OrderedDict

import torch

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.engine.train_loop import TrainerBase
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import CheckedDetectionCheckpointer
from ..data.file_datasets import apply_num_classes_from_data, register_datasets_of_config
from ..data.image_quirks import apply_image_size_limit
from ..data.checked_loading import load_checked_dataset_dicts
from ..data.checked_mapper import CheckedDatasetMapper
from ..evaluation import PluginCOCOEvaluator, default_evaluation_folder
from ..modeling import RetinaNetPluginWithTTA
from .buffer_sync import broadcast_buffers_from_main
from .finite_checks import finite_weights_checkpointer_hooks
from .mixed_precision import amp_dtype_for
from .train_loops import FiniteLossAMPTrainer, FiniteLossSimpleTrainer
from .weight_averaging import WeightAverage, with_weight_average_hook

logger = logging.getLogger(__name__)
# logged when an evaluation with test-time augmentation has its results (`make demo` looks for it)
TTA_DONE = "Evaluation with test-time augmentation done"


def wrap_for_distributed(model: torch.nn.Module, mixed_precision: bool = False) -> torch.nn.Module:
    """DDP when there are several processes: on the process's GPU, or (GLOO, no ``device_ids``) on
    the CPU. A model that trains channels-last (under mixed precision, ``model.channels_last``:
    ``MODEL.RETINANET_PLUGIN.MEMORY_FORMAT``) gets channels-last weights first, so that their
    gradients have the strides of DDP's bucket views (the 1x1 convolutions' channels-last
    gradients differ from NCHW weights in the strides of their size-1 dims: PyTorch then warns
    "Grad strides do not match bucket view strides" and copies them); the values are unchanged."""
    if comm.get_world_size() == 1:
        return model
    if mixed_precision and getattr(model, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    on_cuda = next(model.parameters()).device.type == "cuda"
    device_ids = [comm.get_local_rank()] if on_cuda else None
    return create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)


class RetinaNetPluginTrainer(DefaultTrainer):
    """``DefaultTrainer`` with these changes: DDP also works on CPU processes (``--num-gpus N``
    without GPUs runs N CPU workers over GLOO), checkpoints are written atomically, and evaluation
    uses Detectron2's ``COCOEvaluator`` on faster-coco-eval when it is installed, else on
    pycocotools (``PluginCOCOEvaluator``; no compiled Detectron2 extension needed). Datasets given
    by files (``coco:JSON``, ``voc:FOLDER``) are registered, and
    ``MODEL.RETINANET_PLUGIN.NUM_CLASSES_FROM_DATA`` applied, when the trainer is built. For
    reliability (``retinanet_plugin.data.checked_loading`` and ``.checked_mapper``,
    ``.train_loops``, ``.finite_checks``, ``retinanet_plugin.checkpoint``): the data loaders check
    and repair the dataset dicts and read images with clear errors; a non-finite loss term stops
    training naming it; no checkpoint of non-finite weights is written; unreadable checkpoints are
    named, and ``--resume`` falls back to the newest readable one. Every worker evaluates the main
    worker's buffers (``buffer_sync``)."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = prepare_config(cfg)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_for_distributed(model, cfg.SOLVER.AMP.ENABLED)
        if cfg.SOLVER.AMP.ENABLED:
            device_type = torch.device(cfg.MODEL.DEVICE).type
            precision = amp_dtype_for(cfg.MODEL.RETINANET_PLUGIN.AMP_DTYPE, device_type)
            self._trainer = FiniteLossAMPTrainer(model, data_loader, optimizer, precision=precision)
        else:
            self._trainer = FiniteLossSimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = CheckedDetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.weight_average = None
        if cfg.MODEL.RETINANET_PLUGIN.EMA.ENABLED:
            ema = cfg.MODEL.RETINANET_PLUGIN.EMA
            self.weight_average = WeightAverage(model, ema.DECAY, ema.RAMP_ITERS)
            self.checkpointer.add_checkpointable("weight_average", self.weight_average)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        hook_list = finite_weights_checkpointer_hooks(super().build_hooks())
        if self.weight_average is not None:
            hook_list = with_weight_average_hook(hook_list, self.weight_average)
        if self.cfg.TEST.AUG.ENABLED:  # after the plain evaluation of the final model
            # built now, so that a bad TEST.AUG or MODEL.RETINANET_PLUGIN.TTA value stops the run
            # before training, not after it
            tta_model = RetinaNetPluginWithTTA(self.cfg, self.model)
            tta = hooks.EvalHook(0, lambda: self.test_with_TTA(self.cfg, tta_model))
            evals = [i for i, h in enumerate(hook_list) if isinstance(h, hooks.EvalHook)]
            # else before the writer, the last hook, so that its results are written
            hook_list.insert(evals[-1] + 1 if evals else len(hook_list) - 1, tta)
        return hook_list

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """``DefaultTrainer.test``, after every worker has taken the main worker's buffers (the
        checkpointed model's BatchNorm statistics: ``buffer_sync``)."""
        broadcast_buffers_from_main(model)
        return super().test(cfg, model, evaluators)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """``test`` of ``model`` under test-time augmentation (``TEST.AUG``: ``model`` wrapped in
        ``RetinaNetPluginWithTTA`` unless it is one), each image read at its own size and resized
        by the augmentation only; the results' keys end in "_TTA", their files go to
        ``OUTPUT_DIR/inference_TTA/<dataset>``."""
        if not cfg.DATASETS.TEST:
            return OrderedDict()
        tta_cfg = cfg.clone()
        tta_cfg.defrost()
        tta_cfg.INPUT.MIN_SIZE_TEST = 0  # no resize in the loader: each scale from the original
        tta_cfg.freeze()
        evaluators = [
            cls.build_evaluator(
                cfg, name, default_evaluation_folder(cfg.OUTPUT_DIR, name, "inference_TTA")
            )
            for name in cfg.DATASETS.TEST
        ]
        aug = cfg.TEST.AUG
        logger.info(
            "Evaluating with test-time augmentation (TEST.AUG: shortest sides "
            f"{tuple(aug.MIN_SIZES)}, longest at most {aug.MAX_SIZE}, flip {aug.FLIP})"
        )
        if not isinstance(model, RetinaNetPluginWithTTA):
            model = RetinaNetPluginWithTTA(cfg, model)
        results = cls.test(tta_cfg, model, evaluators)
        logger.info(f"{TTA_DONE} (the AP table above)")
        return OrderedDict((key + "_TTA", value) for key, value in results.items())

    @classmethod
    def build_train_loader(cls, cfg):
        register_datasets_of_config(cfg)
        apply_image_size_limit(cfg)
        dataset = load_checked_dataset_dicts(cfg, cfg.DATASETS.TRAIN, is_train=True)
        mapper = CheckedDatasetMapper(cfg, is_train=True)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        register_datasets_of_config(cfg)
        apply_image_size_limit(cfg)
        dataset = load_checked_dataset_dicts(cfg, dataset_name, is_train=False)
        mapper = CheckedDatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(
            dataset, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's SGD, or AdamW, as ``MODEL.RETINANET_PLUGIN.OPTIMIZER`` says."""
        name = cfg.MODEL.RETINANET_PLUGIN.OPTIMIZER
        if name == "SGD":
            return DefaultTrainer.build_optimizer(cfg, model)
        if name != "AdamW":
            raise ValueError(
                f"MODEL.RETINANET_PLUGIN.OPTIMIZER must be 'SGD' or 'AdamW', got {name!r}"
            )
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        optimizer = torch.optim.AdamW(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )
        return maybe_add_gradient_clipping(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """Detectron2's COCOEvaluator on faster-coco-eval (else pycocotools, with one log line)."""
        register_datasets_of_config(cfg)
        output_folder = output_folder or default_evaluation_folder(cfg.OUTPUT_DIR, dataset_name)
        return PluginCOCOEvaluator(dataset_name, output_dir=output_folder)


def prepare_config(cfg):
    """``cfg``, or a copy with ``MODEL.RETINANET.NUM_CLASSES`` taken from the data when
    ``MODEL.RETINANET_PLUGIN.NUM_CLASSES_FROM_DATA`` asks for it; the file-given datasets are
    registered."""
    register_datasets_of_config(cfg)
    if not cfg.MODEL.RETINANET_PLUGIN.get("NUM_CLASSES_FROM_DATA", False):
        return cfg
    cfg = cfg.clone()
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    apply_num_classes_from_data(cfg)
    if was_frozen:
        cfg.freeze()
    return cfg


__all__ = ["RetinaNetPluginTrainer", "prepare_config", "wrap_for_distributed"]
