"""Training utilities: the trainer (``trainer``), its train loops (``train_loops``) and its guards
against non-finite losses and weights (``finite_checks``); the checkpointers (from
``retinanet_plugin.checkpoint``); and the batched predictor."""

from ..checkpoint import (
    AtomicDetectionCheckpointer,
    CheckedDetectionCheckpointer,
    CheckpointMismatchError,
    CheckpointReadError,
)
from .batch_predictor import BatchPredictor
from .config_setup import config_from_file
from .finite_checks import NonFiniteLossError, NonFiniteWeightsError
from .trainer import RetinaNetPluginTrainer, wrap_for_distributed

__all__ = [
    "AtomicDetectionCheckpointer",
    "BatchPredictor",
    "CheckedDetectionCheckpointer",
    "CheckpointMismatchError",
    "CheckpointReadError",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "RetinaNetPluginTrainer",
    "config_from_file",
    "wrap_for_distributed",
]
