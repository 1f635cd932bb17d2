"""Whether a graph is being captured (``torch.jit.trace``, ``torch.compile``, ``torch.export``):
code that caches tensors or picks an eager-only path asks this first."""

import torch

__all__ = ["is_capturing"]


def is_capturing() -> bool:
    """True under ``torch.jit.trace``, ``torch.compile`` (dynamo) and ``torch.export``."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()
