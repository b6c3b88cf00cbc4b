"""Real data on disk -> class-indexed tensors in memory."""

from .base import ClassIndexedDataset

__all__ = ["ClassIndexedDataset"]
