"""The identity encoder of raw pixels: ``[N, *shape] -> [N, prod(shape)]`` (Santoro et al. 2016
feed the flattened 20x20 image to their controller)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Flatten"]


class Flatten(nn.Module):
    """Flattens every example to one feature vector; no parameters."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)
