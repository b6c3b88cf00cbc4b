"""Fully connected networks (the MAML sinusoid regressor is ``MLP(1, [40, 40], 1)``)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Linear layers with ReLU between them.

    Args:
        in_features: input size.
        hidden: sizes of the hidden layers.
        out_features: output size.
    """

    def __init__(self, in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1) -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
