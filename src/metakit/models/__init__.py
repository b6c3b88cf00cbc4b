"""Backbones, usable as ordinary ``nn.Module`` and functionally (``torch.func.functional_call``)."""

from __future__ import annotations

from torch import nn

from .conv4 import Conv4
from .conv4_strided import StridedConv4
from .mlp import MLP
from .relation import RelationEncoder, RelationModule

__all__ = ["Conv4", "StridedConv4", "MLP", "RelationEncoder", "RelationModule", "build_model", "available_models"]

_MODELS: dict[str, type[nn.Module]] = {"conv4": Conv4, "conv4_strided": StridedConv4, "mlp": MLP, "relation_encoder": RelationEncoder}


def available_models() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered backbone by name (``"conv4"``, ``"mlp"``) with keyword arguments."""
    if name not in _MODELS:
        import difflib

        close = difflib.get_close_matches(name, _MODELS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"model={name!r} is not known{hint} Available: {', '.join(available_models())}")
    try:
        return _MODELS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"model={name!r} does not accept these options {sorted(kwargs)}: {e}") from None
