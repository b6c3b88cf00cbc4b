"""Meta-SGD (Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017).

Meta-SGD meta-learns, besides the initialisation ``theta``, a learning rate for every single
weight: a tensor ``alpha`` of the same shape as ``theta``. The inner step is

    theta' = theta - alpha * grad L_support(theta)        (element-wise product)

so ``alpha`` sets both the size and (through its sign) the direction of each weight's update.
``alpha`` and ``theta`` are trained together by the outer optimizer on the query loss after
adaptation, exactly as MAML trains ``theta`` (second order by default). The paper uses one
inner step; more steps reuse the same ``alpha``.

The inner step is the rule :class:`~.inner_updates.ElementSGD`; everything else (inner loop,
BatchNorm policy, task-by-task backward) is :class:`~.maml.MAML`'s. The rates are the rule's
``lrs`` (``self.inner_update.lrs``, also ``self.inner_lrs``: one tensor per adapted parameter, in
the order of ``self.adapt_names``) and are part of ``parameters()`` and the checkpoints.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from .base import register
from .maml import MAML

__all__ = ["MetaSGD"]


@register("metasgd")
class MetaSGD(MAML):
    """Meta-SGD: MAML with a learned learning rate per weight (Li et al. 2017).

    Args:
        model: the network (as for MAML).
        inner_lr: initial value of every learned rate (when inner_lr_range is not given).
        inner_lr_range: draw the initial rates uniformly from [low, high] instead (the paper's
            regression setting used [0.005, 0.1]); uses the global torch RNG.
        inner_steps: inner gradient steps during meta-training (the paper: 1).
        first_order: ignore second-order terms (the rates still get their gradient).
        eval_steps: inner steps for evaluation (default: inner_steps).
        adapt: which parameters adapt (all, head, a regular expression or a list of names).
        checkpoint: recompute the inner steps in the backward pass (less memory; second order only).
        task_batching: loop or vmap (vmap: only models of layers verified under vmap, see MAML).
        channels_last: channels_last memory format for image inputs (faster in some settings, far
            less accurate float32 meta-gradients; see MAML's option and ``metakit bench precision``).
        loss: auto, cross_entropy or mse.
        inner_update: sgd, momentum or nesterov (momentum on top of the rates; see MAML).
        inner_momentum: the momentum coefficient in [0, 1) (default 0.9); only with momentum or nesterov.
        learn_inner_momentum: meta-learn the momentum coefficient; only with momentum or nesterov.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_lr_range: Sequence[float] | None = None,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_steps: int | None = None,
        adapt: str | Sequence[str] = "all",
        checkpoint: bool = False,
        task_batching: Literal["loop", "vmap"] = "loop",
        channels_last: bool = False,
        loss: Literal["auto", "cross_entropy", "mse"] = "auto",
        inner_update: Literal["sgd", "momentum", "nesterov"] = "sgd",
        inner_momentum: float | None = None,
        learn_inner_momentum: bool = False,
    ) -> None:
        super().__init__(
            model,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            first_order=first_order,
            eval_steps=eval_steps,
            adapt=adapt,
            learn_inner_lr="per_element",
            checkpoint=checkpoint,
            task_batching=task_batching,
            channels_last=channels_last,
            loss=loss,
            inner_update=inner_update,
            inner_momentum=inner_momentum,
            learn_inner_momentum=learn_inner_momentum,
        )
        if inner_lr_range is not None:
            lo_hi = list(inner_lr_range)
            if len(lo_hi) != 2 or not all(isinstance(v, (int, float)) for v in lo_hi) or not lo_hi[0] <= lo_hi[1]:
                raise ValueError(f"inner_lr_range={inner_lr_range!r} must be [low, high] with low <= high")
            assert self.inner_lrs is not None
            with torch.no_grad():
                for rate in self.inner_lrs:
                    rate.uniform_(float(lo_hi[0]), float(lo_hi[1]))
