"""MANN: a memory-augmented LSTM that learns a new task within its forward pass.

Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, "Meta-learning with memory-augmented neural
networks", ICML 2016. An LSTM controller reads every example of an episode with the label of the
previous step and stores what it needs in an external memory: Santoro et al.'s Least Recently
Used Access memory (``memory: lrua``; cosine content reads, writes to the locations read last or
to the least used ones, usage decaying by ``gamma``) or Graves et al. 2014's Neural Turing
Machine addressing (``memory: ntm``; content, interpolation gate, circular shift and sharpening,
erase/add writes), so that the two memories can be compared on the same task. The update rules
are in :mod:`metakit.models.memory`; the sequence protocol in :mod:`metakit.tasks.sequence`.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from ._sequence import SequenceMetaLearner
from .base import register

__all__ = ["MANN"]


@register("mann")
class MANN(SequenceMetaLearner):
    """Memory-augmented neural network on labelled sequences (see the module docstring).

    Args:
        model: the image encoder (``flatten``: raw pixels, as in the paper).
        memory: lrua (Santoro et al. 2016) or ntm (Graves et al. 2014).
        hidden_size: LSTM units of the controller (the paper: 200).
        slots: memory locations (the paper: 128); at least the classes of an episode.
        width: size of one memory location (the paper: 40).
        heads: read heads (the paper: 4); with lrua every read head also writes.
        gamma: lrua only: usage decay in (0, 1) (default 0.95).
        shift_range: ntm only: largest location shift R, shifts -R..R (default 1).
        label_code: (positions, alphabet) of the labels (default: the task's, (1, classes) one-hot or (5, 5) strings).
        example_shape: shape of one image (default: the task's).
    """

    def __init__(
        self,
        model: nn.Module,
        memory: Literal["lrua", "ntm"] = "lrua",
        hidden_size: int = 200,
        slots: int = 128,
        width: int = 40,
        heads: int = 4,
        gamma: float | None = None,
        shift_range: int | None = None,
        label_code: tuple[int, int] | None = None,
        example_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if memory not in ("lrua", "ntm"):
            raise ValueError(f"memory={memory!r} is not known; use lrua (Santoro et al.) or ntm (Graves et al.)")
        if memory == "lrua" and shift_range is not None:
            raise ValueError(f"shift_range={shift_range} is an option of memory=ntm; remove it or set memory=ntm")
        if memory == "ntm" and gamma is not None:
            raise ValueError(f"gamma={gamma} (usage decay) is an option of memory=lrua; remove it or set memory=lrua")
        extra = {"gamma": 0.95 if gamma is None else gamma} if memory == "lrua" else {"shift_range": 1 if shift_range is None else shift_range}
        self._build(model, memory, hidden_size, label_code, example_shape, slots=slots, width=width, heads=heads, **extra)
