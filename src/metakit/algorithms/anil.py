"""ANIL, "Almost No Inner Loop" (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature
Reuse? Towards Understanding the Effectiveness of MAML", ICLR 2020).

ANIL is MAML whose inner loop adapts only the head (the last layer); the body is shared by all
tasks and meta-learned through the outer loop only::

    head_i' = inner loop on the head, from head, with the body fixed
    meta-loss = 1/B * sum_i L_query(T_i; body, head_i')

The body still receives its full meta-gradient, including (second order) the path through the
head's adaptation, because the head's inner gradient depends on the body's features. The
paper shows ANIL matches MAML on few-shot benchmarks at a fraction of the inner-loop cost.

"Head" means the parameters of the last submodule that owns parameters, which must be an
``nn.Linear`` (``Conv4.head``, the last ``Linear`` of an ``MLP``; a Conv4 without
``out_features`` is an error); ``adapt`` takes a regular expression or a list of names for
other models. All machinery is :class:`~.maml.MAML`'s.
"""

from __future__ import annotations

from typing import Literal, Sequence

from torch import nn

from .base import register
from .maml import MAML

__all__ = ["ANIL"]


@register("anil")
class ANIL(MAML):
    """MAML with only the head adapted in the inner loop (Raghu et al. 2020).

    Args:
        model: the network (a body followed by a linear head, e.g. Conv4 with out_features).
        inner_lr: inner-loop learning rate of the head.
        inner_steps: inner gradient steps during meta-training.
        first_order: ignore second-order terms.
        eval_steps: inner steps for evaluation (default: inner_steps).
        adapt: the adapted parameters: head (default), or a regular expression or list of names.
        learn_inner_lr: none, per_layer_step (MAML++ LSLR) or per_element (Meta-SGD style).
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
        inner_steps: int = 1,
        first_order: bool = False,
        eval_steps: int | None = None,
        adapt: str | Sequence[str] = "head",
        learn_inner_lr: Literal["none", "per_layer_step", "per_element"] = "none",
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
            learn_inner_lr=learn_inner_lr,
            checkpoint=checkpoint,
            task_batching=task_batching,
            channels_last=channels_last,
            loss=loss,
            inner_update=inner_update,
            inner_momentum=inner_momentum,
            learn_inner_momentum=learn_inner_momentum,
        )
