"""Small utilities shared by the plugin's modules."""
from .atomic_write import atomic_write

__all__ = ["atomic_write"]
