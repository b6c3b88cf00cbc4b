"""The one inner-loop engine of the MAML family (MAML, first-order MAML, Meta-SGD, ANIL) and Reptile.

The inner loop adapts a copy of the parameters to one task by gradient steps on the task's
support loss, as a pure function of a parameter dict::

    theta_0 = theta                                      (the model's own meta-parameters)
    g_k = d L_support(theta_k) / d theta_k[adapted]
    theta_{k+1}[adapted], s_{k+1} = rule.update(g_k, s_k, theta_k[adapted], k),   s_0 = rule.init(theta[adapted])
    theta_{k+1}[n] = theta_k[n]                          for the parameters not adapted

where ``rule`` is an inner update rule (:mod:`.inner_updates`: plain SGD, ``theta - lr * g`` as in
Finn et al. 2017, eq. 1; MAML++'s learned per-layer per-step rates; Meta-SGD's per-weight
rates; momentum) and ``s_k`` its state. The model is called with
:func:`torch.func.functional_call`; it is never cloned, patched or updated in place, and the
meta-parameters are only read. Second-order meta-gradients come from differentiating through
``torch.autograd.grad(..., create_graph=True)`` and the rule; first-order mode (FOMAML, Reptile)
takes the inner gradients without a graph, so ``d theta_K / d theta = I`` for SGD and the
meta-gradient is the query gradient at the adapted parameters -- never ``None`` and never the
second-order one. Learned hyper-parameters of the rule (rates, a momentum coefficient) get
their meta-gradient in both modes.

Options (each a plain argument, see :func:`inner_loop`):

* ``steps``: number of inner gradient steps (0 is allowed: adaptation is the identity).
* ``update``: the rule (an :class:`~.inner_updates.InnerUpdate`). An inner learning rate of 0
  makes adaptation the identity.
* ``first_order``: drop the second-order terms.
* ``adapt``: the names of the parameters the inner loop updates (all trainable ones for MAML,
  the head for ANIL, Raghu et al. 2020); see :func:`select_parameters`.
* ``minibatch``: the support examples each step trains on (Reptile's inner minibatches;
  default: all of them).
* ``checkpoint``: recompute every inner step during the backward pass instead of keeping its
  activations and double-backward graph, so that second-order MAML with many inner steps fits in
  memory: the forward pass keeps only the parameters and the rule's state after each step; the
  backward pass redoes one step at a time, with its graph, and takes the vector-Jacobian product
  through it (:class:`_RecomputedStep`). ``torch.utils.checkpoint`` (non-reentrant) gives the same
  gradients around an inner step but saved no memory at all here (its region contains the
  inner ``autograd.grad``, whose saved tensors it keeps): measured peak increase for one
  20-way 5-shot task with 10 second-order steps, 1655 MB with or without it. ``checkpoint`` is
  an error with ``first_order``: first-order steps keep no graph to recompute (each step's
  support activations are freed as soon as its gradient is taken), so it would change nothing.

Parameters that need no flags:

* frozen parameters (``requires_grad=False``) are constants: neither adapted nor meta-learned;
* parameters the loss does not use get a zero inner gradient (they stay put under SGD) and a
  zero meta-gradient (see :meth:`MAML.meta_backward <metakit.algorithms.maml.MAML.meta_backward>`);
* tied parameters (one tensor registered under several names) appear once, under the first
  name :meth:`~torch.nn.Module.named_parameters` gives, and every use of them is adapted
  together (``functional_call`` ties them).

What the algorithms share beyond the loop -- the model, the rule, the adapted parameters, the
few-shot half of the protocol (``adapt`` returning an :class:`AdaptedLearner`, ``predict``,
``predict_steps``) -- is :class:`InnerLoopAlgorithm`, the base of MAML and of Reptile; their
meta-training is each their own.

BatchNorm policy
----------------
BatchNorm in the inner loop normalises with the statistics of the batch at hand -- the support
set during adaptation, the query set at prediction time -- both in training and at test time.
This is MAML's transductive setting (the one its published Omniglot/miniImageNet numbers use).
Use BatchNorm built with ``track_running_stats=False`` (``Conv4(track_running_stats=False)``,
which :meth:`InnerLoopAlgorithm.model_defaults` asks for). A BatchNorm layer *with* running
statistics is an error (:func:`check_batchnorm`): in training mode every inner step would
overwrite its running averages in place with the statistics of one task's support or query set,
and in evaluation mode it would normalise with those leaked averages instead of the batch -- a
silently different algorithm. Layer/Group/Instance norms without running statistics are fine
with ``task_batching='loop'``; under ``'vmap'`` only GroupNorm is (see below).

Task batching (measured, not assumed)
-------------------------------------
Two ways to run the tasks of a meta-batch share this engine:

* ``"loop"`` (default): one task after another; :meth:`MAML.meta_backward` back-propagates each
  task's loss as soon as it is computed, so memory holds one task's graph at a time.
* ``"vmap"``: :func:`torch.func.vmap` over tasks with :func:`torch.func.grad` inside (one
  batched call per layer). For small models (the sinusoid MLP) it removes the per-task Python
  overhead. It is allowed only for models built from the layer types in :data:`VMAP_VERIFIED`,
  whose second-order meta-gradient under ``vmap`` the tests check against finite differences
  (:func:`check_vmap`); any other layer is refused rather than risked. On torch 2.13 the
  normalisation layers are wrong under ``vmap`` although the loop is exact (float64, tiny conv
  models, two inner steps, relative error against finite differences, loop below 1e-9):
  BatchNorm 5e-2 to 6e-2 (up to 0.13 measured on Conv4), InstanceNorm 7e-2
  to 8e-2, LayerNorm 4e-3 to 9e-3; GroupNorm is exact (below 1e-9). On the Conv4 every conv after the first step also
  becomes a grouped conv, slower than the loop on CPU. Only module types are checked: a custom
  ``forward`` that calls ``F.batch_norm`` or ``F.layer_norm`` itself is not seen.

Memory format (speed on CPU)
----------------------------
:class:`FunctionalModel` can run image inputs and conv weights in ``channels_last``, oneDNN's
native layout: on the Omniglot Conv4 (one task, 5 support + 75 query images, one thread) the
query forward takes 16 ms instead of 41 ms, mostly because max-pooling and BatchNorm over the
first block's 75x64x28x28 activations are several times faster in NHWC. One-channel tensors
(grayscale images, the first conv's weight) need :func:`to_channels_last`, since
``contiguous(memory_format=torch.channels_last)`` leaves them NCHW and the whole first block
then silently stays NCHW. :class:`~metakit.algorithms.maml.MAML` keeps the inner loop of
second-order training in NCHW, because PyTorch's BatchNorm double backward is about 3x slower
on channels_last tensors. The format is off by default: PyTorch's channels_last BatchNorm
kernels on CPU are far less accurate in float32 (their per-channel sums lose precision as the
batch grows), which makes float32 meta-gradients of the MAML-family Omniglot settings on the
max-pooling Conv4 up to 2e-1 off the float64 ones instead of at most 3e-4 in NCHW (``metakit bench
precision``, which gives the figures per setting).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..tasks.episode import EpisodeBatch
from .base import Algorithm, BuildContext, image_model_defaults
from .inner_updates import InnerUpdate, Params, State

__all__ = [
    "Params",
    "FunctionalModel",
    "to_channels_last",
    "check_batchnorm",
    "check_vmap",
    "VMAP_VERIFIED",
    "select_parameters",
    "inner_loop",
    "inner_loop_vmap",
    "zero_missing_grads",
    "loss_function",
    "AdaptedLearner",
    "InnerLoopAlgorithm",
]


#: layer types whose second-order meta-gradient under ``task_batching='vmap'`` is checked against
#: finite differences (tests/algorithms/test_inner.py); every other layer is refused under vmap
VMAP_VERIFIED: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d,
    nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU, nn.Softplus, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten,
    nn.GroupNorm,
)
# measured wrong under vmap (see the module docstring)
_VMAP_WRONG = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)


def check_vmap(module: nn.Module) -> None:
    """Refuse ``task_batching='vmap'`` for a model with a layer outside :data:`VMAP_VERIFIED`.

    A module of a verified type (exactly that type: a subclass may override ``forward``) is
    accepted; so is a container that owns no parameters or buffers itself (``nn.Sequential``,
    ``MLP``), whose children are checked in turn. Anything else -- a normalisation layer measured
    wrong under vmap, an unverified layer, a custom module with its own parameters -- is refused.

    Raises:
        ValueError: naming the first offending layer, its type and the fix (``task_batching='loop'``).
    """
    for name, m in module.named_modules():
        if type(m) in VMAP_VERIFIED:
            continue
        own = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        if not own and any(True for _ in m.children()):
            continue  # a container: its children are checked
        if isinstance(m, _VMAP_WRONG):
            why = ("torch.func.vmap gives a wrong second-order meta-gradient through it "
                   "(measured against finite differences in float64; the loop is exact)")
        else:
            why = ("its second-order meta-gradient under torch.func.vmap has not been verified against finite "
                   f"differences (verified: {', '.join(t.__name__ for t in VMAP_VERIFIED)})")
        raise ValueError(
            f"task_batching='vmap' is refused for models with {type(m).__name__} (layer {name or '<model>'!r}): "
            f"{why}; use task_batching='loop'"
        )


def check_batchnorm(module: nn.Module, algorithm: str = "MAML") -> None:
    """Refuse normalisation layers with running statistics inside an inner loop.

    Raises:
        ValueError: naming the first offending layer and how to fix it.
    """
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            raise ValueError(
                f"{algorithm}: layer {name!r} ({type(m).__name__}) tracks running statistics "
                "(track_running_stats=True). Inside an inner loop each step would overwrite them "
                "in place with one task's batch statistics, and eval() would normalise with those "
                "leaked averages. metakit's MAML family uses transductive batch statistics (MAML's "
                "setting): build the model with track_running_stats=False, e.g. "
                "Conv4(out_features=ways, track_running_stats=False)."
            )


def select_parameters(module: nn.Module, adapt: str | Sequence[str] | Callable[[str], bool] = "all") -> list[str]:
    """Names of the trainable parameters the inner loop adapts.

    Args:
        module: the model.
        adapt: ``"all"`` (every parameter with ``requires_grad``), ``"head"`` (the parameters of
            the last submodule that owns parameters directly, which must be an ``nn.Linear`` --
            ``Conv4.head`` or the last ``Linear`` of an ``MLP``; ANIL), a regular expression
            matched against parameter names with :func:`re.fullmatch` (e.g. ``"head\\..*"``), a
            sequence of exact names, or a predicate ``name -> bool``.

    Raises:
        ValueError: if nothing is selected, a listed name is not a trainable parameter, or
            ``adapt="head"`` finds no linear head (e.g. a Conv4 built without ``out_features``,
            whose last module with parameters is a BatchNorm).
    """
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    if callable(adapt):
        chosen = [n for n in trainable if adapt(n)]
        what = "the predicate"
    elif isinstance(adapt, str):
        if adapt == "all":
            chosen, what = trainable, "adapt='all'"
        elif adapt == "head":
            owners = [mn for mn, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))]
            if not owners:
                raise ValueError("adapt='head': the model has no parameters")
            head = module.get_submodule(owners[-1])
            if not isinstance(head, nn.Linear):
                raise ValueError(
                    f"adapt='head': the last module with parameters is {owners[-1]!r} ({type(head).__name__}), "
                    "not an nn.Linear head; give the model a linear head, e.g. Conv4(out_features=ways), "
                    "or pass a regular expression or a list of parameter names as adapt"
                )
            prefix = f"{owners[-1]}." if owners[-1] else ""
            chosen = [n for n in trainable if n.startswith(prefix) and "." not in n[len(prefix):]]
            what = f"adapt='head' (module {owners[-1]!r})"
        else:
            try:
                pattern = re.compile(adapt)
            except re.error as e:
                raise ValueError(
                    f"adapt={adapt!r} is not 'all', 'head' or a valid regular expression: {e}"
                ) from None
            chosen = [n for n in trainable if pattern.fullmatch(n)]
            what = f"adapt={adapt!r}"
    else:
        names = list(adapt)
        unknown = [n for n in names if n not in trainable]
        if unknown:
            raise ValueError(
                f"adapt lists {unknown} which are not trainable parameters of the model; "
                f"choose among {trainable}"
            )
        chosen, what = [n for n in trainable if n in names], f"adapt={names}"
    if not chosen:
        raise ValueError(f"{what} selects no trainable parameter; the model has {trainable}")
    return chosen


class FunctionalModel:
    """Call a module with an explicit parameter dict (its buffers are passed unchanged).

    Args:
        module: the model; only read.
        channels_last: run 4-D inputs and 4-D weights in ``torch.channels_last`` memory format
            (oneDNN's native layout on CPU; the conversion of the weights is differentiable).
    """

    def __init__(self, module: nn.Module, channels_last: bool = False) -> None:
        self.module = module
        self.channels_last = channels_last

    def params(self) -> Params:
        """The module's parameters by name (tied parameters once), frozen ones included."""
        return dict(self.module.named_parameters())

    def __call__(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = to_channels_last(x)
            params = {n: (to_channels_last(p) if p.dim() == 4 else p) for n, p in params.items()}
        state = dict(params)
        for n, b in self.module.named_buffers():
            state.setdefault(n, b)
        return functional_call(self.module, state, (x,))


def to_channels_last(t: Tensor) -> Tensor:
    """``t`` (4-D) with NHWC strides, also when it has one channel (differentiable).

    ``Tensor.contiguous(memory_format=torch.channels_last)`` leaves a one-channel tensor (a
    grayscale image batch, a first-layer conv weight) with its NCHW strides, since both layouts
    coincide in memory; convolutions then produce NCHW outputs and the whole first block (the
    largest activations of the network) runs in the slower NCHW kernels. Relabelling the strides
    of such a tensor is a free view.
    """
    n, c, h, w = t.shape
    if c == 1:
        t = t.contiguous()
        return t.as_strided(t.shape, (h * w, 1, w, 1))
    return t.contiguous(memory_format=torch.channels_last)


def _detached(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {n: v.detach() for n, v in tensors.items()}


def _check_update(update: object) -> None:
    if not isinstance(update, InnerUpdate):
        raise TypeError(
            f"update must be an InnerUpdate (metakit.algorithms.inner_updates, e.g. SGD(lr)), got {type(update).__name__}"
        )


def _step(
    fmodel: FunctionalModel,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    names: Sequence[str],
    update: InnerUpdate,
    state: State,
    step: int,
    create_graph: bool,
    x: Tensor,
    y: Tensor,
    params: Params,
) -> tuple[Params, State]:
    """One inner step on ``names`` (the shared rule of every loop path)."""
    loss = loss_fn(fmodel(params, x), y)
    grads = torch.autograd.grad(
        loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True, materialize_grads=True
    )
    adapted, state = update.update(dict(zip(names, grads)), state, {n: params[n] for n in names}, step)
    new = dict(params)
    new.update(adapted)
    return new, state


def inner_loop(
    fmodel: FunctionalModel,
    params: Params,
    support_x: Tensor,
    support_y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    steps: int,
    update: InnerUpdate,
    adapt: Sequence[str],
    first_order: bool = False,
    create_graph: bool = True,
    checkpoint: bool = False,
    minibatch: Callable[[int], Tensor] | None = None,
    state: State | None = None,
    return_state: bool = False,
) -> Any:
    """Adapt ``params`` to one task; return the trajectory ``[theta_0, ..., theta_steps]``.

    Args:
        fmodel: the model called functionally.
        params: every parameter the model needs by name (meta-parameters, frozen ones too).
            Adapted entries must require grad (the meta-parameters do; for evaluation pass
            detached copies with ``requires_grad_()``).
        support_x, support_y: the task's support set (one task, no task dimension).
        loss_fn: ``loss_fn(output, target) -> scalar``.
        steps: number of gradient steps (>= 0).
        update: the inner update rule (:mod:`.inner_updates`); its state starts from
            ``update.init`` of the adapted parameters.
        adapt: names of the parameters to update (:func:`select_parameters`).
        first_order: do not differentiate through the inner gradients.
        create_graph: keep the graph from ``params`` (and the rule's learned hyper-parameters) to
            the adapted parameters (``False`` at evaluation: every entry of the trajectory,
            ``theta_0`` included, is then detached and no graph is kept at all).
        checkpoint: recompute each step in the backward pass instead of storing it (it changes
            memory, not results; an error with ``first_order``, where it would change nothing).
        minibatch: ``minibatch(k)`` gives the indices of the support examples step ``k`` trains
            on (called once per step, in order); ``None``: the whole support set every step.
        state: the rule's state to start from (``None``: ``update.init`` of the adapted
            parameters), e.g. the final state of an earlier inner loop, to continue its run.
        return_state: also return the rule's state after the last step.

    Returns:
        ``steps + 1`` parameter dicts; ``[-1]`` is the adapted model. With ``return_state``, the
        pair ``(trajectory, state)``.
    """
    if steps < 0:
        raise ValueError(f"steps={steps} must be >= 0")
    if checkpoint and first_order:
        raise ValueError(_CHECKPOINT_FIRST_ORDER)
    _check_update(update)
    adapt = list(adapt)
    second_order = create_graph and not first_order
    start = params if create_graph else _detached(params)
    traj = [start]
    with torch.enable_grad():
        if state is None:
            state = update.init({n: start[n] for n in adapt})
        for k in range(steps):
            x, y = (support_x, support_y) if minibatch is None else _take(support_x, support_y, minibatch(k))
            cur = traj[-1]
            if not create_graph:
                cur = {n: (v.detach().requires_grad_(True) if n in adapt else v) for n, v in cur.items()}
                state = _detached(state)
            if second_order and checkpoint:
                nxt, state = _recomputed_step(fmodel, loss_fn, adapt, update, state, k, x, y, cur)
            else:
                nxt, state = _step(fmodel, loss_fn, adapt, update, state, k, second_order, x, y, cur)
            if not create_graph:
                nxt = _detached(nxt)
            traj.append(nxt)
    if return_state:
        return traj, (_detached(state) if not create_graph else state)
    return traj


def _take(x: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    return x[idx], y[idx]


_CHECKPOINT_FIRST_ORDER = (
    "checkpoint=True has no effect with first_order=True: first-order inner steps keep no graph to "
    "recompute (each step's support activations are freed once its gradient is taken); set checkpoint=False"
)


def _recomputed_step(
    fmodel: FunctionalModel,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    adapt: Sequence[str],
    update: InnerUpdate,
    state: State,
    step: int,
    x: Tensor,
    y: Tensor,
    params: Params,
) -> tuple[Params, State]:
    """One second-order inner step whose graph is rebuilt in the backward pass (see ``checkpoint``).

    Its inputs are the parameters and the rule's state (learned rates included, so they get
    their gradient); its outputs the adapted parameters and the next state."""
    names, keys = list(params), list(state)
    out_keys: list[str] | None = None  # the state entries the rule returns, fixed by the first run

    def step_fn(tensors: Sequence[Tensor], create_graph: bool) -> tuple[Tensor, ...]:
        nonlocal out_keys
        p = dict(zip(names, tensors[: len(names)]))
        s = dict(zip(keys, tensors[len(names) :]))
        new, new_state = _step(fmodel, loss_fn, adapt, update, s, step, create_graph, x, y, p)
        if out_keys is None:
            out_keys = list(new_state)
        return tuple(new[n] for n in adapt) + tuple(new_state[k] for k in out_keys)

    outs = _RecomputedStep.apply(step_fn, len(names), *(params[n] for n in names), *(state[k] for k in keys))
    assert out_keys is not None
    new = dict(params)
    new.update(zip(adapt, outs[: len(adapt)]))
    return new, dict(zip(out_keys, outs[len(adapt) :]))


class _RecomputedStep(torch.autograd.Function):
    """``outputs = step_fn(inputs)`` keeping only ``inputs``; the backward pass recomputes the
    step with its graph (``create_graph=True``) and returns the vector-Jacobian product."""

    @staticmethod
    def forward(ctx, step_fn, n_params: int, *inputs: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        ctx.step_fn = step_fn
        ctx.save_for_backward(*inputs)
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_((i < n_params or t.requires_grad) and t.is_floating_point())
                      for i, t in enumerate(inputs)]
            outs = step_fn(leaves, False)
        return tuple(o.detach() for o in outs)

    @staticmethod
    def backward(ctx, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        inputs = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        with torch.enable_grad():
            # integer state entries (a step count) take no gradient
            leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
            outs = ctx.step_fn(leaves, True)
            pairs = [(o, g) for o, g in zip(outs, grad_outputs) if o.requires_grad]
            wanted = [leaf for leaf, need in zip(leaves, needs) if need]
            grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True,
                                             materialize_grads=True))
        return (None, None, *(next(grads) if need else None for need in needs))


def inner_loop_vmap(
    fmodel: FunctionalModel,
    params: Params,
    support_x: Tensor,
    support_y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    steps: int,
    update: InnerUpdate,
    adapt: Sequence[str],
    first_order: bool = False,
    create_graph: bool = True,
    check_layers: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Vectorised inner loop: the same update rule as :func:`inner_loop`, under :func:`torch.func.vmap`.

    Returns a function ``run(query_fn)`` -- ``query_fn(trajectory, query_x, query_y)`` maps one
    task's trajectory (list of parameter dicts) and query set to tensors -- which, called with
    ``run(query_fn)(query_x, query_y)`` (``[B, ...]``), evaluates every task at once and returns
    the stacked results. ``params`` are shared by all tasks (``in_dims=None``) and stay connected
    to the caller's autograd graph, so ``.backward()`` on the result gives the meta-gradient;
    with ``create_graph=False`` the parameters and the rule's state are detached and the inner
    gradients taken first-order (evaluation). Only for models made of verified layers
    (:func:`check_vmap`; see the module docstring); ``check_layers=False`` skips that check (the
    tests use it to watch the known failures).
    """
    if check_layers:
        check_vmap(fmodel.module)
    if steps < 0:
        raise ValueError(f"steps={steps} must be >= 0")
    _check_update(update)
    adapt = list(adapt)
    if not create_graph:
        params, first_order = _detached(params), True

    def one_task(query_fn: Callable[..., Any], sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Any:
        traj = [dict(params)]
        state = update.init({n: params[n] for n in adapt})
        if not create_graph:
            state = _detached(state)
        for k in range(steps):
            cur = traj[-1]
            rest = {n: v for n, v in cur.items() if n not in adapt}

            def support_loss(ad: Params) -> Tensor:
                return loss_fn(fmodel({**rest, **ad}, sx), sy)

            ad = {n: cur[n] for n in adapt}
            grads = torch.func.grad(support_loss)(_detached(ad) if first_order else ad)
            if first_order:
                grads = _detached(grads)
            new, state = update.update(grads, state, ad, k)
            traj.append({**cur, **new})
        return query_fn(traj, qx, qy)

    def run(query_fn: Callable[..., Any]) -> Callable[..., Any]:
        def batched(qx: Tensor, qy: Tensor) -> Any:
            with torch.enable_grad():
                return torch.func.vmap(lambda a, b, c, d: one_task(query_fn, a, b, c, d))(support_x, support_y, qx, qy)

        return batched

    return run


def zero_missing_grads(params: Iterable[nn.Parameter]) -> None:
    """Give every trainable parameter without a gradient a zero one (unused by the loss)."""
    for p in params:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


# -- what the algorithms share beyond the loop ---------------------------------------------------
LossName = Literal["auto", "cross_entropy", "mse"]


def loss_function(name: str, ways: int | None) -> Callable[[Tensor, Tensor], Tensor]:
    """The inner and query loss: ``auto`` is cross-entropy for classification (``ways`` set), MSE otherwise."""
    if name == "auto":
        name = "mse" if ways is None else "cross_entropy"
    return F.mse_loss if name == "mse" else F.cross_entropy


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


def _check_steps(what: str, value: object, none_means: str | None = None) -> None:
    if none_means is not None and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        tail = f" (or None: {none_means})" if none_means else ""
        raise ValueError(f"{what}={value!r} must be an int >= 0{tail}")


class InnerLoopAlgorithm(Algorithm):
    """Base of the algorithms whose few-shot use is an inner loop (MAML and its family, Reptile).

    It holds the model, the inner update rule (``self.inner_update``, registered after the model
    so that ``parameters()`` lists the model's first) and the names of the adapted parameters
    (``self.adapt_names``), and implements the few-shot half of the protocol once: :meth:`adapt`
    runs ``eval_steps`` inner steps without a graph and returns an :class:`AdaptedLearner`;
    :meth:`predict` and :meth:`predict_steps` do it for every task of a batch (one by one, or
    under ``vmap``). Meta-training -- :meth:`meta_loss`, :meth:`meta_backward` -- and the inner
    loop of training (:meth:`_adapt`) are each subclass's own.

    Args:
        model: the network (BatchNorm without running statistics, see the module docstring).
        inner_update: builds the rule from the adapted parameters (name -> parameter).
        inner_steps: inner steps during meta-training.
        eval_steps: inner steps for evaluation and prediction (``None``: ``inner_steps``).
        adapt: which parameters the inner loop updates (:func:`select_parameters`).
        task_batching: ``loop`` or ``vmap`` (for models of :data:`VMAP_VERIFIED` layers).
        channels_last: run 4-D inputs and conv weights in ``channels_last`` memory format.
        loss: ``auto``, ``cross_entropy`` or ``mse``.
    """

    task_kinds = ("classification", "regression")
    inner_update: InnerUpdate

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_update: Callable[[Params], InnerUpdate],
        inner_steps: int,
        eval_steps: int | None,
        adapt: str | Sequence[str],
        task_batching: str,
        channels_last: bool,
        loss: str,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_batchnorm(model, type(self).__name__)
        _check_steps("inner_steps", inner_steps)
        _check_steps("eval_steps", eval_steps, none_means="the same as inner_steps")
        if task_batching not in ("loop", "vmap"):
            raise ValueError(f"task_batching={task_batching!r} is not valid; use loop or vmap")
        if task_batching == "vmap":
            check_vmap(model)
        if loss not in ("auto", "cross_entropy", "mse"):
            raise ValueError(f"loss={loss!r} is not valid; use auto, cross_entropy or mse")
        self.model = model
        self.inner_steps = inner_steps
        self.eval_steps = inner_steps if eval_steps is None else eval_steps
        self.task_batching = task_batching
        self.loss = loss
        self.channels_last = bool(channels_last)
        self.adapt_names = select_parameters(model, adapt)
        self._fmodel = FunctionalModel(model, channels_last=self.channels_last)
        params = dict(model.named_parameters())
        rule = inner_update({n: params[n] for n in self.adapt_names})
        _check_update(rule)
        self.inner_update = rule

    @classmethod
    def model_defaults(cls, context: BuildContext) -> dict[str, Any]:
        """The data's image shape, a linear head of ``ways`` outputs and BatchNorm without running
        statistics (classification)."""
        if context.ways is None:
            return {}
        return {**image_model_defaults(context), "out_features": context.ways, "track_running_stats": False}

    def _loss(self, ways: int | None) -> Callable[[Tensor, Tensor], Tensor]:
        return loss_function(self.loss, ways)

    def _adapt(self, support_x: Tensor, support_y: Tensor, ways: int | None, *, train: bool, steps: int) -> list[Params]:
        """The trajectory of ``steps`` inner steps on one task (``train``: with the graph meta-training needs)."""
        raise NotImplementedError

    def adapt(
        self, support_x: Tensor, support_y: Tensor, ways: int | None = None, steps: int | None = None
    ) -> AdaptedLearner:
        """Adapt to one task (``eval_steps`` inner steps unless ``steps`` is given); works under
        ``torch.no_grad()``. The learner keeps every step (``learner.predict(x, step=k)``)."""
        k = self.eval_steps if steps is None else steps
        _check_steps("steps", k)
        self._check_ways(support_y, ways)
        with torch.enable_grad():
            traj = self._adapt(support_x, support_y, ways, train=False, steps=k)
        return AdaptedLearner(self._fmodel, traj)

    def _check_ways(self, support_y: Tensor, ways: int | None) -> None:
        """A classifier's head has as many outputs as the ways it was built for: refuse a support
        set with more classes (its labels would index past the outputs) or fewer (the scores would
        cover classes the task does not have)."""
        outputs = getattr(getattr(self.model, "head", None), "out_features", None)
        if outputs is None:
            return
        if ways is None:  # only labels: more classes than outputs is certain, fewer is not
            if support_y.dtype.is_floating_point or support_y.numel() == 0:
                return
            ways = int(support_y.max()) + 1
            if ways <= outputs:
                return
        if ways != outputs:
            raise ValueError(
                f"{type(self).__name__} was built for {outputs}-way tasks (its head has {outputs} outputs) but the "
                f"support set has {ways} classes; adapt it to {outputs}-way tasks, or train a {ways}-way model"
            )

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
        _check_steps("steps", k)
        at = range(k + 1) if every_step else [k]  # the steps whose query outputs are returned
        if self.task_batching == "vmap":
            run = inner_loop_vmap(
                self._fmodel, self._fmodel.params(), batch.support_x, batch.support_y, self._loss(batch.ways),
                steps=k, update=self.inner_update, adapt=self.adapt_names, create_graph=False,
            )
            out = run(lambda traj, qx, qy: torch.stack([self._fmodel(traj[j], qx) for j in at]))(batch.query_x, batch.query_y)
            return out.detach().transpose(0, 1)
        per_task = []
        for ep in batch:
            learner = self.adapt(ep.support_x, ep.support_y, ep.ways, steps=k)
            with torch.no_grad():
                per_task.append(torch.stack([learner.predict(ep.query_x, step=j) for j in at]))
        return torch.stack(per_task, dim=1)

    def _metrics(self, losses: list[float], outs: list[Tensor], batch: EpisodeBatch) -> dict[str, float]:
        metrics = {"loss": sum(losses) / len(losses)}
        if batch.ways is not None:
            acc = [(o.argmax(-1) == y).float().mean().item() for o, y in zip(outs, batch.query_y)]
            metrics["accuracy"] = sum(acc) / len(acc)
        return metrics

    def _check_batch(self, batch: EpisodeBatch) -> None:
        if not isinstance(batch, EpisodeBatch):
            raise TypeError(f"batch must be an EpisodeBatch, got {type(batch).__name__}")
        if self.loss == "cross_entropy" and batch.ways is None:
            raise ValueError("loss='cross_entropy' needs classification episodes (ways set); this batch is regression")
