"""Inner-loop update rules: small stateful transformations of parameter dicts (optax style).

An inner update turns the gradient of a task's support loss into the next parameters of the
inner loop. Every rule is an :class:`InnerUpdate` with two pure methods::

    state = rule.init(params)                                   # once, before the first step
    params, state = rule.update(grads, state, params, step)     # every step, step = 0, 1, ...

``params`` and ``grads`` are dicts over the names of the adapted parameters; ``state`` is a flat
dict of named tensors: the velocity of momentum, and every *learned* hyper-parameter. As with
optax's ``inject_hyperparams``, a learned rate travels in the state (``init`` puts the
:class:`~torch.nn.Parameter` there, ``update`` reads it from there), so ``update`` depends on its
arguments and its fixed settings only. Nothing is modified in place. Hence:

* the second-order meta-gradient flows through every rule to the meta-parameters *and* to the
  learned hyper-parameters (the tests check each rule against finite differences in float64);
* the engine (:mod:`._inner`) can rebuild a step in the backward pass (``checkpoint=True``) from
  the step's input parameters and state alone, and run the rule under ``torch.func.vmap``;
* a rule with learned hyper-parameters is an :class:`~torch.nn.Module` owning them as
  ``nn.Parameter``: the algorithm that holds the rule registers it, so the outer optimizer trains
  them and the checkpoints store them.

The rules, with ``g_k`` the gradient of the support loss at ``theta_k`` (``k`` counts from 0),
written per parameter tensor ``n``:

* :class:`SGD` -- ``theta_{k+1} = theta_k - lr * g_k`` with a fixed ``lr`` (Finn et al. 2017,
  "Model-Agnostic Meta-Learning", eq. 1; Reptile's inner loop).
* :class:`LayerStepSGD` -- ``theta_{k+1}[n] = theta_k[n] - alpha[n][min(k, K-1)] * g_k[n]``: one
  learned scalar rate per parameter tensor and per step (``K`` of them; steps after the last
  trained one reuse its rate). MAML++'s LSLR (Antoniou, Edwards & Storkey 2019, "How to train
  your MAML", section 4).
* :class:`ElementSGD` -- ``theta_{k+1} = theta_k - alpha * g_k`` element-wise, ``alpha`` of the
  shape of ``theta``: one learned rate per weight, its sign included (Li, Zhou, Chen & Li 2017,
  "Meta-SGD").
* :class:`Momentum` -- ``v_{k+1} = mu * v_k + g_k`` with ``v_0 = 0``, then the step of a base
  rule (any of the above) applied to ``v_{k+1}`` in place of ``g_k`` (heavy ball, Polyak 1964)
  or to ``g_k + mu * v_{k+1}`` (Nesterov, in the form of Sutskever et al. 2013 that
  ``torch.optim.SGD(nesterov=True)`` uses); ``mu`` fixed or learned.

* :class:`Adam` -- ``m_{t} = b1 * m_{t-1} + (1 - b1) * g``, ``v_{t} = b2 * v_{t-1} + (1 - b2) * g^2``,
  ``theta <- theta - lr * m_t / (1 - b1^t) / (sqrt(v_t / (1 - b2^t)) + eps)`` (Kingma & Ba 2015, as
  ``torch.optim.Adam`` computes it); the step count ``t`` is part of the state, so a state handed
  from one task's inner loop to the next continues the same Adam run (Reptile's published inner
  loop does that).

A learned optimizer is one more instance: its network's weights are its parameters, its
per-step memory its state.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor, nn

__all__ = ["Params", "State", "InnerUpdate", "SGD", "LayerStepSGD", "ElementSGD", "Momentum", "Adam"]

Params = dict[str, Tensor]
#: named tensors carried from one inner step to the next (learned hyper-parameters included)
State = dict[str, Tensor]


class InnerUpdate(nn.Module):
    """The interface of an inner-loop update rule (see the module docstring).

    Subclasses implement :meth:`init` and :meth:`update`; both must be pure (no in-place change of
    their arguments or of the rule) and differentiable in ``grads``, ``params`` and the state.
    """

    def init(self, params: Mapping[str, Tensor]) -> State:
        """The state before the first step, for the adapted parameters ``params``."""
        raise NotImplementedError

    def update(self, grads: Mapping[str, Tensor], state: State, params: Mapping[str, Tensor], step: int) -> tuple[Params, State]:
        """The parameters after inner step ``step`` (0-based) and the state for the next one."""
        raise NotImplementedError

    def forward(self, *args: object) -> None:
        raise TypeError(f"{type(self).__name__} is an inner update rule: call its init() and update(), not the module")


def _finite_number(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what}={value!r} must be a finite number")
    return float(value)


class SGD(InnerUpdate):
    """Plain gradient descent with a fixed rate: ``theta_{k+1} = theta_k - lr * g_k`` (MAML's inner step).

    Args:
        lr: the learning rate (a number; it is not learned).
    """

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = _finite_number("lr", lr)

    def extra_repr(self) -> str:
        return f"lr={self.lr}"

    def init(self, params: Mapping[str, Tensor]) -> State:
        return {}

    def update(self, grads: Mapping[str, Tensor], state: State, params: Mapping[str, Tensor], step: int) -> tuple[Params, State]:
        lr = self.lr
        return {n: params[n] - lr * g for n, g in grads.items()}, state


class _LearnedRates(InnerUpdate):
    """Gradient descent with learned rates ``lrs[i]`` for the ``i``-th of ``names``, carried in the
    state under ``lr/<name>``."""

    lrs: nn.ParameterList

    def __init__(self, names: list[str], rates: list[Tensor]) -> None:
        super().__init__()
        if not names:
            raise ValueError(f"{type(self).__name__} needs at least one parameter to adapt; got none")
        self.names = tuple(names)
        self.lrs = nn.ParameterList([nn.Parameter(r) for r in rates])
        self._keys = tuple(f"lr/{n}" for n in names)

    def init(self, params: Mapping[str, Tensor]) -> State:
        if set(params) != set(self.names):
            raise ValueError(
                f"{type(self).__name__} was built for the parameters {list(self.names)} but init() got "
                f"{list(params)}; build it from the parameters the inner loop adapts"
            )
        return dict(zip(self._keys, self.lrs))

    def _rate(self, rate: Tensor, step: int) -> Tensor:
        return rate

    def update(self, grads: Mapping[str, Tensor], state: State, params: Mapping[str, Tensor], step: int) -> tuple[Params, State]:
        return {n: params[n] - self._rate(state[k], step) * grads[n] for n, k in zip(self.names, self._keys)}, state


class LayerStepSGD(_LearnedRates):
    """Learned rates, one scalar per parameter tensor and per inner step (MAML++'s LSLR,
    Antoniou et al. 2019): ``theta_{k+1}[n] = theta_k[n] - alpha[n][min(k, K-1)] * g_k[n]``.

    Args:
        params: the adapted parameters by name (their dtypes are the rates' dtypes).
        steps: ``K``, the number of steps with their own rate (the inner steps of meta-training);
            later steps (evaluation with more steps) reuse the last rate.
        lr: the initial value of every rate.

    Attributes:
        lrs: ``lrs[i]`` holds the ``K`` rates of the ``i``-th parameter, in the order of ``params``.
    """

    def __init__(self, params: Mapping[str, Tensor], steps: int, lr: float) -> None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps={steps!r} must be an int >= 1 (one learned rate per step)")
        lr = _finite_number("lr", lr)
        super().__init__(list(params), [torch.full((steps,), lr, dtype=p.dtype, device=p.device) for p in params.values()])
        self.steps = steps

    def _rate(self, rate: Tensor, step: int) -> Tensor:
        return rate[min(step, self.steps - 1)]


class ElementSGD(_LearnedRates):
    """Learned rates, one per weight (Meta-SGD, Li et al. 2017): ``theta_{k+1} = theta_k - alpha * g_k``
    element-wise, the same ``alpha`` at every step.

    Args:
        params: the adapted parameters by name (each rate tensor takes its shape and dtype).
        lr: the initial value of every rate.

    Attributes:
        lrs: ``lrs[i]`` is the rate tensor of the ``i``-th parameter, in the order of ``params``.
    """

    def __init__(self, params: Mapping[str, Tensor], lr: float) -> None:
        lr = _finite_number("lr", lr)
        super().__init__(list(params), [torch.full_like(p.detach(), lr) for p in params.values()])


class Momentum(InnerUpdate):
    """Momentum on top of a base rule: ``v_{k+1} = mu * v_k + g_k`` (``v_0 = 0``), then the base
    rule's step with ``v_{k+1}`` (heavy ball, Polyak 1964) or ``g_k + mu * v_{k+1}`` (Nesterov, as
    ``torch.optim.SGD(nesterov=True)``, Sutskever et al. 2013) in place of the gradient.

    With ``SGD(lr)`` as base this is ``torch.optim.SGD(lr=lr, momentum=mu, nesterov=...)``
    (dampening 0, no weight decay), written without in-place updates.

    Args:
        base: the rule that turns the momentum direction into a step (its rates, learned or not).
        momentum: ``mu``, the coefficient (its initial value when learned).
        nesterov: Nesterov's form instead of the heavy ball.
        learn: make ``mu`` a learned scalar (``self.momentum``, an ``nn.Parameter``).
        dtype: dtype of the learned ``mu`` (that of the parameters).

    The state holds ``velocity/<name>`` per parameter, the learned ``mu`` under ``momentum`` and
    the base rule's entries.
    """

    def __init__(
        self, base: InnerUpdate, momentum: float, nesterov: bool = False, learn: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, InnerUpdate):
            raise TypeError(f"base must be an InnerUpdate (e.g. SGD(lr)), got {type(base).__name__}")
        mu = _finite_number("momentum", momentum)
        self.base = base
        self.nesterov = bool(nesterov)
        self.learn = bool(learn)
        if self.learn:
            self.momentum: nn.Parameter | float = nn.Parameter(torch.tensor(mu, dtype=dtype))
        else:
            self.momentum = mu

    def extra_repr(self) -> str:
        mu = "learned" if self.learn else self.momentum
        return f"momentum={mu}, nesterov={self.nesterov}"

    def init(self, params: Mapping[str, Tensor]) -> State:
        state = self.base.init(params)
        mine = {f"velocity/{n}": torch.zeros_like(p) for n, p in params.items()}
        if self.learn:
            mine["momentum"] = self.momentum  # type: ignore[assignment]
        clash = sorted(set(state) & set(mine))
        if clash:
            raise ValueError(f"Momentum: the base rule's state already has the entries {clash}; momentum cannot be stacked on it")
        state.update(mine)
        return state

    def update(self, grads: Mapping[str, Tensor], state: State, params: Mapping[str, Tensor], step: int) -> tuple[Params, State]:
        mu = state["momentum"] if self.learn else self.momentum
        velocity = {n: mu * state[f"velocity/{n}"] + g for n, g in grads.items()}
        direction = {n: g + mu * velocity[n] for n, g in grads.items()} if self.nesterov else velocity
        new_params, base_state = self.base.update(direction, state, params, step)
        new_state = dict(base_state)
        new_state.update((f"velocity/{n}", v) for n, v in velocity.items())
        return new_params, new_state


def _sqrt0(v: Tensor) -> Tensor:
    """``sqrt(v)`` for ``v >= 0`` with the derivative 0 at ``v = 0`` (not ``inf``)."""
    positive = v > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, v, torch.ones_like(v))), torch.zeros_like(v))


class Adam(InnerUpdate):
    """Adam (Kingma & Ba 2015) as an inner-loop rule, step for step what ``torch.optim.Adam`` does
    (no weight decay, no AMSGrad): with ``t`` counting the steps taken so far, including this one,

        m = b1 * m + (1 - b1) * g,   v = b2 * v + (1 - b2) * g * g
        theta = theta - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    Args:
        lr: the learning rate.
        betas: ``(b1, b2)``, each in [0, 1). Reptile's published inner loop uses ``(0, 0.999)``.
        eps: added to the denominator.

    The state holds ``adam/step`` (``t``, a 0-dimensional int64 tensor) and ``adam/m/<name>``,
    ``adam/v/<name>`` per parameter. :meth:`update` reads ``t`` from the state, not from its
    ``step`` argument, so a state carried over from an earlier inner loop continues that run's
    moment estimates and bias correction. Second-order meta-gradients flow through the rule;
    where a gradient entry has been exactly zero at every step so far (``v = 0``, a dead ReLU's
    weights), ``sqrt(v)`` is given the derivative 0 (autograd's would be ``inf * 0 = nan``), so the
    update's derivative there is that of its numerator, ``lr (1 - b1) / ((1 - b1^t) eps)``.
    """

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__()
        self.lr = _finite_number("lr", lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas={betas!r} must be a pair (b1, b2), each in [0, 1), e.g. (0.9, 0.999)")
        b1, b2 = (_finite_number(f"betas[{i}]", b) for i, b in enumerate(betas))
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas={tuple(betas)!r} must each be in [0, 1)")
        self.betas = (b1, b2)
        self.eps = _finite_number("eps", eps)
        if not self.eps > 0:
            raise ValueError(f"eps={eps!r} must be > 0 (with 0, a weight whose gradient has been 0 so far gets 0/0)")

    def extra_repr(self) -> str:
        return f"lr={self.lr}, betas={self.betas}, eps={self.eps}"

    def init(self, params: Mapping[str, Tensor]) -> State:
        if not params:
            raise ValueError("Adam needs at least one parameter to adapt; got none")
        first = next(iter(params.values()))
        # an integer count: exact at any length, and left alone by a cast of the module to another dtype
        state: State = {"adam/step": torch.zeros((), dtype=torch.int64, device=first.device)}
        for n, p in params.items():
            state[f"adam/m/{n}"] = torch.zeros_like(p)
            state[f"adam/v/{n}"] = torch.zeros_like(p)
        return state

    def update(self, grads: Mapping[str, Tensor], state: State, params: Mapping[str, Tensor], step: int) -> tuple[Params, State]:
        b1, b2 = self.betas
        t = state["adam/step"] + 1
        # bias corrections in float64 (as torch.optim.Adam computes them in Python floats); 0-dim, so
        # dividing a tensor by them keeps that tensor's dtype
        correct1 = 1 - torch.pow(torch.tensor(b1, dtype=torch.float64, device=t.device), t)
        correct2 = 1 - torch.pow(torch.tensor(b2, dtype=torch.float64, device=t.device), t)
        new_state: State = {"adam/step": t}
        new_params: Params = {}
        for n, g in grads.items():
            m = b1 * state[f"adam/m/{n}"] + (1 - b1) * g
            v = b2 * state[f"adam/v/{n}"] + (1 - b2) * g * g
            new_state[f"adam/m/{n}"], new_state[f"adam/v/{n}"] = m, v
            new_params[n] = params[n] - self.lr * (m / correct1) / (_sqrt0(v / correct2) + self.eps)
        return new_params, new_state
