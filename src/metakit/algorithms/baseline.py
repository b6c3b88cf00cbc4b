"""The transfer-learning baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look
at Few-shot Classification", ICLR 2019).

**Pre-training** (``meta_loss``): an ordinary classifier over *all* training classes, an
encoder ``f`` followed by a head of ``num_classes`` outputs, trained with the cross-entropy.
The training images are those of the meta-training episodes (support and query alike), each
labelled with its *global* class index ``batch.classes[b, y]`` (so the episode sampler only
serves as a source of labelled images; the episode structure is not used). Heads:

* ``head="linear"`` (Baseline): ``W f(x) + b`` (bias initialised to 0, as in the paper's code);
* ``head="cosine"`` (Baseline++): ``scale * g_k * cos(v_k, f(x))``, a cosine classifier with a
  learned direction ``v_k`` and a learned per-class norm ``g_k`` (weight normalisation, as in the
  paper's code; ``g_k`` starts at ``|v_k|``). The scale defaults to 2 for heads of at most 200
  classes and 10 above (the paper's code: Omniglot's thousands of classes need the larger
  one).

**Few-shot use** (``adapt`` / ``predict``): the encoder is frozen and a *new* head of the same
kind with ``ways`` outputs is fitted on the support features of the task by mini-batch SGD on
the cross-entropy, then scores the queries. Defaults follow the paper's released code: SGD
with learning rate 0.01, momentum 0.9, dampening 0.9 and weight decay 0.001, 100 epochs over
the support set in shuffled mini-batches of 4 (the paper's text says "100 iterations with a
batch size of 4"; its code runs 100 *epochs*). The head starts from PyTorch's ``nn.Linear``
initialisation (uniform in ``±1/sqrt(D)``).

Determinism and batching: the head's initialisation and the mini-batch order come from a
private ``torch.Generator`` seeded with ``finetune_seed`` (the global RNG is not touched), the
same for every task. A task's result therefore does not depend on which other tasks share its
batch: :meth:`Baseline.predict` fits the heads of all tasks of a batch at once (a ``[B, ways,
D]`` weight tensor; the loss is the sum of the per-task mean losses, so tasks do not interact,
and SGD with momentum and weight decay acts element-wise), exactly as if each task were
fitted alone with :meth:`Baseline.adapt`.

Evaluation runs under ``torch.no_grad()``; the fitting enables gradients for the head only
(also under ``torch.inference_mode()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks.episode import EpisodeBatch
from ._embedding import (
    EmbeddingAlgorithm,
    check_batch,
    check_choice,
    check_encoder,
    check_positive,
    check_query,
    feature_shape_of,
)
from .base import BuildContext, register

__all__ = ["Baseline", "HeadLearner", "CosineHead", "head_scores", "default_cosine_scale"]

_HEADS = ("linear", "cosine")


def _checked_finetuning(**options: Any) -> dict[str, Any]:
    """The fine-tuning options given (:attr:`Baseline.evaluation_options`), checked and converted."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name == "scale":
            if value is not None:
                check_positive("scale", value)
            out[name] = None if value is None else float(value)
        elif name in ("finetune_epochs", "finetune_batch_size"):
            check_positive(name, value, int)
            out[name] = value
        elif name == "finetune_lr":
            check_positive(name, value)
            out[name] = float(value)
        elif name in ("finetune_momentum", "finetune_dampening", "finetune_weight_decay"):
            check_positive(name, value, allow_zero=True)
            out[name] = float(value)
        elif name == "finetune_seed":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"finetune_seed={value!r} must be an int")
            out[name] = value
        else:
            raise ValueError(f"{name} is not a fine-tuning option of the baseline")
    return out


def default_cosine_scale(outputs: int) -> float:
    """The cosine head's scale in Chen et al.'s code: 2 up to 200 classes, 10 above."""
    return 2.0 if outputs <= 200 else 10.0


