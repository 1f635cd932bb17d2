"""Detectron2's DefaultTrainer, ready for GPUs and for CPU-only machines."""
import logging
import os
import weakref

import torch

from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer
from detectron2.engine.defaults import create_ddp_model
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .checkpointer import AtomicDetectionCheckpointer


def wrap_for_distributed(model: torch.nn.Module) -> torch.nn.Module:
    """DDP when there are several processes: on the process's GPU, or (GLOO, no ``device_ids``) on the CPU."""
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).device.type == "cuda"
    device_ids = [comm.get_local_rank()] if on_cuda else None
    return create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)


class RetinaNetPluginTrainer(DefaultTrainer):
    """``DefaultTrainer`` with three changes: DDP also works on CPU processes (``--num-gpus N`` without GPUs
    runs N CPU workers over GLOO), checkpoints are written atomically, and evaluation uses
    ``COCOEvaluator(use_fast_impl=False)``, which needs no compiled Detectron2 extension."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_for_distributed(model)
        trainer_class = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_class(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicDetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)


__all__ = ["RetinaNetPluginTrainer", "wrap_for_distributed"]
