"""Small utilities shared by the plugin's modules."""

from .atomic_write import TEMPORARY_PREFIX, atomic_write

__all__ = ["TEMPORARY_PREFIX", "atomic_write"]
