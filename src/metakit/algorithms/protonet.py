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
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks.episode import EpisodeBatch
from ._metric import check_support, describe, image_model_defaults
from .base import Algorithm, BuildContext, accuracy, register

__all__ = ["ProtoNet", "PrototypeLearner", "prototypes", "euclidean_scores", "cosine_scores"]

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
    one_hot = F.one_hot(labels.long(), ways).to(embeddings.dtype)  # [B, S, W]
    counts = one_hot.sum(1)  # [B, W]
    if bool((counts == 0).any()):
        task, label = (int(v) for v in torch.nonzero(counts == 0)[0])
        present = sorted(int(v) for v in torch.unique(labels[task]))
        raise ValueError(
            f"support_y of task {task} has no example of label {label} (labels present: {present}, "
            f"ways={ways}); every label 0..{ways - 1} needs at least one support example to form its prototype"
        )
    sums = one_hot.transpose(1, 2) @ embeddings  # [B, W, D]
    return sums / counts.unsqueeze(-1)


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


@dataclass(frozen=True)
class PrototypeLearner:
    """A ProtoNet adapted to one task: the class prototypes and the network that embeds queries.

    Attributes:
        algorithm: the :class:`ProtoNet` (its encoder, distance and scale are used as they are
            when :meth:`predict` is called).
        prototypes: ``[ways, D]`` mean support embedding of each class.
    """

    algorithm: "ProtoNet"
    prototypes: Tensor

    @property
    def ways(self) -> int:
        return self.prototypes.shape[0]

    def predict(self, query_x: Tensor) -> Tensor:
        """Scores ``[Q, ways]`` (logits: higher is more likely) of the query inputs ``[Q, *x_shape]``."""
        if not isinstance(query_x, Tensor) or query_x.dim() < 1:
            raise TypeError(f"query_x must be a tensor [Q, *x_shape], got {describe(query_x)}")
        z = self.algorithm.embed(query_x)
        return self.algorithm.scores(z.unsqueeze(0), self.prototypes.unsqueeze(0))[0]


@register("protonet")
class ProtoNet(Algorithm):
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

    #: eval-mode encoder calls take at most this many input values (see :meth:`embed`): 167
    #: Omniglot images, ~34 MB per Conv4 activation. Measured on Conv4, 28x28, in CPU time on a
    #: loaded 2-core machine, 167 against 1,337 images per call: one thread 1,789 against 1,075
    #: images per CPU-second; two threads with OMP_WAIT_POLICY=passive (the CLI's default) 1,659
    #: against 1,119. The difference is kernel time of page faults on large allocations.
    embed_chunk_values: int = 1 << 17

    def __init__(
        self,
        encoder: nn.Module,
        distance: Literal["euclidean", "cosine"] = "euclidean",
        scale: float | None = None,
        learn_scale: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        if distance not in _DISTANCES:
            import difflib

            close = difflib.get_close_matches(str(distance), _DISTANCES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"distance={distance!r} is not known{hint} Use one of: {', '.join(_DISTANCES)}")
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

    @classmethod
    def model_defaults(cls, context: BuildContext) -> dict[str, Any]:
        """``in_channels`` and ``image_size`` of the data's square images (``{}`` otherwise)."""
        return image_model_defaults(context)

    # -- building blocks ----------------------------------------------------------------------
    @property
    def scale(self) -> Tensor:
        """The current score multiplier (a 0-d tensor; differentiable when ``learn_scale``)."""
        return self.log_scale.exp()

    def batch_dependent(self) -> bool:
        """Whether the encoder's output for one image depends on the other images of the call.

        True when a BatchNorm layer normalises with batch statistics: in training mode, or
        always when built with ``track_running_stats=False``.
        """
        return any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
            for m in self.encoder.modules()
        )

    def embed(self, x: Tensor) -> Tensor:
        """Embeddings ``[N, D]`` of inputs ``[N, *x_shape]`` (the encoder output, flattened).

        One encoder call when the encoder is :meth:`batch_dependent` (training mode); otherwise
        (e.g. ``eval()`` with running BatchNorm statistics) the inputs are encoded in chunks of
        at most :attr:`embed_chunk_values` input values, which gives the same embeddings with
        bounded memory (a 50-episode batch of 20-way 5-shot Omniglot is 20,000 images) and less
        CPU time.
        """
        per_example = max(1, x[0].numel()) if x.shape[0] else 1
        chunk = max(1, self.embed_chunk_values // per_example)
        if x.shape[0] <= chunk or self.batch_dependent():
            return self.encoder(x).flatten(1)
        return torch.cat([self.encoder(x[i : i + chunk]).flatten(1) for i in range(0, x.shape[0], chunk)])

    def scores(self, queries: Tensor, protos: Tensor) -> Tensor:
        """Scores ``[B, Q, W]`` of query embeddings ``[B, Q, D]`` against prototypes ``[B, W, D]``."""
        raw = euclidean_scores(queries, protos) if self.distance == "euclidean" else cosine_scores(queries, protos)
        return raw * self.scale.to(raw.dtype)

    def _batch_scores(self, batch: EpisodeBatch) -> Tensor:
        if not isinstance(batch, EpisodeBatch):
            raise TypeError(f"batch must be an EpisodeBatch, got {type(batch).__name__}")
        if batch.ways is None:
            raise ValueError(
                "batch.ways is None (a regression batch); ProtoNet classifies: give integer labels and ways"
            )
        if batch.support_y.dim() != 2 or batch.query_y.dim() != 2:
            raise ValueError(
                f"support_y has shape {tuple(batch.support_y.shape)} and query_y {tuple(batch.query_y.shape)}; "
                "ProtoNet needs one integer label per example ([tasks, examples])"
            )
        b, s = batch.support_y.shape
        q = batch.query_y.shape[1]
        x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        z = self.embed(x)  # one encoder call for the support and query of every task
        zs = z[: b * s].reshape(b, s, -1)
        zq = z[b * s :].reshape(b, q, -1)
        return self.scores(zq, prototypes(zs, batch.support_y, batch.ways))

    # -- the algorithm protocol -----------------------------------------------------------------
    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of the queries over all tasks; metrics ``loss`` and ``accuracy`` (0..1)."""
        scores = self._batch_scores(batch)
        loss = F.cross_entropy(scores.flatten(0, 1), batch.query_y.flatten().long())
        acc = accuracy(scores.detach(), batch.query_y).mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(acc)}

    def predict(self, batch: EpisodeBatch) -> Tensor:
        """Scores ``[B, Q, ways]`` of the queries of every task (batched, one encoder call)."""
        return self._batch_scores(batch)

    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int | None = None) -> PrototypeLearner:
        """Prototypes of one task from its support set ``[S, *x_shape]`` and labels ``[S]``.

        ``ways`` defaults to ``max(support_y) + 1``; every label ``0..ways-1`` needs a support
        example.
        """
        ways = check_support(support_x, support_y, ways, "ProtoNet")
        z = self.embed(support_x).unsqueeze(0)
        return PrototypeLearner(self, prototypes(z, support_y.unsqueeze(0), ways)[0])

    def extra_repr(self) -> str:
        return f"distance={self.distance!r}, scale={float(self.scale):.4g}, learn_scale={self.learn_scale}"

