"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017) and first-order MAML.

MAML learns an initialisation ``theta`` from which a few gradient steps on a task's support set
give a model that does well on the task's queries. For a meta-batch of tasks ``T_1..T_B``::

    theta_i' = inner loop from theta on the support set of T_i     (see metakit.algorithms._inner)
    meta-loss = 1/B * sum_i L_query(T_i; theta_i')                  (cross-entropy, or MSE for regression)

and the outer optimizer (any ``torch.optim`` optimizer) minimises the meta-loss over ``theta``.
Second-order MAML differentiates through the inner gradient steps; first-order MAML
(``first_order=True``, FOMAML, section 5.2 of the paper) treats the inner gradients as constants,
so the meta-gradient is ``1/B * sum_i dL_query/d theta_i'``.

This module also holds what the rest of the family shares (Meta-SGD, ANIL and Reptile subclass
:class:`MAML`): learned inner learning rates (per parameter tensor and step as in MAML++'s LSLR,
Antoniou et al. 2019, or per element as in Meta-SGD), MAML++'s multi-step loss, which
parameters adapt, and the learner returned by :meth:`MAML.adapt`.

Memory and speed: :meth:`MAML.meta_backward` (what the trainer calls) back-propagates each task
as soon as its query loss is computed, so memory holds one task's graph at a time;
``checkpoint=True`` additionally recomputes the inner steps in the backward pass. With
``channels_last=True`` (the default) image models run in the memory format oneDNN computes in
natively on CPU. BatchNorm follows the transductive policy of :mod:`._inner`.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks.episode import EpisodeBatch
from ._inner import (
    FunctionalModel,
    LearningRate,
    Params,
    _CHECKPOINT_FIRST_ORDER,
    check_batchnorm,
    check_vmap,
    inner_loop,
    inner_loop_vmap,
    select_parameters,
    zero_missing_grads,
)
from .base import Algorithm, BuildContext, register

__all__ = ["MAML", "AdaptedLearner"]

LossName = Literal["auto", "cross_entropy", "mse"]
LearnLR = Literal["none", "per_layer_step", "per_element"]


def _loss_fn(name: str, ways: int | None) -> Any:
    if name == "auto":
        name = "mse" if ways is None else "cross_entropy"
    if name == "mse":
        return F.mse_loss
    return F.cross_entropy


class AdaptedLearner:
    """A model adapted to one task: the parameters after each inner step.

    Attributes:
        trajectory: ``[theta_0, ..., theta_K]`` parameter dicts (detached); ``theta_K`` is the
            adapted model.
    """

    def __init__(self, fmodel: FunctionalModel, trajectory: list[Params]) -> None:
        self._fmodel = fmodel
        self.trajectory = trajectory

    @property
    def steps(self) -> int:
        """Inner steps taken."""
        return len(self.trajectory) - 1

    @property
    def params(self) -> Params:
        """The adapted parameters."""
        return self.trajectory[-1]

    def predict(self, query_x: Tensor, step: int | None = None) -> Tensor:
        """Outputs for ``query_x`` (``[Q, ...]``) after ``step`` inner steps (default: all).

        Models with BatchNorm normalise with the statistics of ``query_x`` (transductive).
        """
        k = self.steps if step is None else step
        if not 0 <= k <= self.steps:
            raise ValueError(f"step={step} is out of range: this learner took {self.steps} inner steps (0..{self.steps})")
        return self._fmodel(self.trajectory[k], query_x)


@register("maml")
class MAML(Algorithm):
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
            (faster on CPU with oneDNN: 1.4-1.6x per meta-iteration on the Omniglot Conv4). The
            inner loop of second-order training stays in NCHW, where PyTorch's BatchNorm double
            backward is about 3x faster (torch 2.13: 20 vs 57 ms for 25 images of 64x28x28).
            Accuracy: PyTorch's channels_last BatchNorm forward rounds ~15x more than the NCHW
            one (5e-6 vs 3e-7 relative), so more ReLU inputs within rounding of zero switch
            side, each switching its gradient on or off. The meta-gradient's deviation from a
            float64 computation is then the same as NCHW's on 5-way tasks (2.6e-4 relative on
            the issue's 5-way 1-shot work, 2e-5 on 5-way 5-shot) but larger on 20-way tasks
            with 100-300 query images (2e-3 to 6e-3, against 1e-5 to 3e-4 in NCHW). Set
            false when you need reference-grade float32 gradients.
        loss: auto (cross_entropy for classification, mse for regression), cross_entropy or mse.
    """

    task_kinds = ("classification", "regression")
    option_help = {"channels_last": "run image (4-D) inputs and conv weights in channels_last memory format (the inner loop of second-order training stays in NCHW); false gives reference-grade float32 gradients on 20-way tasks"}  # noqa: E501 - the Args entry carries measurements, not help

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
        channels_last: bool = True,
        loss: LossName = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        name = type(self).__name__
        check_batchnorm(model, name)
        if not isinstance(inner_steps, int) or isinstance(inner_steps, bool) or inner_steps < 0:
            raise ValueError(f"inner_steps={inner_steps!r} must be an int >= 0")
        if eval_steps is not None and (not isinstance(eval_steps, int) or isinstance(eval_steps, bool) or eval_steps < 0):
            raise ValueError(f"eval_steps={eval_steps!r} must be an int >= 0 (or None: the same as inner_steps)")
        if not isinstance(inner_lr, (int, float)) or isinstance(inner_lr, bool) or not inner_lr >= 0:
            raise ValueError(f"inner_lr={inner_lr!r} must be a number >= 0")
        if learn_inner_lr not in ("none", "per_layer_step", "per_element"):
            raise ValueError(
                f"learn_inner_lr={learn_inner_lr!r} is not valid; use none, per_layer_step or per_element"
            )
        if task_batching not in ("loop", "vmap"):
            raise ValueError(f"task_batching={task_batching!r} is not valid; use loop or vmap")
        if checkpoint and first_order:
            raise ValueError(_CHECKPOINT_FIRST_ORDER)
        if task_batching == "vmap":
            check_vmap(model)
            if checkpoint:
                raise ValueError("checkpoint=True needs task_batching='loop' (vmap keeps every task's graph anyway)")
        if loss not in ("auto", "cross_entropy", "mse"):
            raise ValueError(f"loss={loss!r} is not valid; use auto, cross_entropy or mse")
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = inner_steps
        self.first_order = bool(first_order)
        self.eval_steps = inner_steps if eval_steps is None else eval_steps
        self.multi_step_loss = bool(multi_step_loss)
        self.checkpoint = bool(checkpoint)
        self.task_batching = task_batching
        self.loss = loss
        self.learn_inner_lr = learn_inner_lr
        self.adapt_names = select_parameters(model, adapt)
        self.channels_last = bool(channels_last)
        self._fmodel = FunctionalModel(model, channels_last=self.channels_last)
        # the inner loop of second-order training runs in NCHW: PyTorch's BatchNorm double
        # backward is ~3x slower on channels_last tensors (see the class docstring)
        self._fmodel_second_order = FunctionalModel(model, channels_last=False)
        self._lr_index = {n: i for i, n in enumerate(self.adapt_names)}
        params = dict(model.named_parameters())
        if learn_inner_lr == "per_layer_step":
            if inner_steps < 1:
                raise ValueError("learn_inner_lr='per_layer_step' needs inner_steps >= 1 (one rate per step)")
            self.inner_lrs = nn.ParameterList(
                [nn.Parameter(torch.full((inner_steps,), self.inner_lr, dtype=params[n].dtype)) for n in self.adapt_names]
            )
        elif learn_inner_lr == "per_element":
            self.inner_lrs = nn.ParameterList(
                [nn.Parameter(torch.full_like(params[n].detach(), self.inner_lr)) for n in self.adapt_names]
            )
        else:
            self.inner_lrs = None

    # -- building from a config ----------------------------------------------------------------
    @classmethod
    def model_defaults(cls, context: BuildContext) -> dict[str, Any]:
        """A linear head of ``ways`` outputs and BatchNorm without running statistics (classification)."""
        if context.ways is None:
            return {}
        return {"out_features": context.ways, "track_running_stats": False}

    # -- the inner loop --------------------------------------------------------------------------
    def _lr(self) -> LearningRate:
        if self.inner_lrs is None:
            return self.inner_lr
        lrs, index = self.inner_lrs, self._lr_index
        if self.learn_inner_lr == "per_layer_step":
            last = self.inner_steps - 1
            return lambda name, step: lrs[index[name]][min(step, last)]
        return lambda name, step: lrs[index[name]]

    def _loss(self, ways: int | None) -> Any:
        return _loss_fn(self.loss, ways)

    def _adapt(self, support_x: Tensor, support_y: Tensor, ways: int | None, *, train: bool, steps: int) -> list[Params]:
        second_order = train and not self.first_order
        return inner_loop(
            self._fmodel_second_order if second_order else self._fmodel,
            self._fmodel.params(),
            support_x,
            support_y,
            self._loss(ways),
            steps=steps,
            lr=self._lr(),
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
            lr=self._lr(),
            adapt=self.adapt_names,
            first_order=self.first_order,
        )
        return run(lambda traj, qx, qy: self._query_loss(traj, qx, qy, batch.ways))(batch.query_x, batch.query_y)  # type: ignore[return-value]

    def _metrics(self, losses: list[float], outs: list[Tensor], batch: EpisodeBatch) -> dict[str, float]:
        metrics = {"loss": sum(losses) / len(losses)}
        if batch.ways is not None:
            acc = [(o.argmax(-1) == y).float().mean().item() for o, y in zip(outs, batch.query_y)]
            metrics["accuracy"] = sum(acc) / len(acc)
        return metrics

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

    def adapt(
        self, support_x: Tensor, support_y: Tensor, ways: int | None = None, steps: int | None = None
    ) -> AdaptedLearner:
        """Adapt to one task (``eval_steps`` inner steps unless ``steps`` is given); works under
        ``torch.no_grad()``. The learner keeps every step (``learner.predict(x, step=k)``)."""
        k = self.eval_steps if steps is None else steps
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"steps={steps!r} must be an int >= 0")
        with torch.enable_grad():
            traj = self._adapt(support_x, support_y, ways, train=False, steps=k)
        return AdaptedLearner(self._fmodel, traj)

    def predict(self, batch: EpisodeBatch) -> Tensor:
        """Outputs ``[B, Q, ways]`` (or ``[B, Q, *y_shape]``) of each task's adapted model.

        Only the adapted model's queries are computed (not those of every step, as in
        :meth:`predict_steps`): with Reptile's 50 evaluation steps that is one query forward
        pass per task instead of 51."""
        return self._predict(batch, None, every_step=False)[0]

    def predict_steps(self, batch: EpisodeBatch, steps: int | None = None) -> Tensor:
        """Outputs on the queries after ``0..steps`` inner steps (default ``eval_steps``):
        ``[steps + 1, B, Q, ...]``. Tasks run one by one, or in one vectorised call with
        ``task_batching='vmap'``; either way without keeping a graph."""
        return self._predict(batch, steps, every_step=True)

    def _predict(self, batch: EpisodeBatch, steps: int | None, every_step: bool) -> Tensor:
        """``[steps + 1, B, Q, ...]`` outputs after every step, or ``[1, B, Q, ...]`` after the last."""
        self._check_batch(batch)
        k = self.eval_steps if steps is None else steps
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"steps={steps!r} must be an int >= 0")
        at = range(k + 1) if every_step else [k]  # the steps whose query outputs are returned
        if self.task_batching == "vmap":
            detached = {n: p.detach() for n, p in self._fmodel.params().items()}
            lr = self.inner_lr if self.inner_lrs is None else self._detached_lr()
            run = inner_loop_vmap(
                self._fmodel, detached, batch.support_x, batch.support_y, self._loss(batch.ways),
                steps=k, lr=lr, adapt=self.adapt_names, first_order=True,
            )
            out = run(lambda traj, qx, qy: torch.stack([self._fmodel(traj[j], qx) for j in at]))(batch.query_x, batch.query_y)
            return out.detach().transpose(0, 1)  # type: ignore[union-attr]
        per_task = []
        for ep in batch:
            learner = self.adapt(ep.support_x, ep.support_y, ep.ways, steps=k)
            with torch.no_grad():
                per_task.append(torch.stack([learner.predict(ep.query_x, step=j) for j in at]))
        return torch.stack(per_task, dim=1)

    def _detached_lr(self) -> LearningRate:
        lr = self._lr()
        assert callable(lr)
        return lambda name, step: lr(name, step).detach()

    def _check_batch(self, batch: EpisodeBatch) -> None:
        if not isinstance(batch, EpisodeBatch):
            raise TypeError(f"batch must be an EpisodeBatch, got {type(batch).__name__}")
        if self.loss == "cross_entropy" and batch.ways is None:
            raise ValueError("loss='cross_entropy' needs classification episodes (ways set); this batch is regression")
