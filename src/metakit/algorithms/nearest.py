"""Nearest neighbour and nearest centroid on learned features: the metric-based idea in its
plainest form, usable on top of any trained encoder.

Given an encoder ``f``, a query ``x`` of a task is scored against its support set by

* ``rule="neighbour"``: the nearest support example decides,
  ``score_k(x) = max_{i : y_i = k} -d(f(x), f(x_i))``;
* ``rule="centroid"``: the nearest class mean decides,
  ``score_k(x) = -d(f(x), c_k)`` with ``c_k`` the mean support feature of class ``k``;

where ``d`` is the squared Euclidean distance (``distance="euclidean"``) or minus the cosine
similarity (``distance="cosine"``); scores are multiplied by ``scale``.

**Feature normalisation** (SimpleShot: Wang, Chao, Weinberger & van der Maaten, "SimpleShot:
Revisiting Nearest-Neighbor Classification for Few-Shot Learning", 2019), applied to support
and query features before the rule, at prediction time only (as in SimpleShot, whose encoder is
trained without it):

* ``normalize="none"``: raw features;
* ``normalize="l2"``: ``z / ||z||`` (SimpleShot's L2N);
* ``normalize="cl2n"``: ``(z - m) / ||z - m||`` where ``m`` is the **mean feature of the
  training split** (SimpleShot's CL2N). ``m`` lives in the buffer ``feature_mean`` (saved with
  the checkpoint) and comes from either
  - :meth:`NearestNeighbour.fit_feature_mean`, the exact mean of ``f`` (in ``eval()`` mode)
    over training images you pass (the SimpleShot recipe; use it on top of an encoder trained
    by another method), or
  - meta-training this algorithm: every training step in ``train()`` mode updates ``m`` with
    an exponential moving average (``mean_momentum``) of the mean feature of the batch's
    support and query images, which come from the training classes (like BatchNorm's running
    mean; call ``fit_feature_mean`` after training for the exact value). The features averaged
    are those prediction centres: the step embeds the same images a second time, without
    gradients and with the encoder in ``eval()`` mode (BatchNorm then uses its running
    statistics, as at prediction time; the training-mode features, normalised by the
    batch's own statistics, have a different mean, e.g. the BatchNorm bias). This costs one
    no-grad forward per step, only with ``cl2n``, and keeps the trainer generic.
  Predicting with ``cl2n`` before ``m`` has been set is an error.

**Meta-training** (so that ``metakit train`` can learn the encoder with this rule) minimises
the cross-entropy of the softmax over the scores of raw features: for ``rule="centroid"`` this
is exactly Prototypical Networks' loss; for ``rule="neighbour"`` the softmax runs over the
support *examples* and a class's probability is the mass on its examples,
``log p(k | x) = logsumexp_{i in k}(s_i) - logsumexp_i(s_i)`` with ``s_i = -scale d(x, x_i)``
(the soft nearest-neighbour / NCA loss). The reported accuracy uses the hard rule.

**On a trained encoder**: ``NearestNeighbour.from_algorithm(protonet, rule="neighbour",
normalize="cl2n")`` shares the encoder of another algorithm (e.g. a loaded ProtoNet run);
then ``fit_feature_mean(train_images)`` and ``predict(batch)`` / ``adapt(...)``.
"""

from __future__ import annotations

import math
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks.episode import EpisodeBatch
from ._embedding import (
    EmbeddingAlgorithm,
    check_choice,
    check_encoder,
    check_positive,
    class_reduce,
    describe,
    eval_mode,
    feature_shape_of,
)
from .base import Algorithm, accuracy, register
from .protonet import cosine_scores, euclidean_scores, prototypes

__all__ = ["NearestNeighbour"]

_RULES = ("neighbour", "centroid")
_DISTANCES = ("euclidean", "cosine")
_NORMALIZE = ("none", "l2", "cl2n")


