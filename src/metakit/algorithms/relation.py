"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, "Learning to Compare:
Relation Network for Few-Shot Learning", CVPR 2018).

An embedding module ``f`` maps every image to a feature map. The feature of class ``k`` is the
element-wise **sum** of the feature maps of its support examples (the paper's K-shot rule;
``class_pool="mean"`` averages instead, which keeps the scale independent of the shots). A
learned relation module ``g`` scores every (query, class) pair from the channel-wise
concatenation of the two feature maps,

    r_{q,k} = sigmoid( g([f(x_q); sum_{i : y_i = k} f(x_i)]) ),

and the network is trained by regressing ``r`` onto the one-hot query labels with the mean
squared error (the paper's loss; ``1`` for the matching class, ``0`` for the others), averaged
over every (query, class) pair of every task. Predictions are the pre-sigmoid relation logits
``g(...)`` (monotone in ``r``, so the arg-max is the same).

The paper's Omniglot networks are :class:`~metakit.models.RelationEncoder` (Conv4 with
pooling only in the first two blocks: 64x5x5 feature maps) and
:class:`~metakit.models.RelationModule` (two conv blocks with pooling, FC 8, FC 1), which this
algorithm builds from the encoder's ``feature_shape``. Configs select the encoder with
``model: relation_encoder``; with a flat encoder such as ``Conv4`` the relation module works on
concatenated vectors instead.

Batching: the support and query images of all tasks of a batch are embedded in one call, and
all ``B * Q * ways`` pairs are scored in one call of the relation module (whose first layer is
split into a query part and a class part, see :mod:`metakit.models.relation`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.relation import RelationModule, published_init
from ..tasks.episode import EpisodeBatch
from ._embedding import EmbeddingAlgorithm, check_choice, check_encoder, check_positive, feature_shape_of, run_encoder
from .base import accuracy, register

__all__ = ["RelationNet", "class_features"]

_POOLS = ("sum", "mean")
_INITS = ("pytorch", "published")


def class_features(support_z: Tensor, support_y: Tensor, ways: int, pool: str = "sum") -> Tensor:
    """Per-class feature of each task: ``[B, S, *z] -> [B, ways, *z]`` (sum or mean over shots)."""
    one_hot = F.one_hot(support_y.long(), ways).to(support_z.dtype)  # [B, S, W]
    flat = support_z.flatten(2)  # [B, S, F]
    out = one_hot.transpose(1, 2) @ flat  # [B, W, F]
    if pool == "mean":
        out = out / one_hot.sum(1).clamp_min(1).unsqueeze(-1)
    return out.reshape(support_z.shape[0], ways, *support_z.shape[2:])


@register("relation")
class RelationNet(EmbeddingAlgorithm):
    """Relation Networks (Sung et al. 2018); see the module docstring for the rule.

    Args:
        encoder: the embedding module (RelationEncoder() in the paper: feature maps
            [64, 5, 5] on Omniglot; any encoder with a feature_shape or
            feature_dim attribute works).
        relation_channels: filters of the relation module's conv blocks (64 in the paper).
        relation_hidden: units of its fully connected layer (8 in the paper).
        class_pool: sum (the paper) or mean of a class's support features.
        max_pair_elements: in eval() mode, tasks are scored a few at a time so that the
            relation module's first activation (pairs * channels * H * W elements) stays
            below this bound (memory control; with BatchNorm running statistics the result
            does not depend on it). In training mode all pairs are scored at once, so that
            BatchNorm sees the statistics of the whole batch.
        weight_init: ``pytorch`` keeps PyTorch's default initialisation of both networks;
            ``published`` re-draws the encoder's and the relation module's weights as the
            paper's code does (:func:`~metakit.models.relation.published_init`: He-normal
            convolutions on the fan-out, N(0, 0.01^2) linear weights, linear biases of 1).

    The shape of one embedding is read from the encoder's ``feature_shape`` (feature maps) or
    ``feature_dim`` (vectors) attribute, which the backbones of :mod:`metakit.models` set.
    """

    display_name = "RelationNet"

    def __init__(
        self,
        encoder: nn.Module,
        relation_channels: int = 64,
        relation_hidden: int = 8,
        class_pool: Literal["sum", "mean"] = "sum",
        max_pair_elements: int = 2**24,
        weight_init: Literal["pytorch", "published"] = "pytorch",
    ) -> None:
        super().__init__()
        check_encoder(encoder)
        check_positive("relation_channels", relation_channels, int)
        check_positive("relation_hidden", relation_hidden, int)
        self.class_pool = check_choice("class_pool", class_pool, _POOLS)
        check_positive("max_pair_elements", max_pair_elements, int)
        self.max_pair_elements = max_pair_elements
        self.weight_init = check_choice("weight_init", weight_init, _INITS)
        self.encoder = encoder
        self.relation = RelationModule(feature_shape_of(encoder), relation_channels, relation_hidden)
        if self.weight_init == "published":
            published_init(self.encoder)
            published_init(self.relation)

    def embed(self, x: Tensor) -> Tensor:
        """Embeddings ``[N, *feature_shape]`` (feature maps, not flattened)."""
        z = run_encoder(self.encoder, x)
        if tuple(z.shape[1:]) != self.relation.feature_shape:
            raise ValueError(
                f"the encoder gives features of shape {tuple(z.shape[1:])} but the relation module was built for "
                f"{self.relation.feature_shape}; check the encoder's image_size against the input images"
            )
        return z

    def task_scores(self, support_z: Tensor, support_y: Tensor, query_z: Tensor, ways: int) -> Tensor:
        """Relation logits ``[B, Q, ways]`` (``sigmoid`` of them is the paper's relation score)."""
        cls = class_features(support_z, support_y, ways, self.class_pool)
        b, q = query_z.shape[:2]
        per_task = q * ways * self.relation.channels * math.prod(self.relation.feature_shape[1:])
        chunk = max(1, self.max_pair_elements // max(1, per_task))
        if self.training or chunk >= b:
            return self.relation(query_z, cls)
        return torch.cat([self.relation(query_z[i : i + chunk], cls[i : i + chunk]) for i in range(0, b, chunk)])

    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        """Mean squared error between ``sigmoid(relation logits)`` and the one-hot query labels."""
        zs, zq = self.encode(batch)
        logits = self.task_scores(zs, batch.support_y, zq, batch.ways)  # type: ignore[arg-type]
        target = F.one_hot(batch.query_y.long(), batch.ways).to(logits.dtype)
        loss = F.mse_loss(torch.sigmoid(logits), target)
        acc = accuracy(logits.detach(), batch.query_y).mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(acc)}

    def extra_repr(self) -> str:
        return f"class_pool={self.class_pool!r}, weight_init={self.weight_init!r}"