def head_scores(z: Tensor, head: str, weight: Tensor, second: Tensor, scale: float) -> Tensor:
    """Scores of features ``z [B, N, D]`` under per-task heads.

    ``head="linear"``: ``weight [B, W, D]``, ``second`` = bias ``[B, W]`` -> ``z W^T + b``.
    ``head="cosine"``: ``weight`` = directions ``[B, W, D]``, ``second`` = gains ``[B, W]`` ->
    ``scale * g_k * cos(v_k, z)``. Returns ``[B, N, W]``.
    """
    if head == "linear":
        return torch.baddbmm(second.unsqueeze(1), z, weight.transpose(1, 2))
    cos = F.normalize(z, dim=-1) @ F.normalize(weight, dim=-1).transpose(1, 2)
    return scale * second.unsqueeze(1) * cos


class CosineHead(nn.Module):
    """Baseline++'s pre-training classifier: ``scale * g_k * cos(v_k, z)`` over ``outputs`` classes."""

    def __init__(self, features: int, outputs: int, scale: float) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(features)
        self.direction = nn.Parameter(torch.empty(outputs, features).uniform_(-bound, bound))
        self.gain = nn.Parameter(self.direction.detach().norm(dim=1).clone())
        self.scale = float(scale)

    def forward(self, z: Tensor) -> Tensor:
        return head_scores(z.unsqueeze(0), "cosine", self.direction.unsqueeze(0), self.gain.unsqueeze(0), self.scale)[0]


@dataclass(frozen=True)
class HeadLearner:
    """A new head fitted on one task's support features; the frozen encoder embeds queries.

    Attributes:
        algorithm: the :class:`Baseline` whose encoder embeds the queries.
        weight: ``[ways, D]`` weights (linear) or directions (cosine).
        second: ``[ways]`` bias (linear) or per-class gain (cosine).
    """

    algorithm: "Baseline"
    weight: Tensor
    second: Tensor

    @property
    def ways(self) -> int:
        return self.weight.shape[0]

    def predict(self, query_x: Tensor) -> Tensor:
        """Scores ``[Q, ways]`` (logits) of query inputs ``[Q, *x_shape]``."""
        a = self.algorithm
        zq = a.embed(check_query(query_x)).unsqueeze(0)
        return head_scores(zq, a.head, self.weight.unsqueeze(0), self.second.unsqueeze(0), a.finetune_scale(self.ways))[0]


