"""The standard four-block convolutional backbone of few-shot learning.

Each block is a 3x3 convolution with ``hidden`` filters (padding 1), BatchNorm, ReLU and 2x2
max-pooling. On 1x28x28 Omniglot images the spatial size goes 28 -> 14 -> 7 -> 3 -> 1, so the
encoder alone gives ``hidden`` (64) features; on 3x84x84 images it gives ``hidden * 5 * 5``.
This is the embedding of Prototypical, Matching and Relation networks and (with a linear head)
the classifier of MAML-family methods.

The blocks apply the max-pooling *before* the ReLU. Both orders compute the same function with
the same gradients (ReLU is monotone, so ``max(relu(a), relu(b)) = relu(max(a, b))``, and the
gradient reaches the same input element either way: the window's maximum when it is positive,
nothing otherwise), but pooling first runs the ReLU and its backward on a quarter of the
elements. On the Omniglot Conv4 the first block's 64x28x28 maps per image dominate the memory
traffic: second-order MAML on the 5-way 1-shot work of ``metakit bench maml`` got 1.09x faster with
one inner step and 1.02-1.05x with five (one and two threads, an interleaved comparison of both
orders from the same weights on 2 vCPUs; ``benchmarks/README.md``). The tests
check the equivalence, second-order gradients included. Parameter names are the usual ones
(``features.{0,4,8,12}`` convolutions, ``features.{1,5,9,13}`` BatchNorms).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Conv4"]


class Conv4(nn.Module):
    """Four conv blocks, optionally followed by a linear head.

    Args:
        out_features: if given, a linear layer to this many outputs (classes) follows the
            flattened features (MAML-style classifiers); ``None`` gives the bare encoder.
        in_channels: input channels (1 for Omniglot).
        hidden: filters per conv layer.
        track_running_stats: ``True`` gives ordinary BatchNorm (running statistics used in
            ``eval()`` mode); ``False`` always normalises with the statistics of the batch at
            hand, in training and at test time (MAML's transductive setting).
        image_size: input height and width, used only to size the linear head.
    """

    def __init__(
        self,
        out_features: int | None = None,
        in_channels: int = 1,
        hidden: int = 64,
        track_running_stats: bool = True,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(4):
            layers += [
                nn.Conv2d(c, hidden, 3, padding=1),
                nn.BatchNorm2d(hidden, track_running_stats=track_running_stats),
                nn.MaxPool2d(2),  # before the ReLU: same function, a quarter of the ReLU's work
                nn.ReLU(),
            ]
            c = hidden
        self.features = nn.Sequential(*layers)
        side = image_size
        for _ in range(4):
            side //= 2
        self.feature_dim = hidden * side * side
        self.head = nn.Linear(self.feature_dim, out_features) if out_features is not None else None

    def forward(self, x: Tensor) -> Tensor:
        z = self.features(x).flatten(1)
        return self.head(z) if self.head is not None else z
