"""Siamese networks (Koch, Zemel & Salakhutdinov, "Siamese Neural Networks for One-shot Image
Recognition", ICML Deep Learning Workshop 2015).

Two images go through the same encoder ``f``; their similarity is a learned *weighted L1
distance* followed by a sigmoid,

    p(same | x1, x2) = sigmoid( sum_j alpha_j * |f(x1)_j - f(x2)_j| + beta ),

with one weight ``alpha_j`` per embedding dimension and a bias ``beta`` (the paper's final
layer). The network is trained as a binary classifier of pairs with the cross-entropy between
``p`` and the pair's label (1 = same class, 0 = different).

**Pairs from episodes.** This implementation draws its pairs from the meta-training episodes:
every query of a task is paired with every support example of the same task, labelled 1 when
their (episode) labels agree and 0 otherwise; pairs never cross tasks. An N-way task therefore
gives ``Q * S`` pairs of which a fraction ``1/N`` are positive. With ``balance=True`` (the
default) the loss is ``(mean BCE over positive pairs + mean BCE over negative pairs) / 2``, so
that both kinds weigh equally however many ways the episodes have (Koch et al. sampled
balanced pairs); ``balance=False`` averages over all pairs.

**Few-shot prediction** (Koch et al.'s one-shot rule, extended to K shots): the score of class
``k`` for a query is the largest similarity logit between the query and a support example of
class ``k`` (the most similar support example decides). Scores are the pre-sigmoid logits;
``sigmoid(score)`` is the probability that the query shows the same character as that example.

Not reproduced from the paper: its large 105x105 convolutional network, layer-wise learning
rates and L2 penalties, and affine-distortion augmentation; the encoder is any metakit
backbone (``Conv4`` by default, as in Vinyals et al.'s re-run of the Siamese baseline).

Memory: the weighted L1 distance needs the ``[Q, S, D]`` tensor of absolute differences of a
task; evaluation computes it a few tasks at a time (``max_pair_elements``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks.episode import EpisodeBatch
from ._embedding import EmbeddingAlgorithm, check_encoder, check_positive, class_reduce, feature_shape_of
from .base import accuracy, register

__all__ = ["SiameseNet", "weighted_l1_logits"]


def weighted_l1_logits(query_z: Tensor, support_z: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Similarity logits ``sum_j w_j |q_j - s_j| + b``: ``[B, Q, D] x [B, S, D] -> [B, Q, S]``."""
    diff = (query_z.unsqueeze(2) - support_z.unsqueeze(1)).abs()  # [B, Q, S, D]
    return diff @ weight + bias


@register("siamese")
class SiameseNet(EmbeddingAlgorithm):
    """Siamese network with a learned weighted L1 distance (Koch et al. 2015); see the module
    docstring for the pairs, the loss and the prediction rule.

    Args:
        encoder: the shared embedding network (e.g. Conv4()); its output is flattened to
            [N, D]. D is read from the encoder's feature_dim attribute.
        balance: weigh positive and negative pairs equally in the loss (default) instead of
            averaging over all pairs (of which only 1/ways are positive).
        feature_dim: embedding size D; None reads it from the encoder.
        max_pair_elements: bound on the number of elements of the [tasks, Q, S, D]
            difference tensor computed at once when scoring (memory control; the result does
            not depend on it).
    """

    display_name = "SiameseNet"

    def __init__(
        self,
        encoder: nn.Module,
        balance: bool = True,
        feature_dim: int | None = None,
        max_pair_elements: int = 2**24,
    ) -> None:
        super().__init__()
        check_encoder(encoder)
        if not isinstance(balance, bool):
            raise TypeError(f"balance={balance!r} must be True or False")
        check_positive("max_pair_elements", max_pair_elements, int)
        if feature_dim is None:
            shape = feature_shape_of(encoder)
            feature_dim = math.prod(shape)
        check_positive("feature_dim", feature_dim, int)
        self.encoder = encoder
        self.balance = balance
        self.max_pair_elements = max_pair_elements
        # alpha starts at -1/D: the initial logit is minus the mean absolute difference, so
        # closer pairs already look more alike; training learns the weights and the bias.
        self.alpha = nn.Parameter(torch.full((feature_dim,), -1.0 / feature_dim))
        self.beta = nn.Parameter(torch.zeros(()))

    def embed(self, x: Tensor) -> Tensor:
        """Embeddings ``[N, D]`` (the encoder output, flattened)."""
        z = super().embed(x)
        if z.shape[1] != self.alpha.shape[0]:
            raise ValueError(
                f"the encoder gives {z.shape[1]} features but the distance has {self.alpha.shape[0]} weights; "
                "set feature_dim to the encoder's output size"
            )
        return z

    def pair_logits(self, query_z: Tensor, support_z: Tensor) -> Tensor:
        """Similarity logits ``[B, Q, S]`` of every query with every support example of its task."""
        b, q, d = query_z.shape
        s = support_z.shape[1]
        chunk = max(1, self.max_pair_elements // max(1, q * s * d))
        if chunk >= b:
            return weighted_l1_logits(query_z, support_z, self.alpha, self.beta)
        return torch.cat(
            [
                weighted_l1_logits(query_z[i : i + chunk], support_z[i : i + chunk], self.alpha, self.beta)
                for i in range(0, b, chunk)
            ]
        )

    def task_scores(self, support_z: Tensor, support_y: Tensor, query_z: Tensor, ways: int) -> Tensor:
        """Class scores ``[B, Q, ways]``: the best similarity logit over the class's support examples."""
        return class_reduce(self.pair_logits(query_z, support_z), support_y, ways, "max")

    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        """Binary cross-entropy of the (query, support) pairs of every task.

        Metrics: ``loss``, ``accuracy`` (few-shot accuracy of the queries by the most similar
        support example) and ``pair_accuracy`` (same/different decisions at p = 0.5).
        """
        zs, zq = self.encode(batch)
        logits = self.pair_logits(zq, zs)  # [B, Q, S]
        same = (batch.query_y.unsqueeze(2) == batch.support_y.unsqueeze(1)).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, same, reduction="none")
        if self.balance:
            n_pos, n_neg = same.sum(), (1 - same).sum()
            parts = []
            if n_pos > 0:
                parts.append((bce * same).sum() / n_pos)
            if n_neg > 0:
                parts.append((bce * (1 - same)).sum() / n_neg)
            loss = torch.stack(parts).mean()
        else:
            loss = bce.mean()
        with torch.no_grad():
            scores = class_reduce(logits, batch.support_y, batch.ways, "max")  # type: ignore[arg-type]
            acc = accuracy(scores, batch.query_y).mean()
            pair_acc = ((logits > 0).to(same.dtype) == same).float().mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(acc), "pair_accuracy": float(pair_acc)}

    def extra_repr(self) -> str:
        return f"balance={self.balance}, feature_dim={self.alpha.shape[0]}"
