"""The four-block network of MAML's published Omniglot code (Finn et al. 2017; cbfinn/maml).

It differs from :class:`~metakit.models.Conv4` (the Vinyals/Snell encoder with max-pooling) in
four ways, each a choice of the published code:

* each 3x3 convolution has **stride 2** and there is no max-pooling: on 28x28 inputs the maps
  go 28 -> 14 -> 7 -> 4 -> 2 (PyTorch pads one pixel on every side; TensorFlow's ``SAME``
  padding of the original pads 28 and 14 on the bottom/right only, so the sampling grid of the
  first two blocks is shifted by one pixel);
* the features are the **mean over the last 2x2 map** (``hidden`` values);
* BatchNorm normalises with batch statistics and has **no scale**, only an offset
  (``tf.contrib.layers.batch_norm``'s defaults); the offset is a parameter named
  ``features.<i>.offset``, so that an inner loop can leave it out
  (``adapt: ".*(weight|bias)"`` adapts the convolutions and the head only, as the original
  does: its BatchNorm variables live outside the adapted weights);
* the convolutions are initialised Glorot-uniform with zero biases, and the linear head's
  weights are drawn from N(0, 1) with a zero bias.

``bn_scale=True`` adds the scale back (an ordinary affine BatchNorm) for comparison.

Reptile's published Omniglot network (openai/supervised-reptile) is the same four stride-2 blocks
with an ordinary affine BatchNorm, but it **flattens** the last map (2x2x64 = 256 features on
28x28 inputs) and initialises its linear head Glorot-uniform: ``bn_scale=True, pool="flatten",
head_init="glorot"``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["StridedConv4"]


class _ChannelOffset(nn.Module):
    """``x + offset[c]`` per channel of an ``[N, C, H, W]`` map (BatchNorm's beta on its own)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.offset.view(1, -1, 1, 1)


class StridedConv4(nn.Module):
    """Four stride-2 conv blocks, the mean (or the flattening) of the last map, optionally a linear head.

    Args:
        out_features: if given, a linear layer to this many outputs (classes), initialised as
            ``head_init`` says; ``None`` gives the bare encoder (``feature_dim`` features).
        in_channels: input channels (1 for Omniglot).
        hidden: filters per conv layer.
        track_running_stats: ``True`` keeps BatchNorm running statistics for ``eval()``;
            ``False`` always uses the batch's (MAML's transductive setting).
        image_size: input height and width (at least 16); with ``pool="mean"`` any input size
            works, with ``pool="flatten"`` the inputs must have this size (it sets the head's width).
        bn_scale: give BatchNorm a learned scale as well as the offset (the published code has
            none).
        pool: ``mean`` (MAML's code: the mean over the last map, ``hidden`` features) or
            ``flatten`` (Reptile's code: the whole last map, ``hidden * s * s`` features for an
            ``s x s`` map).
        head_init: ``normal`` (N(0, 1) weights, MAML's code) or ``glorot`` (Glorot-uniform
            weights, TensorFlow's default, Reptile's code); zero bias either way.
    """

    def __init__(
        self,
        out_features: int | None = None,
        in_channels: int = 1,
        hidden: int = 64,
        track_running_stats: bool = True,
        image_size: int = 28,
        bn_scale: bool = False,
        pool: str = "mean",
        head_init: str = "normal",
    ) -> None:
        super().__init__()
        if pool not in ("mean", "flatten"):
            raise ValueError(f"pool={pool!r} is not valid; use mean (MAML's published network) or flatten (Reptile's)")
        if head_init not in ("normal", "glorot"):
            raise ValueError(f"head_init={head_init!r} is not valid; use normal (MAML's published network) or glorot (Reptile's)")
        for name, value, low in (("in_channels", in_channels, 1), ("hidden", hidden, 1), ("image_size", image_size, 16)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}={value!r} must be an int >= {low}")
        if out_features is not None and (not isinstance(out_features, int) or isinstance(out_features, bool) or out_features < 1):
            raise ValueError(f"out_features={out_features!r} must be an int >= 1 (or None for the bare encoder)")
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(4):
            conv = nn.Conv2d(c, hidden, 3, stride=2, padding=1)
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
            layers.append(conv)
            if bn_scale:
                layers.append(nn.BatchNorm2d(hidden, track_running_stats=track_running_stats))
            else:
                layers += [nn.BatchNorm2d(hidden, affine=False, track_running_stats=track_running_stats),
                           _ChannelOffset(hidden)]
            layers.append(nn.ReLU())
            c = hidden
        self.features = nn.Sequential(*layers)
        self.pool = pool
        side = image_size
        for _ in range(4):  # 3x3, stride 2, padding 1
            side = (side - 1) // 2 + 1
        self.feature_dim = hidden if pool == "mean" else hidden * side * side
        self.head = None
        if out_features is not None:
            self.head = nn.Linear(self.feature_dim, out_features)
            if head_init == "normal":
                nn.init.normal_(self.head.weight, 0.0, 1.0)
            else:
                nn.init.xavier_uniform_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        maps = self.features(x)
        z = maps.mean(dim=(2, 3)) if self.pool == "mean" else maps.flatten(1)
        return self.head(z) if self.head is not None else z
