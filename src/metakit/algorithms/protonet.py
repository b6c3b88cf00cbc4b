"""Prototypical Networks (Snell, Swersky & Zemel, "Prototypical Networks for Few-shot
Learning", NeurIPS 2017).

An encoder ``f`` maps every image to an embedding. For one task, the prototype of class ``k``
is the mean embedding of its support examples,

    c_k = 1/|S_k| * sum_{(x, y) in S, y = k} f(x),

and a query ``x`` is scored against every prototype:

* ``distance="euclidean"`` (the paper): ``score_k(x) = -||f(x) - c_k||^2`` (negative *squared*
  Euclidean distance, optionally times ``scale``);
* ``distance="cosine"``: ``score_k(x) = scale * cos(f(x), c_k)``. Cosine similarity lies in
  [-1, 1], so a softmax over raw cosines is nearly uniform; the scale (an inverse temperature,
  default 10) sharpens it. With ``learn_scale=True`` the scale is a meta-parameter trained with
  the encoder (stored as its logarithm so that it stays positive), as in TADAM (Oreshkin et al.
  2018) and Baseline++ (Chen et al. 2019); otherwise it is a fixed number.

The meta-training loss is the cross-entropy of the softmax over these scores on the queries,
averaged over all queries of all tasks of a batch (every task has the same number of queries,
so this is also the mean of the per-task losses). Prototypes are built from the support
*labels* (a one-hot average), never from the position of an example in the support set, so the
support may come in any order and classes may have different numbers of shots.

Batching and BatchNorm: :meth:`ProtoNet.meta_loss` and :meth:`ProtoNet.predict` encode the
support and query images of *all* tasks of the batch in one encoder call. In training mode a
BatchNorm layer therefore normalises with the statistics of that whole meta-batch (support and
query of every task together) and updates its running statistics from it. In ``eval()`` mode
an encoder with running statistics (the default :class:`~metakit.models.Conv4`) embeds every
image independently of the others, so results do not depend on how evaluation episodes are
batched (large batches are then encoded in chunks to bound memory, with identical results).
An encoder built with ``track_running_stats=False`` uses batch statistics at test time too:
then the statistics are those of the whole evaluation batch (transductive across its tasks,
always one call) and :meth:`ProtoNet.adapt` / the learner embed support and queries in two
separate calls.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks.episode import EpisodeBatch
from ._embedding import EmbeddingAlgorithm, check_choice, check_encoder, check_every_class_present
from .base import accuracy, register

__all__ = ["ProtoNet", "prototypes", "euclidean_scores", "cosine_scores"]

_DISTANCES = ("euclidean", "cosine")


def prototypes(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Mean embedding of each class, batched over tasks.

    Args:
        embeddings: ``[B, S, D]`` support embeddings.
        labels: ``[B, S]`` integer labels in ``0..ways-1``.
        ways: number of classes per task.

    Returns:
        ``[B, ways, D]``; row ``k`` of task ``b`` is the mean of the embeddings labelled ``k``.

    Raises:
        ValueError: when a class of some task has no support example (its prototype would be
            undefined).
    """
    check_every_class_present(labels, ways)
    one_hot = F.one_hot(labels.long(), ways).to(embeddings.dtype)  # [B, S, W]
    sums = one_hot.transpose(1, 2) @ embeddings  # [B, W, D]
    return sums / one_hot.sum(1).unsqueeze(-1)


def euclidean_scores(queries: Tensor, protos: Tensor) -> Tensor:
    """Negative squared Euclidean distances ``-||q - c||^2``: ``[B, Q, D] x [B, W, D] -> [B, Q, W]``.

    Computed as ``-(|q|^2 - 2 q.c + |c|^2)``, which needs ``O(B*Q*W)`` memory instead of the
    ``O(B*Q*W*D)`` of explicit differences; tiny negative round-off is clamped to zero distance.
    """
    q2 = queries.pow(2).sum(-1, keepdim=True)  # [B, Q, 1]
    c2 = protos.pow(2).sum(-1).unsqueeze(1)  # [B, 1, W]
    sq = torch.baddbmm(q2 + c2, queries, protos.transpose(1, 2), alpha=-2.0)
    return -sq.clamp_min(0.0)


def cosine_scores(queries: Tensor, protos: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarities ``cos(q, c)``: ``[B, Q, D] x [B, W, D] -> [B, Q, W]`` (in [-1, 1])."""
    qn = F.normalize(queries, dim=-1, eps=eps)
    cn = F.normalize(protos, dim=-1, eps=eps)
    return qn @ cn.transpose(1, 2)


@register("protonet")
class ProtoNet(EmbeddingAlgorithm):
    """Prototypical Networks (Snell et al. 2017); see the module docstring for the rule.

    Args:
        encoder: the embedding network (e.g. ``Conv4()``, 64 features on Omniglot); its output
            is flattened to ``[N, D]``.
        distance: euclidean (negative squared Euclidean distance, the paper's choice) or cosine
            (scaled cosine similarity).
        scale: multiplier of the scores (an inverse temperature); None (null in YAML) picks 1.0
            for euclidean (exactly the paper) and 10.0 for cosine.
        learn_scale: make the scale a meta-parameter learnt with the encoder (its logarithm is
            the parameter log_scale); false keeps it fixed.
    """

    display_name = "ProtoNet"

    def __init__(
        self,
        encoder: nn.Module,
        distance: Literal["euclidean", "cosine"] = "euclidean",
        scale: float | None = None,
        learn_scale: bool = False,
    ) -> None:
        super().__init__()
        check_encoder(encoder)
        check_choice("distance", distance, _DISTANCES)
        if scale is None:
            scale = 1.0 if distance == "euclidean" else 10.0
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale={scale!r} must be a positive finite number (or None for the default)")
        if not isinstance(learn_scale, bool):
            raise TypeError(f"learn_scale={learn_scale!r} must be True or False")
        self.encoder = encoder
        self.distance = distance
        self.learn_scale = learn_scale
        if learn_scale:
            self.log_scale = nn.Parameter(torch.tensor(math.log(float(scale))))
        else:
            self.register_buffer("log_scale", torch.tensor(math.log(float(scale))))

    # -- building blocks ----------------------------------------------------------------------
    @property
    def scale(self) -> Tensor:
        """The current score multiplier (a 0-d tensor; differentiable when ``learn_scale``)."""
        return self.log_scale.exp()

    def scores(self, queries: Tensor, protos: Tensor) -> Tensor:
        """Scores ``[B, Q, W]`` of query embeddings ``[B, Q, D]`` against prototypes ``[B, W, D]``."""
        raw = euclidean_scores(queries, protos) if self.distance == "euclidean" else cosine_scores(queries, protos)
        return raw * self.scale.to(raw.dtype)

    def task_scores(self, support_z: Tensor, support_y: Tensor, query_z: Tensor, ways: int) -> Tensor:
        """Scores ``[B, Q, ways]`` of query embeddings ``[B, Q, D]`` against the prototypes of the
        support embeddings ``[B, S, D]`` with labels ``[B, S]``."""
        return self.scores(query_z, prototypes(support_z, support_y, ways))

    # -- the algorithm protocol -----------------------------------------------------------------
    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of the queries over all tasks; metrics ``loss`` and ``accuracy`` (0..1)."""
        scores = self.predict(batch)
        loss = F.cross_entropy(scores.flatten(0, 1), batch.query_y.flatten().long())
        acc = accuracy(scores.detach(), batch.query_y).mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(acc)}

    def extra_repr(self) -> str:
        return f"distance={self.distance!r}, scale={float(self.scale):.4g}, learn_scale={self.learn_scale}"

