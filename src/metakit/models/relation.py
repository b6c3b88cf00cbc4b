"""The two networks of Relation Networks (Sung et al., "Learning to Compare: Relation Network
for Few-Shot Learning", CVPR 2018).

:class:`RelationEncoder` is the paper's embedding module: four blocks of 3x3 convolution with
64 filters, BatchNorm and ReLU, where only the first two blocks end with a 2x2 max-pool (and,
as in the paper's Omniglot network, only the last two pad their convolution). It returns
*feature maps*, not vectors: on 1x28x28 Omniglot images the size goes 28 -> 26 -> 13 -> 11 ->
5 -> 5 -> 5, so one image gives a ``[64, 5, 5]`` map (on 3x84x84 images, ``[64, 19, 19]``).

:class:`RelationModule` scores a (query, class) pair from the channel-wise concatenation of
their feature maps: two blocks of 3x3 convolution (64 filters, padding 1), BatchNorm, ReLU and
2x2 max-pool, then a fully connected layer of 8 units with ReLU and one output unit. The
module returns the pre-sigmoid output; the paper's relation score in [0, 1] is its sigmoid.
On Omniglot the pair is ``[128, 5, 5]`` -> 5 -> 2 -> 2 -> 1, so the first FC layer sees 64
inputs. Given flat feature vectors ``[D]`` instead (e.g. from :class:`~metakit.models.Conv4`)
the convolutions become linear layers of the same width.

The first layer of the relation module is linear in its input, so on a concatenation it splits
exactly into a part that sees only the query and a part that sees only the class:
``conv([q; c]) = conv_q(q) + conv_c(c) + bias``. :meth:`RelationModule.forward` uses this to run
the first (most expensive) convolution ``Q + W`` times per task instead of ``Q * W`` times; the
pairs are formed only after it. The result is the same function as concatenating first.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RelationEncoder", "RelationModule", "published_init"]


class RelationEncoder(nn.Module):
    """Relation Networks' embedding module: Conv4 without the last two pools (feature maps).

    Args:
        in_channels: input channels (1 for Omniglot).
        hidden: filters per conv layer.
        image_size: input height and width, used to report :attr:`feature_shape`.
        track_running_stats: ``True`` gives ordinary BatchNorm (running statistics in
            ``eval()`` mode); ``False`` normalises with the statistics of the batch at hand.

    Attributes:
        feature_shape: ``(hidden, side, side)``, the shape of one image's output.
    """

    def __init__(
        self, in_channels: int = 1, hidden: int = 64, image_size: int = 28, track_running_stats: bool = True
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("hidden", hidden), ("image_size", image_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive int")
        side = image_size
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(4):
            pad = 0 if i < 2 else 1
            layers += [
                nn.Conv2d(c, hidden, 3, padding=pad),
                nn.BatchNorm2d(hidden, track_running_stats=track_running_stats),
            ]
            side = side - 2 + 2 * pad
            if i < 2:
                # pooled before the ReLU, as in Conv4: the same function, less work
                layers.append(nn.MaxPool2d(2))
                side //= 2
            layers.append(nn.ReLU())
            c = hidden
        if side < 1:
            raise ValueError(
                f"image_size={image_size} is too small for the relation encoder (two unpadded 3x3 "
                "convolutions and two 2x2 pools need at least 10 pixels)"
            )
        self.features = nn.Sequential(*layers)
        self.feature_shape: tuple[int, int, int] = (hidden, side, side)

    def forward(self, x: Tensor) -> Tensor:
        """Feature maps ``[N, hidden, side, side]`` of images ``[N, in_channels, H, W]``."""
        return self.features(x)


def published_init(module: nn.Module) -> nn.Module:
    """Re-initialise ``module`` in place as the paper's published code does, and return it.

    Every convolution gets weights drawn from N(0, 2 / (k_h * k_w * out_channels)) (He's rule
    on the fan-out) and zero biases; every BatchNorm a scale of 1 and a shift of 0; every linear
    layer weights from N(0, 0.01^2) and biases of **1**. PyTorch's defaults (uniform on the
    fan-in, zero-mean biases) differ in all three; the draws follow the global random state.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.ones_(m.bias)
    return module


def _pair_first_layer(layer: nn.Conv2d | nn.Linear, query: Tensor, cls: Tensor) -> Tensor:
    """``layer`` applied to every concatenation ``[query_i; class_j]`` of each task.

    ``query``: ``[B, Q, C, ...]``, ``cls``: ``[B, W, C, ...]`` -> ``[B, Q, W, out, ...]``. The
    layer's input channels are split into the query half and the class half (exact, since the
    layer is linear), so the layer runs on ``Q + W`` inputs per task instead of ``Q * W``.
    """
    b, q, c = query.shape[:3]
    w = cls.shape[1]
    weight_q, weight_c = layer.weight[:, :c], layer.weight[:, c:]
    if isinstance(layer, nn.Conv2d):
        fq = F.conv2d(query.flatten(0, 1), weight_q, None, layer.stride, layer.padding)
        fc = F.conv2d(cls.flatten(0, 1), weight_c, layer.bias, layer.stride, layer.padding)
    else:
        fq = F.linear(query.flatten(0, 1), weight_q)
        fc = F.linear(cls.flatten(0, 1), weight_c, layer.bias)
    fq = fq.reshape(b, q, 1, *fq.shape[1:])
    fc = fc.reshape(b, 1, w, *fc.shape[1:])
    return fq + fc


