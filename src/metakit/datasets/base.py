"""Class-indexed datasets held in memory.

Every few-shot dataset in metakit ends up as a :class:`ClassIndexedDataset`: one tensor with
all examples grouped by class, and the offsets where each class starts. Samplers index into it
with tensor operations, so drawing episodes never touches the disk or Python per image.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["ClassIndexedDataset"]

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class ClassIndexedDataset:
    """Examples grouped by class, in memory.

    Args:
        data: ``[total, *shape]`` tensor. ``uint8`` data is read as ``value / 255`` (float32)
            when episodes are drawn; floating data is used as it is.
        offsets: ``[num_classes + 1]`` increasing integer tensor; class ``c`` holds
            ``data[offsets[c]:offsets[c + 1]]``.
        class_names: one name per class (defaults to ``"0", "1", ...``).
        name: a short name for messages and results (``"omniglot"``, ``"folder"``...).
        meta: plain metadata (protocol, split, preprocessing) copied into results.
    """

    def __init__(
        self,
        data: Tensor,
        offsets: Tensor,
        class_names: Sequence[str] | None = None,
        name: str = "tensors",
        meta: dict | None = None,
    ) -> None:
        if not isinstance(data, Tensor):
            raise TypeError(f"data must be a torch.Tensor, got {type(data).__name__}")
        offsets = torch.as_tensor(offsets)
        if offsets.dtype not in _INT_DTYPES:  # casting would silently truncate 4.5 to 4
            raise TypeError(
                f"offsets has dtype {offsets.dtype} ({offsets}); offsets are indices into data and must be "
                "integers: pass an integer tensor, e.g. torch.tensor([0, 20, 40])"
            )
        offsets = offsets.to(torch.int64)
        if offsets.dim() != 1 or offsets.numel() < 1:
            raise ValueError(f"offsets must be a 1-D tensor [num_classes + 1], got shape {tuple(offsets.shape)}")
        if offsets.numel() < 2:
            raise ValueError("the dataset is empty (offsets describe 0 classes); give at least one class")
        if int(offsets[0]) != 0 or int(offsets[-1]) != data.shape[0]:
            raise ValueError(
                f"offsets must start at 0 and end at len(data)={data.shape[0]}, "
                f"got {int(offsets[0])}..{int(offsets[-1])}"
            )
        counts = offsets[1:] - offsets[:-1]
        if bool((counts <= 0).any()):
            bad = int(torch.nonzero(counts <= 0)[0])
            raise ValueError(f"class {bad} has {int(counts[bad])} examples; every class needs at least one")
        n = counts.numel()
        if class_names is None:
            class_names = [str(i) for i in range(n)]
        class_names = list(class_names)
        if len(class_names) != n:
            raise ValueError(f"class_names has {len(class_names)} entries but offsets describe {n} classes")
        self.data = data
        self.offsets = offsets
        self.counts = counts
        self.class_names = class_names
        self.name = name
        self.meta = dict(meta or {})

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_tensors(
        cls,
        data: Tensor,
        labels: Tensor,
        class_names: Sequence[str] | None = None,
        name: str = "tensors",
        meta: dict | None = None,
    ) -> "ClassIndexedDataset":
        """Build from examples and integer labels in any order (they are grouped by class).

        Labels may be any integers; classes are numbered in increasing label order and
        ``class_names`` (if given) must follow that order.
        """
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.shape[0] != data.shape[0]:
            raise ValueError(
                f"labels has shape {tuple(labels.shape)} but data has {data.shape[0]} examples; "
                "give one integer label per example"
            )
        if data.shape[0] == 0:
            raise ValueError("data is empty; give at least one example")
        if labels.is_floating_point():
            raise TypeError(f"labels has dtype {labels.dtype}; class labels must be integers")
        uniq, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        order = torch.argsort(inverse, stable=True)
        offsets = torch.zeros(len(uniq) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(counts, 0)
        if class_names is None:
            class_names = [str(int(u)) for u in uniq]
        return cls(data[order], offsets, class_names, name=name, meta=meta)

    # -- queries ------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.counts.numel()

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    @property
    def min_count(self) -> int:
        return int(self.counts.min())

    def __len__(self) -> int:
        return self.data.shape[0]

    def class_examples(self, c: int) -> Tensor:
        """The stored examples of class ``c`` (uint8 or float, as stored)."""
        if not 0 <= c < self.num_classes:
            raise IndexError(f"class {c} out of range 0..{self.num_classes - 1}")
        return self.data[int(self.offsets[c]) : int(self.offsets[c + 1])]

    def to_float(self, x: Tensor) -> Tensor:
        """Stored examples as float32 model input (``uint8`` is divided by 255)."""
        if x.dtype == torch.uint8:
            return x.to(torch.float32).div_(255.0)
        return x

    def subset(self, classes: Sequence[int] | Tensor, name: str | None = None) -> "ClassIndexedDataset":
        """A dataset of the given classes only (renumbered in the given order)."""
        classes = torch.as_tensor(classes, dtype=torch.int64)
        parts = [self.class_examples(int(c)) for c in classes]
        counts = torch.tensor([p.shape[0] for p in parts], dtype=torch.int64)
        offsets = torch.zeros(len(parts) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(counts, 0)
        return ClassIndexedDataset(
            torch.cat(parts) if parts else self.data[:0],
            offsets,
            [self.class_names[int(c)] for c in classes],
            name=name or self.name,
            meta=self.meta,
        )

    def __repr__(self) -> str:
        return (
            f"ClassIndexedDataset(name={self.name!r}, classes={self.num_classes}, examples={len(self)}, "
            f"shape={self.example_shape}, dtype={self.data.dtype})"
        )
