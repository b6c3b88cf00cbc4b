"""Backbones, usable as ordinary ``nn.Module`` and functionally (``torch.func.functional_call``)."""

from __future__ import annotations

from torch import nn

from ..registry import Registry
from .conv4 import Conv4
from .conv4_strided import StridedConv4
from .flatten import Flatten
from .gaussian_mlp import GaussianMLP
from .memory import LRUAMemory, MemoryAugmentedLSTM, NTMMemory
from .mlp import MLP
from .recurrent_policy import RecurrentPolicy
from .relation import RelationEncoder, RelationModule
from .snail import AttentionBlock, CausalConv1d, DenseBlock, SNAILNet, TCBlock

__all__ = [
    "Conv4", "StridedConv4", "MLP", "RelationEncoder", "RelationModule", "Flatten",
    "LRUAMemory", "NTMMemory", "MemoryAugmentedLSTM", "CausalConv1d", "DenseBlock", "TCBlock", "AttentionBlock", "SNAILNet",
    "RecurrentPolicy", "GaussianMLP",
    "MODELS", "build_model", "get_model", "available_models",
]

#: the backbones configs name with ``model.name``
MODELS: Registry[type[nn.Module]] = Registry("model", "model.name")
for _name, _cls in (
    ("conv4", Conv4), ("conv4_strided", StridedConv4), ("mlp", MLP), ("relation_encoder", RelationEncoder),
    ("flatten", Flatten), ("recurrent_policy", RecurrentPolicy), ("gaussian_mlp", GaussianMLP),
):
    MODELS.register(_name)(_cls)


def available_models() -> list[str]:
    return MODELS.names()


def get_model(name: str) -> type[nn.Module]:
    """The backbone class registered as ``name`` (a ``ConfigError`` naming ``model.name`` otherwise)."""
    return MODELS.get(name)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered backbone by name (``"conv4"``, ``"mlp"``...) with keyword arguments."""
    cls = get_model(name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"model.name={name!r} does not accept these options {sorted(kwargs)}: {e}") from None
