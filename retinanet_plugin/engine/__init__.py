"""Training utilities: the trainer, its checkpointers and its guards against non-finite losses and weights; and
the batched predictor."""
from .batch_predictor import BatchPredictor
from .checked_checkpointer import CheckedDetectionCheckpointer, CheckpointMismatchError, CheckpointReadError
from .checkpointer import AtomicDetectionCheckpointer
from .config_setup import config_from_file
from .hooks import NonFiniteLossError, NonFiniteWeightsError
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
