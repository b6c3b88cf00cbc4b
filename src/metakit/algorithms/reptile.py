"""Reptile (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", 2018).

Reptile runs a few steps of SGD (or Adam) on each task from the shared initialisation ``phi``
and moves ``phi`` towards the weights it reached::

    W_i = k inner steps on task i, from phi               (the inner loop of metakit.algorithms._inner)
    phi <- phi + epsilon * 1/B * sum_i (W_i - phi)

The outer update is not the gradient of a loss, so :meth:`Reptile.meta_backward` writes the
*direction* ``phi - mean_i W_i`` into ``p.grad``: a plain ``torch.optim.SGD`` outer optimizer with
learning rate ``epsilon`` (the paper's meta step size) then applies exactly the update above,
and the generic trainer needs no special case. (With Adam as outer optimizer the same
direction is rescaled per weight, a common variant.) No second-order terms and no graph
through the inner loop are ever built.

The inner loop trains on the support set of each task, in minibatches of ``inner_batch``
examples (taken in a random order per pass, from the global torch RNG; ``None``: the whole
support set every step). The paper trains with more shots than it tests with (e.g. 10 per
class in 5-way Omniglot) -- set ``train.shots`` accordingly.

The inner optimizer is SGD by default (:class:`~.inner_updates.SGD`). The published code uses
Adam with beta1 = 0 and, as a side effect of how it saves and restores the model's variables,
never resets Adam's moment estimates and step count: one Adam state runs through every task of
training, task after task, and each evaluation task starts from the state training left (and
leaves it unchanged). ``inner_optimizer="adam"`` (:class:`~.inner_updates.Adam`) with
``inner_state="carry"`` computes that: the state is kept in the buffers of
``self.carried_state`` (so checkpoints store it and a resumed run continues it), advanced by
:meth:`meta_backward` only; ``inner_state="reset"`` starts every task from a fresh state. The
published inner loss is also the *sum* of the minibatch's per-example losses
(``inner_reduction="sum"``), not their mean: Adam's step does not depend on a constant scale of
the gradient, but with a state carried from training batches of one size into test batches of
another, the scale matters (a test batch of 5 after training batches of 10 takes steps half the
size it would with the mean).
Query sets are used only for the reported metrics. BatchNorm follows MAML's transductive policy
(Reptile's "transductive" setting).

Reptile is not a MAML: it shares the engine (:class:`~._inner.InnerLoopAlgorithm`: the inner
loop, the adapted learner, the choice of adapted parameters), not MAML's meta-training.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor, nn

from ..tasks.episode import EpisodeBatch
from ._inner import InnerLoopAlgorithm, LossName, Params, inner_loop
from .base import register
from .inner_updates import SGD, Adam, InnerUpdate, State

__all__ = ["Reptile"]


def _shuffled_minibatches(n: int, size: int, device: torch.device) -> Callable[[int], Tensor]:
    """``size`` indices of ``0..n-1`` per call, running through a fresh random permutation (global
    torch RNG) per pass over the ``n`` examples; a permutation is drawn only when needed."""
    order = torch.empty(0, dtype=torch.long, device=device)

    def take(step: int) -> Tensor:
        nonlocal order
        if order.numel() < size:
            order = torch.cat([order, torch.randperm(n, device=device)])
        idx, order = order[:size], order[size:]
        return idx

    return take


@register("reptile")
class Reptile(InnerLoopAlgorithm):
    """Reptile: move the initialisation towards the task-adapted weights (Nichol et al. 2018).

    Args:
        model: the network (e.g. Conv4(out_features=ways, track_running_stats=False)).
        inner_lr: learning rate of the inner optimizer (SGD's, or Adam's with inner_optimizer=adam).
        inner_steps: inner steps per task during meta-training.
        inner_batch: support examples per inner step (null: the whole support set).
        eval_steps: inner steps when adapting for evaluation (default: inner_steps).
        task_batching: loop (the only choice: tasks are independent SGD runs).
        channels_last: channels_last memory format for image inputs (faster in some settings, far
            less accurate float32 meta-gradients; see MAML's option and ``metakit bench precision``).
        loss: auto (cross_entropy for classification, mse for regression), cross_entropy or mse.
        inner_optimizer: sgd (``inner_lr`` the rate) or adam (``inner_lr`` Adam's rate).
        inner_betas: Adam's ``(b1, b2)`` (adam only; default ``(0, 0.999)``, the published code's).
        inner_eps: Adam's epsilon (adam only; default 1e-8).
        inner_state: adam only: reset (a fresh Adam state per task, the default) or carry (one
            state through all of training, as the published code; see the module docstring).
        inner_reduction: the inner loss over a minibatch: mean (default) or sum (the published
            code's; with SGD it multiplies the step by the minibatch size).
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        inner_batch: int | None = None,
        eval_steps: int | None = None,
        task_batching: Literal["loop"] = "loop",
        channels_last: bool = False,
        loss: LossName = "auto",
        inner_optimizer: Literal["sgd", "adam"] = "sgd",
        inner_betas: list[float] | None = None,
        inner_eps: float | None = None,
        inner_state: Literal["reset", "carry"] | None = None,
        inner_reduction: Literal["mean", "sum"] = "mean",
    ) -> None:
        if inner_reduction not in ("mean", "sum"):
            raise ValueError(f"inner_reduction={inner_reduction!r} is not valid; use mean or sum (the published code's)")
        if inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"inner_optimizer={inner_optimizer!r} is not valid; use sgd or adam")
        if inner_optimizer == "sgd":
            given = [n for n, v in (("inner_betas", inner_betas), ("inner_eps", inner_eps), ("inner_state", inner_state))
                     if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} apply to inner_optimizer=adam only; set inner_optimizer: adam, "
                                 f"or remove {', '.join(given)} (plain SGD has no such setting)")
        inner_state = inner_state or "reset"
        if inner_state not in ("reset", "carry"):
            raise ValueError(f"inner_state={inner_state!r} is not valid; use reset (a fresh Adam state per task) or "
                             "carry (one Adam state through all tasks, as Reptile's published code)")
        betas = (0.0, 0.999) if inner_betas is None else inner_betas
        eps = 1e-8 if inner_eps is None else inner_eps
        if task_batching != "loop":
            raise ValueError(f"task_batching={task_batching!r} is not supported by Reptile; use loop")
        if inner_batch is not None and (not isinstance(inner_batch, int) or isinstance(inner_batch, bool) or inner_batch < 1):
            raise ValueError(f"inner_batch={inner_batch!r} must be an int >= 1 (or None: the whole support set)")
        if not isinstance(inner_lr, (int, float)) or isinstance(inner_lr, bool) or not inner_lr >= 0:
            raise ValueError(f"inner_lr={inner_lr!r} must be a number >= 0")

        def rule(params: dict[str, Tensor]) -> InnerUpdate:
            if inner_optimizer == "adam":
                return Adam(float(inner_lr), betas=tuple(betas), eps=eps)  # type: ignore[arg-type]
            return SGD(float(inner_lr))

        super().__init__(
            model,
            inner_update=rule,
            inner_steps=inner_steps,
            eval_steps=eval_steps,
            adapt="all",
            task_batching=task_batching,
            channels_last=channels_last,
            loss=loss,
        )
        self.inner_lr = float(inner_lr)
        self.inner_batch = inner_batch
        self.inner_optimizer = inner_optimizer
        self.inner_state = inner_state
        self.inner_reduction = inner_reduction
        if inner_state == "carry":
            params = dict(model.named_parameters())
            initial = self.inner_update.init({n: params[n].detach() for n in self.adapt_names})
            self.carried_state = nn.Module()
            for key, t in initial.items():  # buffer names may not hold '.': parameter names do
                self.carried_state.register_buffer(key.replace(".", ":"), t.clone())

    def _carried(self) -> State | None:
        """The Adam state carried through training (``inner_state="carry"``), else ``None``."""
        if self.inner_state != "carry":
            return None
        return {k.replace(":", "."): t for k, t in self.carried_state.named_buffers()}

    def _adapt(self, support_x: Tensor, support_y: Tensor, ways: int | None, *, train: bool, steps: int) -> list[Params]:
        """``steps`` inner steps on minibatches of the support set, from the carried state if any;
        no graph is kept and the carried state is left as it was."""
        return self._adapt_from(support_x, support_y, ways, steps, self._carried())[0]

    def _adapt_from(
        self, support_x: Tensor, support_y: Tensor, ways: int | None, steps: int, state: State | None
    ) -> tuple[list[Params], State]:
        n = support_x.shape[0]
        whole = self.inner_batch is None or self.inner_batch >= n
        mean_loss = self._loss(ways)
        loss = mean_loss if self.inner_reduction == "mean" else (lambda out, y: mean_loss(out, y) * y.shape[0])
        return inner_loop(  # type: ignore[no-any-return]
            self._fmodel, self._fmodel.params(), support_x, support_y, loss, steps=steps,
            update=self.inner_update, adapt=self.adapt_names, first_order=True, create_graph=False,
            minibatch=None if whole else _shuffled_minibatches(n, self.inner_batch, support_x.device),  # type: ignore[arg-type]
            state=state, return_state=True,
        )

    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        """Mean query loss after adaptation, for monitoring only: Reptile's update is not its
        gradient (the returned tensor has no graph). Training goes through :meth:`meta_backward`."""
        with torch.no_grad():
            losses, _, metrics, _ = self._run(batch)
        return torch.tensor(sum(losses) / len(losses)), metrics

    def meta_backward(self, batch: EpisodeBatch) -> dict[str, float]:
        """Add ``phi - mean_i W_i`` to ``p.grad`` of every adapted parameter (zero for the others);
        with ``inner_state="carry"``, keep the Adam state the batch's tasks left."""
        _, direction, metrics, state = self._run(batch)
        if state is not None:
            with torch.no_grad():
                for key, buf in self.carried_state.named_buffers():
                    buf.copy_(state[key.replace(":", ".")])
        params = self._fmodel.params()
        for name, p in params.items():
            if not p.requires_grad:
                continue
            d = direction.get(name)
            d = torch.zeros_like(p) if d is None else d
            p.grad = d if p.grad is None else p.grad + d
        return metrics

    def _run(self, batch: EpisodeBatch) -> tuple[list[float], dict[str, Tensor], dict[str, float], State | None]:
        """Adapt to every task of the batch, in order (a carried Adam state passes from task to task).
        Returns the query losses, the direction, the metrics and the carried state after the batch."""
        self._check_batch(batch)
        b = batch.num_tasks
        phi = {n: p.detach() for n, p in self._fmodel.params().items()}
        direction = {n: torch.zeros_like(phi[n]) for n in self.adapt_names}
        losses, outs = [], []
        state = self._carried()
        for ep in batch:
            traj, after = self._adapt_from(ep.support_x, ep.support_y, ep.ways, self.inner_steps, state)
            state = after if state is not None else None
            for n in self.adapt_names:
                direction[n] += (phi[n] - traj[-1][n]) / b
            with torch.no_grad():
                out = self._fmodel(traj[-1], ep.query_x)
                losses.append(float(self._loss(ep.ways)(out, ep.query_y)))
            outs.append(out)
        return losses, direction, self._metrics(losses, outs, batch), state
