"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017) and first-order MAML.

MAML learns an initialisation ``theta`` from which a few gradient steps on a task's support set
give a model that does well on the task's queries. For a meta-batch of tasks ``T_1..T_B``::

    theta_i' = inner loop from theta on the support set of T_i     (see metakit.algorithms._inner)
    meta-loss = 1/B * sum_i L_query(T_i; theta_i')                  (cross-entropy, or MSE for regression)

and the outer optimizer (any ``torch.optim`` optimizer) minimises the meta-loss over ``theta``.
Second-order MAML differentiates through the inner gradient steps; first-order MAML
(``first_order=True``, FOMAML, section 5.2 of the paper) treats the inner gradients as constants,
so the meta-gradient is ``1/B * sum_i dL_query/d theta_i'``.

The inner step is an update rule of :mod:`.inner_updates`, picked by the options: plain SGD
``theta - inner_lr * g`` (the paper's), learned rates per parameter tensor and step (MAML++'s
LSLR, Antoniou et al. 2019; ``learn_inner_lr=per_layer_step``) or per weight (Meta-SGD;
``per_element``), optionally with momentum (``inner_update=momentum`` or ``nesterov``, fixed or
learned coefficient ``inner_momentum``). Learned hyper-parameters are parameters of the
algorithm (``self.inner_update``), trained by the outer optimizer with ``theta``. Besides,
MAML++'s multi-step loss and the choice of adapted parameters (ANIL) are options; Meta-SGD and
ANIL subclass :class:`MAML`. The model, the rule and few-shot use (:meth:`MAML.adapt`,
``predict``) are the engine's (:class:`~._inner.InnerLoopAlgorithm`), shared with Reptile.

Memory and speed: :meth:`MAML.meta_backward` (what the trainer calls) back-propagates each task
as soon as its query loss is computed, so memory holds one task's graph at a time;
``checkpoint=True`` additionally recomputes the inner steps in the backward pass. Image models
run in NCHW by default; ``channels_last=True`` gives up meta-gradient accuracy for speed (see
the option). BatchNorm follows the transductive policy of :mod:`._inner`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from ..tasks.episode import EpisodeBatch
from ._inner import (
    AdaptedLearner,
    FunctionalModel,
    InnerLoopAlgorithm,
    LossName,
    Params,
    _CHECKPOINT_FIRST_ORDER,
    inner_loop,
    inner_loop_vmap,
    zero_missing_grads,
)
from .base import register
from .inner_updates import SGD, ElementSGD, InnerUpdate, LayerStepSGD, Momentum

__all__ = ["MAML", "AdaptedLearner"]

LearnLR = Literal["none", "per_layer_step", "per_element"]
InnerUpdateName = Literal["sgd", "momentum", "nesterov"]
#: the momentum coefficient of inner_update=momentum/nesterov when inner_momentum is not given
DEFAULT_INNER_MOMENTUM = 0.9


def build_inner_update(
    params: Params, *, inner_lr: object, learn_inner_lr: object, inner_steps: int, inner_update: object = "sgd",
    inner_momentum: object = None, learn_inner_momentum: object = False,
) -> InnerUpdate:
    """The rule MAML's options describe, for the adapted parameters ``params``: ``SGD``,
    ``LayerStepSGD`` or ``ElementSGD`` by ``learn_inner_lr``, inside ``Momentum`` when
    ``inner_update`` is momentum or nesterov.

    Raises:
        ValueError: an option is invalid or has no effect; the message names it, its value and the fix.
    """
    if not isinstance(inner_lr, (int, float)) or isinstance(inner_lr, bool) or not inner_lr >= 0:
        raise ValueError(f"inner_lr={inner_lr!r} must be a number >= 0")
    if learn_inner_lr not in ("none", "per_layer_step", "per_element"):
        raise ValueError(f"learn_inner_lr={learn_inner_lr!r} is not valid; use none, per_layer_step or per_element")
    if inner_update not in ("sgd", "momentum", "nesterov"):
        raise ValueError(f"inner_update={inner_update!r} is not valid; use sgd, momentum or nesterov")
    if not isinstance(learn_inner_momentum, bool):
        raise ValueError(f"learn_inner_momentum={learn_inner_momentum!r} must be true or false")
    if inner_update == "sgd":
        for name, value, unset in (("inner_momentum", inner_momentum, None), ("learn_inner_momentum", learn_inner_momentum, False)):
            if value is not unset:
                raise ValueError(
                    f"{name}={value!r} has no effect with inner_update='sgd'; set inner_update=momentum "
                    f"(or nesterov) to use it, or leave {name} unset"
                )
    elif inner_momentum is not None and (
        not isinstance(inner_momentum, (int, float)) or isinstance(inner_momentum, bool)
        or not math.isfinite(inner_momentum) or not 0 <= inner_momentum < 1
    ):
        raise ValueError(
            f"inner_momentum={inner_momentum!r} must be a number in [0, 1) (the momentum coefficient, "
            f"e.g. {DEFAULT_INNER_MOMENTUM})"
        )
    if learn_inner_lr == "per_layer_step":
        if inner_steps < 1:
            raise ValueError("learn_inner_lr='per_layer_step' needs inner_steps >= 1 (one rate per step)")
        rule: InnerUpdate = LayerStepSGD(params, inner_steps, float(inner_lr))
    elif learn_inner_lr == "per_element":
        rule = ElementSGD(params, float(inner_lr))
    else:
        rule = SGD(float(inner_lr))
    if inner_update == "sgd":
        return rule
    mu = DEFAULT_INNER_MOMENTUM if inner_momentum is None else float(inner_momentum)  # type: ignore[arg-type]
    dtype = next(iter(params.values())).dtype
    return Momentum(rule, mu, nesterov=inner_update == "nesterov", learn=learn_inner_momentum, dtype=dtype)


def _rename_pre_rule_rates(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load state dicts that name the learned rates ``inner_lrs.<i>``, the name older checkpoints
    use for what is ``inner_update.lrs.<i>`` (the rates of the inner update rule)."""
    old = f"{prefix}inner_lrs."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[f"{prefix}inner_update.lrs.{key[len(old):]}"] = state_dict.pop(key)


@register("maml")
class MAML(InnerLoopAlgorithm):
    """Model-Agnostic Meta-Learning (Finn et al. 2017); ``first_order=True`` gives FOMAML.

    Args:
        model: the network whose initialisation is meta-learned (e.g. ``Conv4(out_features=ways,
            track_running_stats=False)``, or ``MLP(1, [40, 40], 1)`` for sinusoids).
        inner_lr: inner-loop learning rate (alpha); the initial value when it is learned.
        inner_steps: inner gradient steps during meta-training.
        first_order: ignore second-order terms (first-order MAML).
        eval_steps: inner steps when adapting for evaluation and prediction (default: inner_steps).
        adapt: which parameters the inner loop updates: all, head (the last layer with
            parameters, which must be a Linear; ANIL), or a regular expression matched against
            parameter names (or a list of names).
        learn_inner_lr: none (fixed inner_lr), per_layer_step (one learned rate per parameter
            tensor and per inner step, MAML++'s LSLR) or per_element (one per weight, Meta-SGD).
            per_layer_step learns inner_steps rates per tensor: when eval_steps > inner_steps,
            the steps after the last trained one reuse the last step's rates.
        multi_step_loss: meta-loss is the mean of the query losses after every inner step
            (MAML++'s multi-step loss, uniform weights) instead of after the last one.
        checkpoint: recompute the inner steps during the backward pass instead of storing their
            activations (less memory for many inner steps, about one more support
            forward/backward per step). Second order only: an error with first_order, where
            there is nothing to recompute.
        task_batching: loop (one task at a time; needed for BatchNorm and the other
            normalisation layers except GroupNorm) or vmap (all tasks in one vectorised call;
            fast for small models such as the sinusoid MLP; only for the layer types verified
            under vmap, metakit.algorithms._inner.VMAP_VERIFIED).
        channels_last: run image (4-D) inputs and conv weights in channels_last memory format
            (the inner loop of second-order training stays in NCHW). Off by default: PyTorch's
            CPU BatchNorm kernels for channels_last tensors compute their per-channel statistics
            in float32 with an error that grows with the elements per channel (1.9e-6 relative on 5
            images of 64x28x28, 3.0e-5 on 300, against 1e-7 in NCHW at every size), and the
            training-mode backward turns it into large gradient errors: against float64 the
            float32 meta-gradient on the max-pooling Conv4 is off by up to 2e-1 (first-order
            20-way 1-shot) in channels_last against at most 3e-4 in NCHW (``metakit bench
            precision``, one thread; the figures per setting and CPU are in the README). The
            speed gain is 1.02x-1.48x per meta-iteration on the max-pooling Conv4 and
            0.93x-1.16x on the stride-2 network (same benchmark).
        loss: auto (cross_entropy for classification, mse for regression), cross_entropy or mse.
        inner_update: sgd (the rates alone), momentum (heavy ball: v = mu*v + g, step along v)
            or nesterov (step along g + mu*v), as torch.optim.SGD's momentum, on top of the
            rates chosen by inner_lr and learn_inner_lr.
        inner_momentum: the momentum coefficient mu in [0, 1) (initial value when learned;
            default 0.9); only with inner_update momentum or nesterov.
        learn_inner_momentum: meta-learn mu (one scalar); only with inner_update momentum or
            nesterov.
    """

    option_help = {"channels_last": "run image (4-D) inputs and conv weights in channels_last memory format: up to 1.48x faster per step, with float32 meta-gradients far less accurate (metakit bench precision); default false"}  # noqa: E501 - the Args entry carries measurements, not help

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_steps: int | None = None,
        adapt: str | Sequence[str] = "all",
        learn_inner_lr: LearnLR = "none",
        multi_step_loss: bool = False,
        checkpoint: bool = False,
        task_batching: Literal["loop", "vmap"] = "loop",
        channels_last: bool = False,
        loss: LossName = "auto",
        inner_update: InnerUpdateName = "sgd",
        inner_momentum: float | None = None,
        learn_inner_momentum: bool = False,
    ) -> None:
        if checkpoint and first_order:
            raise ValueError(_CHECKPOINT_FIRST_ORDER)
        if checkpoint and task_batching == "vmap":
            raise ValueError("checkpoint=True needs task_batching='loop' (vmap keeps every task's graph anyway)")
        super().__init__(
            model,
            inner_update=lambda params: build_inner_update(
                params, inner_lr=inner_lr, learn_inner_lr=learn_inner_lr, inner_steps=inner_steps,
                inner_update=inner_update, inner_momentum=inner_momentum, learn_inner_momentum=learn_inner_momentum,
            ),
            inner_steps=inner_steps,
            eval_steps=eval_steps,
            adapt=adapt,
            task_batching=task_batching,
            channels_last=channels_last,
            loss=loss,
        )
        self.inner_lr = float(inner_lr)
        self.first_order = bool(first_order)
        self.multi_step_loss = bool(multi_step_loss)
        self.checkpoint = bool(checkpoint)
        self.learn_inner_lr = learn_inner_lr
        # the inner loop of second-order training runs in NCHW: PyTorch's BatchNorm double
        # backward is ~3x slower on channels_last tensors (see the module docstring of ._inner)
        self._fmodel_second_order = FunctionalModel(model, channels_last=False)
        self.register_load_state_dict_pre_hook(_rename_pre_rule_rates)

    @property
    def inner_lrs(self) -> nn.ParameterList | None:
        """The learned inner rates (``lrs`` of the rule, one entry per adapted parameter in the
        order of ``adapt_names``), or ``None`` with a fixed ``inner_lr``."""
        rule = self.inner_update.base if isinstance(self.inner_update, Momentum) else self.inner_update
        return getattr(rule, "lrs", None)

    # -- the inner loop --------------------------------------------------------------------------
    def _adapt(self, support_x: Tensor, support_y: Tensor, ways: int | None, *, train: bool, steps: int) -> list[Params]:
        second_order = train and not self.first_order
        return inner_loop(
            self._fmodel_second_order if second_order else self._fmodel,
            self._fmodel.params(),
            support_x,
            support_y,
            self._loss(ways),
            steps=steps,
            update=self.inner_update,
            adapt=self.adapt_names,
            first_order=self.first_order,
            create_graph=train,
            checkpoint=self.checkpoint,
        )

    def _query_loss(self, traj: list[Params], query_x: Tensor, query_y: Tensor, ways: int | None) -> tuple[Tensor, Tensor]:
        """The meta-loss of one task and the outputs of its adapted model on the queries."""
        loss_fn = self._loss(ways)
        out = self._fmodel(traj[-1], query_x)
        loss = loss_fn(out, query_y)
        if self.multi_step_loss and len(traj) > 2:
            losses = [loss_fn(self._fmodel(p, query_x), query_y) for p in traj[1:-1]] + [loss]
            loss = torch.stack(losses).mean()
        return loss, out

    def _task_losses_vmap(self, batch: EpisodeBatch) -> tuple[Tensor, Tensor]:
        run = inner_loop_vmap(
            self._fmodel,
            self._fmodel.params(),
            batch.support_x,
            batch.support_y,
            self._loss(batch.ways),
            steps=self.inner_steps,
            update=self.inner_update,
            adapt=self.adapt_names,
            first_order=self.first_order,
        )
        return run(lambda traj, qx, qy: self._query_loss(traj, qx, qy, batch.ways))(batch.query_x, batch.query_y)  # type: ignore[no-any-return]

    # -- the protocol -----------------------------------------------------------------------------
    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        """Mean query loss after adaptation over the tasks (keeps every task's graph; the trainer
        uses the lighter :meth:`meta_backward`)."""
        self._check_batch(batch)
        if self.task_batching == "vmap":
            losses, outs = self._task_losses_vmap(batch)
            loss = losses.mean()
            return loss, self._metrics(losses.detach().tolist(), list(outs.detach()), batch)
        task_losses, outs = [], []
        for ep in batch:
            traj = self._adapt(ep.support_x, ep.support_y, ep.ways, train=True, steps=self.inner_steps)
            loss, out = self._query_loss(traj, ep.query_x, ep.query_y, ep.ways)
            task_losses.append(loss)
            outs.append(out.detach())
        loss = torch.stack(task_losses).mean()
        return loss, self._metrics([float(v.detach()) for v in task_losses], outs, batch)

    def meta_backward(self, batch: EpisodeBatch) -> dict[str, float]:
        """Accumulate the meta-gradient in ``.grad``, back-propagating task by task.

        Every trainable parameter ends with a gradient (zero when the loss does not use it).
        """
        self._check_batch(batch)
        if self.task_batching == "vmap":
            losses, outs = self._task_losses_vmap(batch)
            losses.mean().backward()
            zero_missing_grads(self.parameters())
            return self._metrics(losses.detach().tolist(), list(outs.detach()), batch)
        b = batch.num_tasks
        losses, outs = [], []
        for ep in batch:
            traj = self._adapt(ep.support_x, ep.support_y, ep.ways, train=True, steps=self.inner_steps)
            loss, out = self._query_loss(traj, ep.query_x, ep.query_y, ep.ways)
            (loss / b).backward()
            losses.append(float(loss.detach()))
            outs.append(out.detach())
        zero_missing_grads(self.parameters())
        return self._metrics(losses, outs, batch)
