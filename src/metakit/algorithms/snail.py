"""SNAIL, the Simple Neural AttentIve meta-Learner (Mishra, Rohaninejad, Chen & Abbeel, "A Simple
Neural Attentive Meta-Learner", ICLR 2018), for N-way K-shot classification.

A model-based (black-box) meta-learner: it learns a task inside its forward pass. An encoder
``f`` (the config's ``model``, e.g. :class:`~metakit.models.Conv4`: 64 features on Omniglot)
embeds every image; one task is the sequence of its ``N * K`` support pairs
``(f(x_i), onehot(y_i))`` followed by a query ``(f(x), 0)`` with an all-zero label, and the
causal sequence network :class:`~metakit.models.SNAILNet` (temporal-convolution and attention
blocks) outputs the scores of the query's class at the last step:

    scores(x) = SNAILNet([(f(x_1), e_{y_1}), ..., (f(x_NK), e_{y_NK}), (f(x), 0)])[NK]

The meta-training loss is the cross-entropy of these scores, averaged over all queries of all
tasks of a batch; encoder and sequence network are trained together by the outer optimizer.

**Context.** The network is built for ``ways`` classes (its output layer) and a context of
``ways * shots + 1`` steps (``shots`` is an algorithm option, the training shots). ``adapt``
and ``predict`` refuse tasks of other ``ways`` and support sets longer than ``ways * shots``;
shorter ones (fewer shots) are accepted.

**Batching.** The queries of a task share its support sequence: the network runs the support
prefix once and every query as an independent one-step continuation of it (the branches of
:mod:`metakit.models.snail`), all queries of all tasks in one call. A query attends to the
support and to itself, never to another query, so its scores do not depend on the other
queries (with an encoder in ``eval()`` mode: in training mode BatchNorm statistics cover the
whole meta-batch, as for the metric methods).

**Order.** The sampler lays out the support class by class; in training (``meta_loss`` in
``train()`` mode, ``shuffle_support=True``) the support pairs of every task are put in a random
order drawn from the global torch generator (saved and restored with the trainer's
checkpoints), so the network cannot read a label from a position. Evaluation and ``adapt`` use
the order given.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.snail import SNAILNet
from ..tasks.episode import EpisodeBatch
from ._embedding import (
    EmbeddingAlgorithm,
    check_batch,
    check_encoder,
    check_every_class_present,
    check_positive,
    check_support,
    encode_batch,
    feature_shape_of,
)
from .base import BuildContext, accuracy, register

__all__ = ["SNAIL", "shuffle_support"]


def _context_message(support_len: int, ways: int, shots: int) -> str:
    return (
        f"the support set has {support_len} examples but this SNAIL network's context holds {ways * shots} "
        f"({ways}-way x {shots}-shot, algorithm.shots={shots}); give at most {shots} example(s) per class, or "
        f"train with algorithm.shots >= {-(-support_len // ways)} (and train.shots to match)"
    )


def shuffle_support(support_z: Tensor, support_y: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The support pairs of every task in an independent random order: ``[B, S, ...]``, ``[B, S]``."""
    b, s = support_y.shape
    order = torch.rand(b, s, generator=generator, device=support_y.device).argsort(1)
    z = support_z.gather(1, order.view(b, s, *([1] * (support_z.dim() - 2))).expand_as(support_z))
    return z, support_y.gather(1, order)