@register("baseline")
class Baseline(EmbeddingAlgorithm):
    """Baseline / Baseline++ (Chen et al. 2019); see the module docstring.

    Args:
        encoder: the backbone (e.g. Conv4()); its output is flattened to [N, D].
        num_classes: outputs of the pre-training head = classes of the training split; built
            from the config, it defaults to the training split's class count.
        head: linear (Baseline) or cosine (Baseline++), for pre-training and
            fine-tuning alike.
        scale: the cosine head's scale; None uses 2 for heads of at most 200 classes and 10
            above (so 10 when pre-training on Omniglot, 2 when fine-tuning a 5- or 20-way head).
            Set on a trained run (``metakit eval --option scale=S``, an evaluation-time option
            like the ``finetune_*`` ones) it changes the fine-tuning heads' scale only.
        finetune_epochs: passes over the support set when fitting a new head.
        finetune_batch_size: support examples per SGD step.
        finetune_lr: SGD learning rate.
        finetune_momentum: SGD momentum.
        finetune_dampening: SGD dampening.
        finetune_weight_decay: SGD weight decay (L2 penalty on the head).
        finetune_seed: seed of the head initialisation and the mini-batch order.
        feature_dim: feature size D; None reads it from the encoder's feature_dim.
    """

    display_name = "Baseline"
    evaluation_options = (
        "scale", "finetune_epochs", "finetune_batch_size", "finetune_lr", "finetune_momentum", "finetune_dampening",
        "finetune_weight_decay", "finetune_seed",
    )

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int | None = None,
        head: Literal["linear", "cosine"] = "linear",
        scale: float | None = None,
        finetune_epochs: int = 100,
        finetune_batch_size: int = 4,
        finetune_lr: float = 0.01,
        finetune_momentum: float = 0.9,
        finetune_dampening: float = 0.9,
        finetune_weight_decay: float = 0.001,
        finetune_seed: int = 0,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_encoder(encoder)
        if num_classes is None:
            raise ValueError(
                "num_classes is not set; give the number of training classes (the pre-training head's "
                "outputs), or build with Baseline.from_config, which takes it from the training split"
            )
        check_positive("num_classes", num_classes, int)
        self.head = check_choice("head", head, _HEADS)
        finetune = _checked_finetuning(
            scale=scale, finetune_epochs=finetune_epochs, finetune_batch_size=finetune_batch_size,
            finetune_lr=finetune_lr, finetune_momentum=finetune_momentum, finetune_dampening=finetune_dampening,
            finetune_weight_decay=finetune_weight_decay, finetune_seed=finetune_seed,
        )
        if feature_dim is None:
            feature_dim = math.prod(feature_shape_of(encoder))
        check_positive("feature_dim", feature_dim, int)
        self.encoder = encoder
        self.num_classes = num_classes
        self.scale: float | None = finetune["scale"]
        self.finetune_epochs: int = finetune["finetune_epochs"]
        self.finetune_batch_size: int = finetune["finetune_batch_size"]
        self.finetune_lr: float = finetune["finetune_lr"]
        self.finetune_momentum: float = finetune["finetune_momentum"]
        self.finetune_dampening: float = finetune["finetune_dampening"]
        self.finetune_weight_decay: float = finetune["finetune_weight_decay"]
        self.finetune_seed: int = finetune["finetune_seed"]
        self.feature_dim = feature_dim
        if head == "linear":
            self.classifier: nn.Module = nn.Linear(feature_dim, num_classes)
            nn.init.zeros_(self.classifier.bias)
        else:
            self.classifier = CosineHead(feature_dim, num_classes, self.finetune_scale(num_classes))

    @classmethod
    def from_config(cls, model: nn.Module, context: BuildContext, **options: Any) -> "Baseline":
        """Build with ``num_classes`` defaulting to ``context.num_train_classes``."""
        given = options.get("num_classes")
        known = context.num_train_classes
        if given is None:
            if known is None:
                raise ValueError(
                    "the baseline pre-trains a classifier over the training classes, but this data has no class "
                    "count (num_train_classes=None); use a classification dataset or set num_classes"
                )
            options["num_classes"] = known
        elif known is not None and given != known:
            raise ValueError(
                f"num_classes={given} but the training split has {known} classes; remove num_classes from the "
                "config (it defaults to the training split's class count)"
            )
        return cls(model, **options)

    def _set_evaluation_options(self, options: dict[str, Any]) -> None:
        for name, value in _checked_finetuning(**options).items():
            setattr(self, name, value)

    def finetune_scale(self, outputs: int) -> float:
        """The cosine head's scale for a head of ``outputs`` classes."""
        return self.scale if self.scale is not None else default_cosine_scale(outputs)

    def embed(self, x: Tensor) -> Tensor:
        """Backbone features ``[N, D]`` (flattened)."""
        z = super().embed(x)
        if z.shape[1] != self.feature_dim:
            raise ValueError(
                f"the encoder gives {z.shape[1]} features but the heads expect {self.feature_dim}; "
                "set feature_dim to the encoder's output size"
            )
        return z

    # -- pre-training -------------------------------------------------------------------------
    def global_labels(self, batch: EpisodeBatch) -> tuple[Tensor, Tensor]:
        """Global class indices ``classes[b, y]`` of the support ``[B, S]`` and query ``[B, Q]``."""
        if batch.classes is None:
            raise ValueError(
                "the baseline pre-trains on global class labels but batch.classes is None; sample episodes "
                "with their class indices (EpisodeBatch.classes, [tasks, ways])"
            )
        classes = batch.classes.long()
        lo, hi = int(classes.min()), int(classes.max())
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(
                f"batch.classes holds class indices {lo}..{hi} but num_classes={self.num_classes}; the "
                f"pre-training head covers classes 0..{self.num_classes - 1} (set num_classes to the training "
                "split's class count)"
            )
        return classes.gather(1, batch.support_y.long()), classes.gather(1, batch.query_y.long())

    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of the pre-training classifier over every image of the batch.

        Metrics: ``loss`` and ``accuracy`` (of the ``num_classes``-way classifier, 0..1).
        """
        check_batch(batch, self.display_name)
        ys, yq = self.global_labels(batch)
        x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        y = torch.cat([ys.flatten(), yq.flatten()])
        logits = self.classifier(self.embed(x))
        loss = F.cross_entropy(logits, y)
        acc = (logits.detach().argmax(-1) == y).float().mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(acc)}

    # -- fine-tuning ----------------------------------------------------------------------------
    def finetune_draws(self, ways: int, features: int, support_size: int) -> tuple[Tensor, Tensor, Tensor]:
        """The random draws of fine-tuning, from a generator seeded with ``finetune_seed``.

        Returns the initial weight ``[ways, features]`` (uniform in ``±1/sqrt(features)``), the
        initial bias (linear head, same law) or gain (cosine head: ``|v_k|``) ``[ways]`` (both
        float64), and the order ``[finetune_epochs, support_size]`` in which each epoch visits
        the support examples.
        """
        gen = torch.Generator().manual_seed(self.finetune_seed)
        bound = 1.0 / math.sqrt(features)
        w0 = (torch.rand(ways, features, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        if self.head == "linear":
            second0 = (torch.rand(ways, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        else:
            second0 = w0.norm(dim=1)
        order = torch.rand(self.finetune_epochs, support_size, generator=gen).argsort(-1)
        return w0, second0, order

    def fit_heads(self, support_z: Tensor, support_y: Tensor, ways: int) -> tuple[Tensor, Tensor]:
        """Fit one new head per task on frozen support features (see the module docstring).

        Args:
            support_z: ``[B, S, D]`` support features (detached here).
            support_y: ``[B, S]`` labels in ``0..ways-1``.
            ways: classes of the new heads.

        Returns:
            ``weight [B, ways, D]`` and ``second [B, ways]`` (bias or gain), detached.
        """
        b, s, d = support_z.shape
        w0, second0, order = self.finetune_draws(ways, d, s)
        order = order.to(support_z.device)
        scale = self.finetune_scale(ways)
        with torch.inference_mode(False), torch.enable_grad():
            z = support_z.detach().clone()
            y = support_y.detach().clone().long()
            weight = w0.to(z).expand(b, ways, d).clone().requires_grad_(True)
            second = second0.to(z).expand(b, ways).clone().requires_grad_(True)
            opt = torch.optim.SGD(
                [weight, second],
                lr=self.finetune_lr,
                momentum=self.finetune_momentum,
                dampening=self.finetune_dampening,
                weight_decay=self.finetune_weight_decay,
            )
            for epoch in range(self.finetune_epochs):
                perm = order[epoch]
                for i in range(0, s, self.finetune_batch_size):
                    idx = perm[i : i + self.finetune_batch_size]
                    scores = head_scores(z[:, idx], self.head, weight, second, scale)  # [B, n, W]
                    n = idx.shape[0]
                    ce = F.cross_entropy(scores.reshape(b * n, ways), y[:, idx].reshape(b * n), reduction="none")
                    loss = ce.reshape(b, n).mean(1).sum()  # tasks are independent: sum of per-task means
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        return weight.detach(), second.detach()

    def task_scores(self, support_z: Tensor, support_y: Tensor, query_z: Tensor, ways: int) -> Tensor:
        """Scores ``[B, Q, ways]``: a new head per task fitted on its support (all tasks at once);
        :meth:`predict` applies it to a batch."""
        weight, second = self.fit_heads(support_z, support_y, ways)
        return head_scores(query_z, self.head, weight, second, self.finetune_scale(ways))

    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int | None = None) -> HeadLearner:
        """Fit a new head on one task's support set ``[S, *x_shape]`` with labels ``[S]`` (once:
        the learner keeps the fitted head)."""
        ways = self.check_adapt_input(support_x, support_y, ways)
        zs = self.embed(support_x).unsqueeze(0)
        weight, second = self.fit_heads(zs, support_y.unsqueeze(0), ways)
        return HeadLearner(self, weight[0], second[0])

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, head={self.head!r}, finetune_epochs={self.finetune_epochs}, "
            f"finetune_batch_size={self.finetune_batch_size}, finetune_lr={self.finetune_lr}"
        )
