"""Training utilities: the trainer and an atomic checkpointer."""
from .checkpointer import AtomicDetectionCheckpointer
from .trainer import RetinaNetPluginTrainer, wrap_for_distributed

__all__ = ["AtomicDetectionCheckpointer", "RetinaNetPluginTrainer", "wrap_for_distributed"]