@register("nearest")
class NearestNeighbour(EmbeddingAlgorithm):
    """Nearest neighbour / nearest centroid on encoder features; see the module docstring.

    Args:
        encoder: the feature extractor; its output is flattened to [N, D].
        rule: neighbour (nearest support example) or centroid (nearest class mean).
        distance: euclidean (squared) or cosine.
        normalize: none, l2 or cl2n (centre by the mean training feature,
            then L2-normalise; SimpleShot), applied at prediction time.
        scale: multiplier of the scores (an inverse temperature of the training softmax; does
            not change predictions).
        mean_momentum: weight of each training batch in the moving average of the mean
            training feature (used by cl2n).
        feature_dim: feature size D (needed for cl2n); None reads it from the
            encoder's feature_dim attribute.
    """

    display_name = "NearestNeighbour"

    def __init__(
        self,
        encoder: nn.Module,
        rule: Literal["neighbour", "centroid"] = "centroid",
        distance: Literal["euclidean", "cosine"] = "euclidean",
        normalize: Literal["none", "l2", "cl2n"] = "none",
        scale: float = 1.0,
        mean_momentum: float = 0.01,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_encoder(encoder)
        self.rule = check_choice("rule", rule, _RULES)
        self.distance = check_choice("distance", distance, _DISTANCES)
        self.normalize = check_choice("normalize", normalize, _NORMALIZE)
        check_positive("scale", scale)
        check_positive("mean_momentum", mean_momentum)
        if mean_momentum > 1:
            raise ValueError(f"mean_momentum={mean_momentum!r} must be in (0, 1]")
        self.encoder = encoder
        self.scale = float(scale)
        self.mean_momentum = float(mean_momentum)
        if normalize == "cl2n":
            if feature_dim is None:
                feature_dim = math.prod(feature_shape_of(encoder))
            check_positive("feature_dim", feature_dim, int)
            self.register_buffer("feature_mean", torch.zeros(feature_dim))
            # 0 until the mean has been fitted or updated by training
            self.register_buffer("feature_mean_set", torch.zeros((), dtype=torch.bool))
        else:
            self.feature_mean = None
            self.feature_mean_set = None

    @classmethod
    def from_algorithm(cls, algorithm: Algorithm, **options) -> "NearestNeighbour":
        """Nearest neighbour / centroid on the encoder of another algorithm (shared, not copied).

        ``algorithm`` must have an ``encoder`` attribute (ProtoNet, Matching, Siamese,
        Baseline...); ``options`` are this class's arguments (``rule``, ``normalize``...).
        """
        encoder = getattr(algorithm, "encoder", None)
        if not isinstance(encoder, nn.Module):
            raise TypeError(
                f"algorithm {type(algorithm).__name__} has no encoder module; pass the feature extractor "
                "to NearestNeighbour(encoder, ...) directly"
            )
        return cls(encoder, **options)

    # -- features ---------------------------------------------------------------------------
    def transform(self, z: Tensor) -> Tensor:
        """The feature normalisation ``normalize`` applied to features ``[..., D]``."""
        if self.normalize == "none":
            return z
        if self.normalize == "cl2n":
            if not bool(self.feature_mean_set):
                raise ValueError(
                    "normalize='cl2n' needs the mean training feature, which is not set yet: call "
                    "fit_feature_mean(training_images) or meta-train this algorithm first"
                )
            if z.shape[-1] != self.feature_mean.shape[0]:
                raise ValueError(
                    f"features have size {z.shape[-1]} but feature_mean has {self.feature_mean.shape[0]}; "
                    "set feature_dim to the encoder's output size"
                )
            z = z - self.feature_mean
        return F.normalize(z, dim=-1)

    @torch.no_grad()
    def fit_feature_mean(self, images: Tensor | Iterable[Tensor], batch_size: int = 256) -> Tensor:
        """Set ``feature_mean`` to the mean feature of ``images`` (training-split inputs).

        Args:
            images: a tensor ``[N, *x_shape]`` or an iterable of such tensors (e.g. batches
                of a data loader yielding images only).
            batch_size: images embedded per encoder call when ``images`` is one tensor.

        The encoder runs in ``eval()`` mode; afterwards every module gets back its own mode (a
        borrowed encoder keeps the mode its owner gave it). Returns the mean.
        """
        if self.normalize != "cl2n":
            raise ValueError(
                f"fit_feature_mean is for normalize='cl2n' but this model has normalize={self.normalize!r}"
            )
        check_positive("batch_size", batch_size, int)
        if isinstance(images, Tensor):
            chunks: Iterable[Tensor] = images.split(batch_size)
        else:
            chunks = images
        total = torch.zeros_like(self.feature_mean, dtype=torch.float64)
        count = 0
        with eval_mode(self):
            for x in chunks:
                if not isinstance(x, Tensor) or x.dim() < 2:
                    raise TypeError(f"images must be tensors [N, *x_shape], got {describe(x)}")
                z = self.embed(x)
                if z.shape[1] != total.shape[0]:
                    raise ValueError(
                        f"the encoder gives {z.shape[1]} features but feature_mean has {total.shape[0]}; "
                        "set feature_dim to the encoder's output size"
                    )
                total += z.sum(0).double()
                count += z.shape[0]
        if count == 0:
            raise ValueError("images is empty; give at least one training image to compute the mean feature")
        self.feature_mean.copy_((total / count).to(self.feature_mean.dtype))
        self.feature_mean_set.fill_(True)
        return self.feature_mean.clone()

    # -- the rule ------------------------------------------------------------------------------
    def _raw_scores(self, support_z: Tensor, support_y: Tensor, query_z: Tensor, ways: int, soft: bool) -> Tensor:
        if self.rule == "centroid":
            targets = prototypes(support_z, support_y, ways)
        else:
            targets = support_z
        if self.distance == "euclidean":
            s = euclidean_scores(query_z, targets)
        else:
            s = cosine_scores(query_z, targets)
        s = s * self.scale
        if self.rule == "centroid":
            return s
        if soft:
            return class_reduce(s, support_y, ways, "logsumexp") - s.logsumexp(-1, keepdim=True)
        return class_reduce(s, support_y, ways, "max")

    def task_scores(self, support_z: Tensor, support_y: Tensor, query_z: Tensor, ways: int) -> Tensor:
        """Scores ``[B, Q, ways]`` of the hard rule on normalised features (higher = nearer)."""
        return self._raw_scores(self.transform(support_z), support_y, self.transform(query_z), ways, soft=False)

    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of the soft rule on raw features; metrics ``loss``, ``accuracy`` (hard rule).

        In ``train()`` mode with ``normalize="cl2n"`` the batch's mean feature also updates the
        moving average ``feature_mean``; that mean is of ``eval()``-mode features (a second,
        no-grad forward of the same images, see the module docstring), the ones prediction
        centres.
        """
        zs, zq = self.encode(batch)
        scores = self._raw_scores(zs, batch.support_y, zq, batch.ways, soft=True)  # type: ignore[arg-type]
        loss = F.cross_entropy(scores.flatten(0, 1), batch.query_y.flatten().long())
        with torch.no_grad():
            if self.normalize == "cl2n" and self.training:
                with eval_mode(self.encoder):
                    m = self.embed(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])).mean(0)
                if bool(self.feature_mean_set):
                    self.feature_mean.lerp_(m, self.mean_momentum)
                else:
                    self.feature_mean.copy_(m)
                    self.feature_mean_set.fill_(True)
            hard = self._raw_scores(zs, batch.support_y, zq, batch.ways, soft=False)  # type: ignore[arg-type]
            acc = accuracy(hard, batch.query_y).mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(acc)}

    def extra_repr(self) -> str:
        return f"rule={self.rule!r}, distance={self.distance!r}, normalize={self.normalize!r}, scale={self.scale}"
