"""Episodes: the unit of meta-learning data.

An :class:`Episode` is one task: a support set the learner adapts on and a query set it is
scored on. The split between the two is explicit (two pairs of tensors), never implied by the
order in which a sampler produced the examples.

An :class:`EpisodeBatch` stacks ``B`` episodes of the same shape on a leading task dimension,
so that an algorithm can loop or ``vmap`` over tasks.

Classification episodes carry integer labels remapped to ``0 .. ways-1`` and ``ways`` set;
regression episodes (e.g. sinusoids) carry float targets and ``ways=None``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Iterator, Self

import torch
from torch import Tensor

__all__ = ["Episode", "EpisodeBatch"]


def _check_pair(name_x: str, x: Tensor, name_y: str, y: Tensor, lead: int) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(
            f"{name_x} and {name_y} must be torch.Tensor, got {type(x).__name__} and {type(y).__name__}"
        )
    if x.dim() < lead + 1 or y.dim() < lead + 1:
        raise ValueError(
            f"{name_x} has shape {tuple(x.shape)} and {name_y} has shape {tuple(y.shape)}; "
            f"both need at least {lead + 1} dimension(s) ({'[tasks, examples, ...]' if lead else '[examples, ...]'})"
        )
    if x.shape[: lead + 1] != y.shape[: lead + 1]:
        raise ValueError(
            f"{name_x} has shape {tuple(x.shape)} but {name_y} has shape {tuple(y.shape)}: "
            f"the leading {lead + 1} dimension(s) must match (one label per example)"
        )


def _check_labels(name: str, y: Tensor, ways: int) -> None:
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(
            f"{name} has dtype {y.dtype}; classification labels must be integers in 0..{ways - 1} "
            "(pass ways=None for a regression episode)"
        )
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= ways:
            raise ValueError(
                f"{name} holds labels in {lo}..{hi} but ways={ways}: labels must be remapped to 0..{ways - 1}"
            )


@dataclass(frozen=True)
class _Tasks:
    """The fields of :class:`Episode` and :class:`EpisodeBatch` and the checks they share;
    ``_lead`` is the number of leading task dimensions (0 for one task, 1 for a batch)."""

    _lead: ClassVar[int]

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int | None = None
    classes: Tensor | None = None

    def __post_init__(self) -> None:
        lead = self._lead
        _check_pair("support_x", self.support_x, "support_y", self.support_y, lead)
        _check_pair("query_x", self.query_x, "query_y", self.query_y, lead)
        if lead and self.support_x.shape[0] != self.query_x.shape[0]:
            raise ValueError(
                f"support_x has {self.support_x.shape[0]} tasks but query_x has {self.query_x.shape[0]}; "
                "the leading (task) dimension must match"
            )
        if self.support_x.shape[lead + 1 :] != self.query_x.shape[lead + 1 :]:
            raise ValueError(
                f"support_x has example shape {tuple(self.support_x.shape[lead + 1 :])} but query_x has "
                f"{tuple(self.query_x.shape[lead + 1 :])}; support and query inputs must have the same shape"
            )
        if self.ways is not None:
            if not isinstance(self.ways, int) or self.ways < 1:
                raise ValueError(f"ways={self.ways!r} must be a positive int (or None for regression)")
            _check_labels("support_y", self.support_y, self.ways)
            _check_labels("query_y", self.query_y, self.ways)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Self:
        """Move every tensor to ``device``; cast floating tensors (inputs, regression targets) to ``dtype``.

        Integer labels and class indices keep their dtype.
        """
        return _map_tensors(self, lambda t: _move(t, device, dtype))


@dataclass(frozen=True)
class Episode(_Tasks):
    """One few-shot task.

    Attributes:
        support_x: ``[S, *x_shape]`` inputs the learner adapts on.
        support_y: ``[S]`` integer labels in ``0..ways-1`` (or ``[S, *y_shape]`` float targets).
        query_x: ``[Q, *x_shape]`` inputs the adapted learner is scored on.
        query_y: ``[Q]`` labels (or ``[Q, *y_shape]`` targets).
        ways: number of classes, or ``None`` for regression.
        classes: optional ``[ways]`` global class indices of the dataset the episode came from
            (label ``i`` is class ``classes[i]``); ``None`` when unknown.
    """

    _lead = 0

    def unsqueeze(self) -> "EpisodeBatch":
        """This episode as a batch of one task."""
        return EpisodeBatch.stack([self])


@dataclass(frozen=True)
class EpisodeBatch(_Tasks):
    """``B`` episodes of identical shape stacked on a leading task dimension.

    Attributes:
        support_x: ``[B, S, *x_shape]``.
        support_y: ``[B, S]`` integer labels in ``0..ways-1`` (or ``[B, S, *y_shape]`` targets).
        query_x: ``[B, Q, *x_shape]``.
        query_y: ``[B, Q]`` labels (or ``[B, Q, *y_shape]`` targets).
        ways: number of classes per episode, or ``None`` for regression.
        classes: optional ``[B, ways]`` global class indices (see :class:`Episode`).
    """

    _lead = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.classes is not None and tuple(self.classes.shape) != (self.num_tasks, self.ways):
            raise ValueError(
                f"classes has shape {tuple(self.classes.shape)}; expected [tasks, ways] = "
                f"[{self.num_tasks}, {self.ways}]"
            )

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def __len__(self) -> int:
        return self.num_tasks

    def __getitem__(self, i: int) -> Episode:
        return Episode(
            self.support_x[i],
            self.support_y[i],
            self.query_x[i],
            self.query_y[i],
            self.ways,
            None if self.classes is None else self.classes[i],
        )

    def __iter__(self) -> Iterator[Episode]:
        for i in range(self.num_tasks):
            yield self[i]

    def split(self, size: int) -> list["EpisodeBatch"]:
        """Chunks of at most ``size`` tasks (for evaluation in batches)."""
        if size < 1:
            raise ValueError(f"size={size} must be >= 1")
        out = []
        for s in range(0, self.num_tasks, size):
            out.append(_map_tensors(self, lambda t: t[s : s + size]))
        return out

    @staticmethod
    def stack(episodes: list[Episode]) -> "EpisodeBatch":
        """Stack episodes of identical shapes and ``ways`` into one batch."""
        if not episodes:
            raise ValueError("episodes is empty; need at least one Episode to stack")
        return _join(episodes, torch.stack, "episodes", "stack")

    @staticmethod
    def concat(batches: list["EpisodeBatch"]) -> "EpisodeBatch":
        """Concatenate batches of equal ``ways`` along the task dimension."""
        if not batches:
            raise ValueError("batches is empty; need at least one EpisodeBatch")
        return _join(batches, torch.cat, "batches", "concat")


def _join(parts: list[Episode] | list[EpisodeBatch], op: Callable[[list[Tensor]], Tensor], what: str, verb: str) -> EpisodeBatch:
    """One batch of ``parts`` (of one ``ways``) joined field by field with ``op`` (``torch.stack`` for
    episodes, ``torch.cat`` for batches); ``classes`` kept when every part has them."""
    ways = {p.ways for p in parts}
    if len(ways) != 1:
        raise ValueError(f"{what} have different ways {sorted(ways, key=str)}; {verb} equal-ways {what} only")
    return EpisodeBatch(
        op([p.support_x for p in parts]),
        op([p.support_y for p in parts]),
        op([p.query_x for p in parts]),
        op([p.query_y for p in parts]),
        parts[0].ways,
        op([p.classes for p in parts]) if all(p.classes is not None for p in parts) else None,
    )


def _move(t: Tensor, device, dtype) -> Tensor:
    if dtype is not None and t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device) if device is not None else t


def _map_tensors(obj, fn):
    kwargs = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        kwargs[f.name] = fn(v) if isinstance(v, Tensor) else v
    return type(obj)(**kwargs)