class RelationModule(nn.Module):
    """Relation Networks' learned comparator: a score for every (query, class) pair.

    Args:
        feature_shape: shape of one embedding: ``(C, H, W)`` feature maps (the paper; e.g.
            ``(64, 5, 5)`` from :class:`RelationEncoder` on Omniglot) or ``(D,)`` vectors.
        channels: filters of the two conv blocks (units of the two first layers for vectors).
        hidden: units of the fully connected layer before the output (8 in the paper).
        track_running_stats: BatchNorm mode, as in the encoders.
    """

    def __init__(
        self,
        feature_shape: Sequence[int],
        channels: int = 64,
        hidden: int = 8,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        shape = tuple(feature_shape)
        if len(shape) not in (1, 3) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise ValueError(
                f"feature_shape={feature_shape!r} must be (C, H, W) feature maps or (D,) vectors of positive ints"
            )
        for name, v in (("channels", channels), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive int")
        self.feature_shape = shape
        self.channels = channels
        if len(shape) == 3:
            c, side_h, side_w = shape
            self.first: nn.Conv2d | nn.Linear = nn.Conv2d(2 * c, channels, 3, padding=1)
            self.norm1: nn.Module = nn.BatchNorm2d(channels, track_running_stats=track_running_stats)
            # a 2x2 pool only where the map is still at least 2 pixels wide
            self.pool1 = min(side_h, side_w) >= 2
            side_h, side_w = (side_h // 2, side_w // 2) if self.pool1 else (side_h, side_w)
            self.second: nn.Module = nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.BatchNorm2d(channels, track_running_stats=track_running_stats),
                nn.ReLU(),
            )
            self.pool2 = min(side_h, side_w) >= 2
            side_h, side_w = (side_h // 2, side_w // 2) if self.pool2 else (side_h, side_w)
            flat = channels * side_h * side_w
        else:
            (d,) = shape
            self.first = nn.Linear(2 * d, channels)
            self.norm1 = nn.BatchNorm1d(channels, track_running_stats=track_running_stats)
            self.pool1 = self.pool2 = False
            self.second = nn.Sequential(
                nn.Linear(channels, channels),
                nn.BatchNorm1d(channels, track_running_stats=track_running_stats),
                nn.ReLU(),
            )
            flat = channels
        self.head = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, query: Tensor, cls: Tensor) -> Tensor:
        """Relation logits ``[B, Q, W]`` of queries ``[B, Q, *feature_shape]`` against class
        features ``[B, W, *feature_shape]`` (apply ``sigmoid`` for the paper's score)."""
        if query.dim() != 2 + len(self.feature_shape) or tuple(query.shape[2:]) != self.feature_shape:
            raise ValueError(
                f"query features have shape {tuple(query.shape)}; expected [tasks, queries, "
                f"{', '.join(map(str, self.feature_shape))}] (the relation module was built for "
                f"feature_shape={self.feature_shape})"
            )
        if cls.dim() != query.dim() or tuple(cls.shape[2:]) != self.feature_shape or cls.shape[0] != query.shape[0]:
            raise ValueError(
                f"class features have shape {tuple(cls.shape)}; expected [{query.shape[0]}, ways, "
                f"{', '.join(map(str, self.feature_shape))}]"
            )
        b, q, w = query.shape[0], query.shape[1], cls.shape[1]
        h = _pair_first_layer(self.first, query, cls).flatten(0, 2)  # [B*Q*W, channels, ...]
        h = F.relu(self.norm1(h))
        if self.pool1:
            h = F.max_pool2d(h, 2)
        h = self.second(h)
        if self.pool2:
            h = F.max_pool2d(h, 2)
        return self.head(h.flatten(1)).reshape(b, q, w)

    def forward_concatenated(self, pairs: Tensor) -> Tensor:
        """Reference path: logits ``[N]`` of already concatenated pairs ``[N, 2C, ...]``
        (what :meth:`forward` computes without forming the pairs first; used in tests)."""
        h = F.relu(self.norm1(self.first(pairs)))
        if self.pool1:
            h = F.max_pool2d(h, 2)
        h = self.second(h)
        if self.pool2:
            h = F.max_pool2d(h, 2)
        return self.head(h.flatten(1)).squeeze(-1)
