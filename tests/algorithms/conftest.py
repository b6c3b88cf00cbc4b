"""Shared helpers of the algorithm tests."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import Tensor


class _Box:
    __slots__ = ("t", "__weakref__")

    def __init__(self, t: Tensor) -> None:
        self.t = t


class SavedBytes:
    """Bytes autograd keeps for the backward pass of the graphs built inside the block.

    Every tensor saved for backward passes through the pack hook of
    :func:`torch.autograd.graph.saved_tensors_hooks`; a weak reference to its box tells whether a
    live graph still holds it, so :meth:`live` counts what the graph keeps, not what a step
    saved and freed again (distinct storages once)."""

    def __enter__(self) -> "SavedBytes":
        self._refs: list[weakref.ref] = []

        def pack(t: Tensor) -> _Box:
            box = _Box(t)
            self._refs.append(weakref.ref(box))
            return box

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def live(self) -> int:
        storages = {}
        for ref in self._refs:
            box = ref()
            if box is not None:
                st = box.t.untyped_storage()
                storages[st.data_ptr()] = st.nbytes()
        return sum(storages.values())


@pytest.fixture
def saved_bytes() -> type[SavedBytes]:
    """``with saved_bytes() as s: ...; s.live()``: bytes autograd still keeps for backward."""
    return SavedBytes