@register("snail")
class SNAIL(EmbeddingAlgorithm):
    """SNAIL (Mishra et al. 2018); see the module docstring for the sequence and the batching.

    Args:
        encoder: the embedding network (e.g. Conv4(), 64 features on Omniglot); its output is
            flattened to [N, D].
        ways: classes per task the network is built for (its output layer); null (the config's
            default) takes train.ways.
        shots: support examples per class the network's context holds (the context is
            ways * shots + 1 steps); set it to train.shots. Tasks with more shots are refused.
        filters: channels each dense block of a TC block adds (128 in the paper).
        key_sizes: key size of each attention block (the paper: 64, 256, 512); a TC block sits
            between consecutive attention blocks.
        value_sizes: value size of each attention block (the paper: 32, 128, 256).
        shuffle_support: in training, present the support pairs of every task in a random order
            (true) or in the sampler's class-by-class order (false).
    """

    display_name = "SNAIL"

    def __init__(
        self,
        encoder: nn.Module,
        ways: int | None = None,
        shots: int = 1,
        filters: int = 128,
        key_sizes: Sequence[int] = (64, 256, 512),
        value_sizes: Sequence[int] = (32, 128, 256),
        shuffle_support: bool = True,
    ) -> None:
        super().__init__()
        check_encoder(encoder)
        if ways is None:
            raise ValueError(
                "ways=None: SNAIL's network is built for a number of classes; give ways (in a config it "
                "defaults to train.ways)"
            )
        check_positive("ways", ways, int)
        check_positive("shots", shots, int)
        if not isinstance(shuffle_support, bool):
            raise TypeError(f"shuffle_support={shuffle_support!r} must be True or False")
        self.encoder = encoder
        self.ways = int(ways)
        self.shots = int(shots)
        self.shuffle = shuffle_support
        features = 1
        for s in feature_shape_of(encoder):
            features *= int(s)
        self.net = SNAILNet(
            features + self.ways, self.ways, self.context + 1, filters=filters, key_sizes=key_sizes, value_sizes=value_sizes
        )

    @classmethod
    def from_config(cls, model: nn.Module, context: BuildContext, **options: Any) -> "SNAIL":
        """Build with ``ways`` defaulting to the training ways of ``context``."""
        given = options.get("ways")
        if given is None:
            if context.ways is None:
                raise ValueError("SNAIL classifies N-way tasks, but the tasks have no ways; use a classification family")
            options["ways"] = context.ways
        elif context.ways is not None and given != context.ways:
            raise ValueError(
                f"algorithm.ways={given} but train.ways={context.ways}; remove algorithm.ways from the config "
                "(it defaults to train.ways)"
            )
        return cls(model, **options)

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Refuse, when the config is read, the episodes of ``train`` or ``eval`` the network cannot
        take (:meth:`check_task`): other ways than it is built for, more shots than its context."""
        from ..options import ConfigError

        defaults = inspect.signature(cls).parameters
        shots = config.algorithm.options.get("shots", defaults["shots"].default)
        ways = config.algorithm.options.get("ways") or config.train.ways
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (shots, ways)):
            return  # the constructor names the bad option
        for section in ("train", "eval"):
            sizes = getattr(config, section)
            if sizes.ways is not None and sizes.ways != ways:
                raise ConfigError(
                    f"{section}.ways={sizes.ways} but the SNAIL network is built for {ways}-way tasks (train.ways, its "
                    f"output layer); set {section}.ways={ways}"
                )
            if sizes.shots is not None and sizes.shots > shots:
                raise ConfigError(f"{section}.shots={sizes.shots}: " + _context_message(ways * sizes.shots, ways, shots))

    @property
    def context(self) -> int:
        """The longest support sequence the network takes: ``ways * shots``."""
        return self.ways * self.shots

    # -- the sequence ---------------------------------------------------------------------------
    def check_task(self, ways: int, support_len: int) -> None:
        """Raise ValueError unless tasks of ``ways`` classes with ``support_len`` support examples fit."""
        if ways != self.ways:
            raise ValueError(
                f"the task is {ways}-way but this SNAIL network was built for {self.ways}-way tasks (its output "
                f"layer scores {self.ways} classes); give tasks of exactly {self.ways} classes, or train a "
                f"{ways}-way model (train.ways={ways})"
            )
        if support_len > self.context:
            raise ValueError(_context_message(support_len, self.ways, self.shots))

    def task_scores(self, support_z: Tensor, support_y: Tensor, query_z: Tensor, ways: int) -> Tensor:
        """Scores ``[B, Q, ways]``: every query ``[B, Q, D]`` read at the step after the task's
        support sequence ``[B, S, D]`` with labels ``[B, S]`` (module docstring)."""
        self.check_task(ways, support_z.shape[1])
        labels = F.one_hot(support_y.long(), ways).to(support_z.dtype)
        prefix = torch.cat([support_z.flatten(2), labels], -1)
        q = query_z.flatten(2)
        branches = torch.cat([q, q.new_zeros(*q.shape[:2], ways)], -1)
        return self.net(prefix, branches)[1]

    # -- the algorithm protocol -------------------------------------------------------------------
    def check_adapt_input(self, support_x: Tensor, support_y: Tensor, ways: int | None) -> int:
        """Validate one task's support set (``ways`` defaults to the network's)."""
        ways = check_support(support_x, support_y, self.ways if ways is None else ways, self.display_name)
        self.check_task(ways, support_y.shape[0])
        check_every_class_present(support_y.unsqueeze(0), ways)
        return ways

    def predict(self, batch: EpisodeBatch) -> Tensor:
        """Scores ``[B, Q, ways]`` of the queries of every task (one encoder and one network call)."""
        check_batch(batch, self.display_name)
        self.check_task(int(batch.ways), batch.support_y.shape[1])  # type: ignore[arg-type]
        return super().predict(batch)

    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of the queries over all tasks; metrics ``loss`` and ``accuracy`` (0..1)."""
        check_batch(batch, self.display_name)
        ways = int(batch.ways)  # type: ignore[arg-type]
        self.check_task(ways, batch.support_y.shape[1])
        check_every_class_present(batch.support_y, ways)
        zs, zq = encode_batch(self.embed, batch)
        ys = batch.support_y
        if self.training and self.shuffle:
            zs, ys = shuffle_support(zs, ys)
        scores = self.task_scores(zs, ys, zq, ways)
        loss = F.cross_entropy(scores.flatten(0, 1), batch.query_y.flatten().long())
        acc = accuracy(scores.detach(), batch.query_y).mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(acc)}

    def extra_repr(self) -> str:
        return f"ways={self.ways}, shots={self.shots}, context={self.context}, shuffle_support={self.shuffle}"
